"""Deterministic per-cell halving (rest/study/rungs.py): the rule, the groups, and the scheduler
on real Ray with instant trials."""

import json
import tempfile
import time
from pathlib import Path

import pytest

from rest.storage import local
from rest.study.per_cell import TrialGroups
from rest.study.search import make_search_alg, rung_epochs, search_phase
from rest.study.space import parse_space

GRID = (
    "search: {conflict_pct: {grid: [0.5, 5]}, lambda_upweight: {grid: [4, 3, 2, 1]}}\ntrain: {epochs: 8}\n"
    "scheduler: {grace_period: 1, reduction_factor: 2}\n"
)
# val_worst_group_acc at every epoch: the 5 % cell scores far higher,
# so only a per-cell rule keeps the 0.5 % cell's best
SCORES = {5: {4: 0.9, 3: 0.8, 2: 0.8, 1: 0.6}, 0.5: {4: 0.1, 3: 0.4, 2: 0.3, 1: 0.2}}


def test_rung_epochs_and_the_cut():
    from rest.study.rungs import cut

    def epochs(grace, rf, total):
        return rung_epochs(
            parse_space(
                f"search: {{lr: {{grid: [0.1]}}}}\ntrain: {{epochs: {total}}}\n"
                f"scheduler: {{grace_period: {grace}, reduction_factor: {rf}}}\n"
            )
        )

    assert epochs(1, 4, 8) == (1, 4) and epochs(1, 2, 2) == (1,) and epochs(4, 2, 4) == ()
    assert epochs(1, 3, 27) == (1, 3, 9) and epochs(2, 1.5, 8) == (2, 3, 5, 7)
    assert rung_epochs(parse_space(GRID.replace("reduction_factor: 2", "reduction_factor: 2, mode: async"))) == ()
    records = [
        {"val_worst_group_acc": 0.5, "val_avg_acc": 0.9, "val_loss": 1.0, "epoch": 1},
        {"val_worst_group_acc": 0.6, "val_avg_acc": 0.1, "val_loss": 9.0, "epoch": 1},
        {"val_worst_group_acc": 0.5, "val_avg_acc": 0.9, "val_loss": 1.0, "epoch": 1},  # ties with the first
        {"val_worst_group_acc": 0.5, "val_avg_acc": 0.9, "val_loss": 0.5, "epoch": 1},
    ]
    assert cut(records, "worst_group", 2) == ([1, 3, 0, 2], 2), "primary, then loss, then the listed order"
    assert cut(records, "average", 4) == ([3, 0, 2, 1], 1)
    assert cut(records[:3], "worst_group", 4)[1] == 1, "at least one trial continues"
    assert cut(records * 2 + records[:1], "worst_group", 4)[1] == 2, "floor(9 / 4), as in Hyperband"


def test_groups_sizes_and_search_order():
    spec = parse_space(GRID)
    groups = TrialGroups(spec)
    config = {"dataset": "colored_digits", "conflict_pct": 5, "lambda_upweight": 2}
    assert groups.group(config) == ("colored_digits", 5) and groups.size(("colored_digits", 5)) == 4
    assert groups.order(config) == [2], "the value's place in its grid list"
    tpe = parse_space(
        "search: {conflict_pct: {grid: [1, 5]}, density: {loguniform: [0.01, 1]}}\nnum_samples: 5\n"
        "search_alg: {type: optuna, seed: 1, max_concurrent: 2}\ntrain: {epochs: 4}\n"
    )
    batched = TrialGroups(tpe)
    config = {"dataset": "colored_digits", "conflict_pct": 1, "density": 0.3, "extra": {"position": 4}}
    assert batched.group(config) == ("colored_digits", 1, 2) and batched.order(config) == [4]
    assert [batched.size(("colored_digits", 1, b)) for b in range(3)] == [2, 2, 1], "batches of max_concurrent"


def test_tpe_proposes_numbered_batches_and_learns_from_trials_stopped_while_paused():
    from ray.tune.search import Searcher

    from rest.study.search import SEARCHER_METRIC

    spec = parse_space(
        "search: {conflict_pct: {grid: [1]}, density: {loguniform: [0.01, 1]}}\nnum_samples: 4\n"
        "search_alg: {type: optuna, seed: 1, max_concurrent: 2}\ntrain: {epochs: 4}\n"
    )
    searcher, _ = make_search_alg(spec)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["extra"]["position"] for c in first[:2]] == [0, 1] and first[2] is None, "a batch of 2"
    searcher.on_trial_result("t0", {SEARCHER_METRIC: 0.7, "training_iteration": 1})
    searcher.on_trial_complete("t0")  # Tune passes no result for a trial stopped while paused
    assert searcher.suggest("t3") is None, "the batch is not over"
    searcher.on_trial_complete("t1", {SEARCHER_METRIC: 0.9})
    study = searcher.searchers[0].searcher._ot_study
    assert sorted(t.value for t in study.trials if t.value is not None) == [0.7, 0.9]
    second = searcher.suggest("t4")
    assert second["extra"]["position"] == 2 and searcher.suggest("t5")["extra"]["position"] == 3
    assert searcher.suggest("t6") in (None, Searcher.FINISHED)


def run_fake(storage: Path, max_concurrent: int | None, sleep: float = 0.05, fail: tuple | None = None) -> dict:
    """The GRID study with instant trials ((5, 3) four times slower, `fail` failing); (cell, lambda) -> its records."""
    from ray import tune

    def fake_trial(config):
        """8 epochs, checkpointed; resumed at a rung it reports that epoch again, as rest_trainable does."""
        segment, start = time.time(), 0
        checkpoint = tune.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                start = json.loads(Path(d, "state.json").read_text())["epoch"]
        score = SCORES[config["conflict_pct"]][config["lambda_upweight"]]
        if [config["conflict_pct"], config["lambda_upweight"]] == config["fail"]:
            raise RuntimeError("this trial fails for good")

        def record(epoch):
            return {
                "epoch": epoch,
                "val_worst_group_acc": score,
                "val_rank": score,
                "resumed_from": start,
                "segment": segment,
                "now": time.time(),
            }

        if start in config["rungs"]:
            tune.report(record(start))
        for epoch in range(start + 1, 9):
            time.sleep(config["sleep"] * (4 if (config["conflict_pct"], config["lambda_upweight"]) == (5, 3) else 1))
            with tempfile.TemporaryDirectory() as d:
                Path(d, "state.json").write_text(json.dumps({"epoch": epoch}))
                tune.report(record(epoch), checkpoint=tune.Checkpoint.from_directory(d))

    spec = parse_space(GRID)
    scheduler, search_alg, num_samples, limit = search_phase(spec, local(storage), max_concurrent)
    tuner = tune.Tuner(
        fake_trial,
        param_space={
            "dataset": "colored_digits",
            "conflict_pct": tune.grid_search([0.5, 5]),
            "lambda_upweight": tune.grid_search([4, 3, 2, 1]),
            "sleep": sleep,
            "rungs": list(rung_epochs(spec)),
            "fail": list(fail or []),
        },
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            max_concurrent_trials=limit,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name="fake", verbose=0),
    )
    grid = tuner.fit()
    assert len(grid.errors) == (1 if fail else 0)
    out = {}
    for trial in (storage / "fake").glob("*/params.json"):
        result = trial.parent / "result.json"
        records = [json.loads(line) for line in result.read_text().splitlines()] if result.exists() else []
        params = json.loads(trial.read_text())
        out[(params["conflict_pct"], params["lambda_upweight"])] = records
    return out


def most_at_once(runs: dict) -> int:
    """The largest number of trial segments (one start of the function) that ran at the same time."""
    spans = {}
    for records in runs.values():
        for r in records:
            spans[r["segment"]] = max(spans.get(r["segment"], r["segment"]), r["now"])
    edges = sorted([(a, 1) for a in spans] + [(b, -1) for b in spans.values()])
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    return peak


def test_halving_is_per_cell_and_the_same_at_any_concurrency(ray_cluster, tmp_path):
    """Rungs 1, 2, 4 of 8 epochs, 4 trials per cell: 2, then 1, then 1 continue, by the selection rule.

    In the 5 % cell lambdas 3 and 2 tie; 3 comes first in the grid, so 3 wins, though it
    is four times slower and reaches every rung last. The 0.5 % cell's best (0.4) is
    below every 5 % trial: a global rule would stop it.
    """
    expected = {(5, 4): 8, (5, 3): 2, (5, 2): 1, (5, 1): 1, (0.5, 3): 8, (0.5, 2): 2, (0.5, 4): 1, (0.5, 1): 1}
    for max_concurrent in (1, 2):
        runs = run_fake(tmp_path / f"c{max_concurrent}", max_concurrent)
        assert {key: max(r["epoch"] for r in records) for key, records in runs.items()} == expected, max_concurrent
        assert most_at_once(runs) <= max_concurrent, "a paused trial gives its slot back; the limit holds"
        for key, records in runs.items():
            epochs = [r["epoch"] for r in records if r["resumed_from"] == 0 or r["epoch"] > r["resumed_from"]]
            assert epochs == list(range(1, expected[key] + 1)), f"{key}: every epoch trained once, resumed at its rung"
    book = json.loads((tmp_path / "c2" / "search_rungs.json").read_text())
    assert book["groups"]['["colored_digits", 5]']["1"]["continue"] == ["[0]", "[1]"], "lambda 4, then 3 (the tie)"
    assert book["pauses"] >= 6 and any(r["resumed_from"] > 0 for records in runs.values() for r in records)


def test_a_stored_cut_is_replayed_never_taken_again(ray_cluster, tmp_path):
    """A book (as a killed driver left it) that let the 5 % cell's two worst trials through rung 1 is obeyed."""
    storage = tmp_path / "replay"
    storage.mkdir()
    forced = {"ranked": [["[3]", 0.6], ["[2]", 0.8], ["[1]", 0.8], ["[0]", 0.9]], "continue": ["[3]", "[2]"]}
    (storage / "search_rungs.json").write_text(
        json.dumps({"pauses": 0, "groups": {'["colored_digits", 5]': {"1": forced}}})
    )
    runs = run_fake(storage, 2, sleep=0.0)
    assert {lam: max(r["epoch"] for r in runs[(5, lam)]) for lam in (4, 3, 2, 1)} == {4: 1, 3: 1, 2: 8, 1: 2}
    assert max(r["epoch"] for r in runs[(0.5, 3)]) == 8, "the other cell is decided as usual"
    book = json.loads((storage / "search_rungs.json").read_text())
    assert book["groups"]['["colored_digits", 5]']["1"] == forced


def test_a_trial_that_fails_for_good_drops_out_of_its_rung(ray_cluster, tmp_path):
    """The 0.5 % cell's rung 1 is cut among the three trials left, with nothing left waiting."""
    runs = run_fake(tmp_path, 2, sleep=0.0, fail=(0.5, 3))
    assert runs[(0.5, 3)] == []
    assert {lam: max(r["epoch"] for r in runs[(0.5, lam)]) for lam in (4, 2, 1)} == {4: 1, 2: 8, 1: 1}
    book = json.loads((tmp_path / "search_rungs.json").read_text())
    rung = book["groups"]['["colored_digits", 0.5]']["1"]
    assert [key for key, _ in rung["ranked"]] == ["[2]", "[3]", "[0]"]  # the failed trial is not waited for
    assert rung["continue"] == ["[2]"]  # floor(3 / 2)


@pytest.mark.parametrize(
    "rule, config, seconds",
    [
        ("density=0.05,lambda_upweight=10:2.5", {"density": 0.05, "lambda_upweight": 10.0}, 2.5),
        ("density=0.05,lambda_upweight=10:2.5", {"density": 0.05, "lambda_upweight": 50}, 0.0),
        ("reweight=oracle:1", {"reweight": "oracle"}, 1.0),
        (None, {"density": 1}, 0.0),
    ],
)
def test_the_test_only_delay_hook_matches_configs(rule, config, seconds):
    from rest.study.trainable import delay_seconds

    assert delay_seconds(rule, config) == seconds
