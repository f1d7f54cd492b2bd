"""Methods studies: schema, expansion into per-method grids, per-method selection, one table row per method."""

import pytest

from conftest import ROOT
from rest.report.export import paper_presentable
from rest.report.results import StudyResults
from rest.report.tables import best_configs, paper_table
from rest.study.per_cell import trial_cell
from rest.study.runner import select_method_configs
from rest.study.space import SpaceError, load_space, method_configs, parse_space
from rest.study.trials import Trial

METHODS = ["ERM", "JTT", "PGD", "DCWP", "oracle (dense)", "REST"]


def test_the_methods_study_expands_each_methods_own_grid_per_cell():
    spec, _ = load_space(ROOT / "search_spaces" / "methods.yaml")
    assert [m.name for m in spec.methods] == METHODS
    configs = method_configs(spec)
    assert len(configs) == spec.grid_size() == 2 * 6 * 2  # cells x methods x each method's 2 configs
    by = {}
    for c in configs:
        by.setdefault((c["conflict_pct"], c["extra"]["method"]), []).append(c)
    assert set(by) == {(p, m) for p in (1, 5) for m in METHODS}
    assert {c["lr"] for c in by[(1, "ERM")]} == {0.03, 0.1} and {c["reweight"] for c in by[(1, "ERM")]} == {"none"}
    assert {c["pgd_norm"] for c in by[(5, "PGD")]} == {0.7, 2.0} and by[(5, "PGD")][0]["reweight"] == "pgd"
    assert all(c["sparse"] == "dcwp" and c["density"] == 0.1 for c in by[(1, "DCWP")])
    assert {c["lambda_upweight"] for c in by[(1, "REST")]} == {30} and {
        c["lambda_upweight"] for c in by[(5, "REST")]
    } == {80}
    assert {c["density"] for c in by[(5, "REST")]} == {0.02, 0.1}
    assert all(
        c["epochs"] == 3 and c["subsample"] == 1000 for c in configs
    )  # the study's fixed settings reach every method


@pytest.mark.parametrize("name, pcts", [("methods_cmnist", 4), ("methods_bffhq", 1)])
def test_real_data_methods_studies_are_valid(name, pcts):
    spec, _ = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert {"ERM", "JTT", "PGD", "DCWP", "REST"} <= {m.name for m in spec.methods}
    assert len(spec.search["conflict_pct"]["grid"]) == pcts


BASE = "search: {conflict_pct: {grid: [1, 5]}}\nmethods:\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            BASE + "  PGD: {train: {reweight: pgd}, search: {lr: {loguniform: [0.001, 0.1]}}}\n",
            "<study>:3: 'methods.PGD.search.lr' uses 'loguniform'; a method's search is a grid",
        ),
        (BASE + "  PGD: {train: {reweight: pgd}, serach: {}}\n", "<study>:3: 'methods.PGD.serach' is not a known key"),
        (
            BASE + "  PGD: {train: {reweight: pgd, conflict_pct: 5}}\n",
            "'methods.PGD.train.conflict_pct' is also under the study's search",
        ),
        (
            BASE + "  DCWP:\n    train: {sparse: dcwpp}\n",
            "<study>:3: 'methods.DCWP' has an invalid config: unknown sparse 'dcwpp'",
        ),
        (
            BASE + "  PGD: {train: {reweight: pgd}, search: {reweight: {grid: [pgd]}}}\n",
            "'methods.PGD.search.reweight' is also fixed",
        ),
        (
            BASE + "  REST:\n    search: {lambda_upweight: {lookup: {key: conflict_pct, table: {1: 30}}}}\n",
            "'methods.REST' has a lookup without an entry for 5.0",
        ),
        ("search: {conflict_pct: {choice: [1, 5]}}\nmethods: {ERM: {}}\n", "'search.conflict_pct' uses 'choice'"),
        ("search: {conflict_pct: {grid: [1]}}\nmethods: []\n", "'methods' must map method names"),
        (BASE + "  ERM: {}\nnum_samples: 2\n", "'num_samples' must be 1 in a methods study"),
    ],
)
def test_bad_methods_schema_names_the_key(text, message):
    with pytest.raises(SpaceError) as err:
        parse_space(text)
    assert message in str(err.value)


def test_methods_compete_only_within_their_own_cell_and_method():
    config = {"cfg": {"dataset": "colored_digits", "conflict_pct": 5.0, "extra": {"method": "PGD"}}}
    assert trial_cell(config, ["dataset", "conflict_pct"]) == ("colored_digits", 5.0, "PGD")
    assert trial_cell({"dataset": "d", "conflict_pct": 1.0}, ["dataset", "conflict_pct"]) == ("d", 1.0)


def _record(epoch, val_worst, test_conflict):
    return {
        "epoch": epoch,
        "val_worst_group_acc": val_worst,
        "val_avg_acc": 0.9,
        "val_loss": 0.5,
        "val_conflict_acc": val_worst,
        "val_align_acc": 0.99,
        "val_conflict_count": 50,
        "val_align_count": 950,
        "test_worst_group_acc": test_conflict,
        "test_unbiased_acc": test_conflict + 0.05,
        "test_conflict_acc": test_conflict,
        "test_align_acc": 0.99,
        "nonzero_params": 10,
        "dense_params": 100,
        "inference_flops": 20,
        "dense_inference_flops": 200,
        "epoch_seconds": 1.0,
    }


def _trials(spec, phase, score):
    """One trial per config of the study's grid (confirm: per config and seed), scored by `score(config)`."""
    trials = []
    for i, cfg in enumerate(method_configs(spec)):
        for seed in [cfg["seed"]] if phase == "search" else spec.confirm.seeds:
            config = {**cfg, "seed": seed}
            if phase == "confirm":
                config["extra"] = {**cfg["extra"], "role": "top1"}
            val, test = score(config)
            trials.append(
                Trial(
                    phase,
                    f"{phase}{i}_{seed}",
                    "TERMINATED",
                    config,
                    0,
                    [_record(e, val, test) for e in range(1, spec.max_epochs + 1)],
                )
            )
    return trials


def _score(c):
    """ERM is best at lr 0.03, JTT at lambda 50, REST at density 0.1; PGD beats ERM on test."""
    bonus = {"ERM": c["lr"] == 0.1, "JTT": c["lambda_upweight"] == 50, "REST": c["density"] == 0.1}.get(
        c["extra"]["method"], 0
    )
    base = METHODS.index(c["extra"]["method"]) / 100
    return 0.2 + base + 0.1 * bonus, 0.1 + base + 0.05 * bonus + c["seed"] / 10_000


def test_each_method_gets_its_own_selected_config_and_one_paper_row():
    spec, _ = load_space(ROOT / "search_spaces" / "methods.yaml")
    search = _trials(spec, "search", _score)
    confirm = select_method_configs(spec, search)
    assert len(confirm) == 2 * 6 * len(spec.confirm.seeds)
    chosen = {(c["conflict_pct"], c["extra"]["method"]): c for c in confirm}
    assert chosen[(1, "ERM")]["lr"] == 0.1 and chosen[(5, "JTT")]["lambda_upweight"] == 50
    assert chosen[(5, "REST")]["density"] == 0.1 and chosen[(5, "REST")]["lambda_upweight"] == 80
    assert all(c["epochs"] == spec.train.epochs and c["extra"]["role"] == "top1" for c in confirm)

    confirmed = [
        Trial("confirm", f"c{i}", "TERMINATED", c, 0, [_record(e, *_score(c)) for e in range(1, spec.train.epochs + 1)])
        for i, c in enumerate(confirm)
    ]
    study = StudyResults(None, spec, {"name": "methods", "phases": {}}, {"search": search, "confirm": confirmed})
    best = best_configs(study)
    assert list(best["row"]) == METHODS * 2 and set(best["status"]) == {"complete"}
    paper = paper_table([study])
    assert len(paper) == 12 and list(paper["method"][:6]) == METHODS
    pgd = paper[(paper["method"] == "PGD") & (paper["conflict_pct"] == 5)].iloc[0]
    assert pgd["seeds"] == 2 and pgd["conflicting"] == pytest.approx(
        100 * (0.1 + 0.02 + 0.00415)
    )  # mean of seeds 41, 42
    shown = paper_presentable(paper)
    assert list(shown["method"]) == METHODS  # one row per method, columns per cell


def test_a_method_keeps_its_own_epochs_in_the_confirm_phase():
    spec = parse_space(
        BASE + "  ERM: {train: {reweight: none}}\n  DCWP: {train: {sparse: dcwp, density: 0.1, epochs: 2}}\n"
        "train: {epochs: 3}\nconfirm: {seeds: [1, 2]}\n"
    )
    confirm = select_method_configs(spec, _trials(spec, "search", lambda c: (0.5, 0.5)))
    assert sorted({(c["extra"]["method"], c["epochs"]) for c in confirm}) == [("DCWP", 2), ("ERM", 3)]
    assert len(confirm) == 2 * 2 * 2  # cells x methods x seeds
