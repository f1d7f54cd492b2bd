"""Ray Tune studies on a real 2-node local cluster: end to end, per-cell ASHA, faults."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli, wait_for
from helpers import SMOKE, method_trials, results, write_space

RAY_TABLE = ("Trial status", "Trial name", "│", "╭")


def assert_no_ray_output(out) -> None:
    """Neither Ray Tune's tables nor Ray's log lines (``<time> INFO file.py:N -- ...``) on the console."""
    both = out.stdout + out.stderr
    assert not [mark for mark in RAY_TABLE if mark in both], both[-3000:]
    assert not [line for line in both.splitlines() if " INFO " in line], both[-3000:]


@pytest.mark.xdist_group("smoke_study")  # one worker runs the smoke study once for every test that reads it
def test_smoke_study_end_to_end_on_two_nodes(ray_cluster, smoke_study):
    tmp_path, out = smoke_study
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best config per cell" in out.stdout
    # the default console: our progress line per phase instead of Ray's tables and log lines
    assert any(line.startswith("search: ") and " done, " in line for line in out.stderr.splitlines()), out.stderr[
        -2000:
    ]
    assert "confirm: 6/6 done" in out.stderr
    assert_no_ray_output(out)
    study = tmp_path / "smoke"
    manifest = json.loads((study / "manifest.json").read_text())
    assert {p: i["status"] for p, i in manifest["phases"].items()} == {"search": "done", "confirm": "done"}
    assert (study / "study.yaml").read_text() == SMOKE.read_text()
    search = results(study / "search")
    assert len(search) == 8
    nodes = {r["node_id"] for records in search.values() for r in records}
    assert len(nodes) == 2, "trials must run on both nodes"
    confirm = json.loads((study / "confirm_configs.json").read_text())
    roles = sorted(c["extra"]["role"] for c in confirm)
    assert roles == sorted(["top1", "erm_baseline", "dense_reweighted_baseline"] * 2)
    for c in confirm:  # the dense reweighted baseline is the cell's selected config made dense
        if c["extra"]["role"] == "dense_reweighted_baseline":
            top = next(t for t in confirm if t["extra"]["role"] == "top1" and t["conflict_pct"] == c["conflict_pct"])
            assert (c["density"], c["reweight"], c["lambda_upweight"]) == (1.0, top["reweight"], top["lambda_upweight"])
    for records in results(study / "confirm").values():
        assert records[-1]["epoch"] == 2
    # run on an existing name refuses and points to resume, touching nothing
    before = (study / "manifest.json").read_text()
    again = cli("run", str(SMOKE), "--storage", str(tmp_path), "--address", ray_cluster.address)
    assert again.returncode == 2 and "resume smoke" in again.stderr
    assert (study / "manifest.json").read_text() == before


def _fake_study(scheduler, storage):
    """8 instant trials: the 5 % cell scores ~0.9, the 0.5 % cell ~0.1; larger lambda is better.

    They run one at a time, strong cell first and best lambda first, so every later
    trial is worse than the ones before it.
    """
    from ray import tune

    def fake_trial(config):
        base = 0.9 if config["conflict_pct"] == 5 else 0.1
        for epoch in range(1, 9):
            tune.report({"epoch": epoch, "val_rank": base + 0.01 * config["lambda_upweight"]})

    tuner = tune.Tuner(
        fake_trial,
        param_space={
            "dataset": "colored_digits",
            "conflict_pct": tune.grid_search([5, 0.5]),
            "lambda_upweight": tune.grid_search([4, 3, 2, 1]),
        },
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), name="asha", verbose=0),
    )
    return {(r.config["conflict_pct"], r.config["lambda_upweight"]): r.metrics["epoch"] for r in tuner.fit()}


def test_asha_compares_trials_only_within_a_cell(ray_cluster, tmp_path):
    """A strong cell (high scores) must never stop a weak cell's trials."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from rest.study.search import make_scheduler
    from rest.study.space import parse_space

    spec = parse_space(
        "search: {conflict_pct: {grid: [0.5, 5]}}\ntrain: {epochs: 8}\n"
        "scheduler: {grace_period: 1, reduction_factor: 2, mode: async}\n"
    )
    epochs = _fake_study(make_scheduler(spec), tmp_path / "per_cell")
    for pct in (0.5, 5):
        assert epochs[(pct, 4)] == 8, f"the best trial of the {pct}% cell must run to the end"
        assert min(epochs[(pct, lam)] for lam in (1, 2, 3)) < 8, "ASHA still stops weak trials within a cell"
    # the same study under Ray's global ASHA stops the weak cell's best trial: the test can fail
    global_asha = AsyncHyperBandScheduler(
        time_attr="epoch", metric="val_rank", mode="max", max_t=8, grace_period=1, reduction_factor=2
    )
    assert _fake_study(global_asha, tmp_path / "global")[(0.5, 4)] < 8


def test_worker_killed_by_signal_is_retried_from_its_checkpoint(ray_cluster, tmp_path):
    space = write_space(
        tmp_path / "w.yaml",
        name="w",
        scheduler={"type": "none"},
        confirm=None,
        train={"epochs": 4, "subsample": 600},
        search={"conflict_pct": {"grid": [1]}, "density": {"grid": [0.05]}},
    )
    driver = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tune_search.py"),
            "run",
            str(space),
            "--storage",
            str(tmp_path),
            "--address",
            ray_cluster.address,
            "--max-failures",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    experiment = tmp_path / "w" / "search"

    def first_epoch_checkpointed():
        res = results(experiment) if experiment.exists() else {}
        for name, records in res.items():
            if records and list((experiment / name).glob("checkpoint_*")) and records[-1]["epoch"] < 4:
                return records[-1]["pid"]
        return None

    pid = wait_for(first_epoch_checkpointed, 240, "the first checkpoint")
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr[-3000:]
    (records,) = results(experiment).values()
    assert records[-1]["epoch"] == 4
    retried = [r for r in records if r["pid"] != pid]
    assert retried and min(r["resumed_from_epoch"] for r in retried) >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.yaml"], "study file missing.yaml does not exist"),
        (["resume", "nope"], "no study 'nope'"),
        (["run", str(SMOKE), "--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["run", str(SMOKE), "--storage", "/proc/forbidden"], "is not writable"),
        (["run", str(SMOKE), "--cpus-per-trial", "0"], "--cpus-per-trial 0 must be positive"),
        (
            ["run", str(SMOKE), "--storage-retry-seconds", "-1"],
            "--storage-retry-seconds -1 must be a number of seconds >= 0",
        ),
        (
            ["run", str(SMOKE), "--storage-retry-seconds", "inf"],
            "--storage-retry-seconds inf must be a number of seconds",
        ),
        (["run", str(ROOT / "tests" / "fixtures" / "lookup_gap.yaml")], "lookup on conflict_pct has no entry for 5"),
        (["run", str(SMOKE), "--name", "../escape"], "study name '../escape' is not allowed"),
        (["run", str(SMOKE), "--name", "a b/c"], "study name 'a b/c' is not allowed"),
        (["resume", "../x"], "study name '../x' is not allowed"),
        (["run", str(ROOT / "tests" / "fixtures" / "binary.yaml")], "is not a text (YAML) file"),
        (["run", str(ROOT / "tests" / "fixtures" / "recursive.yaml")], "a YAML anchor refers to itself"),
        (["run", str(ROOT / "tests" / "fixtures" / "repeats.yaml")], "every repeat trains the same trials"),
        (["run", str(SMOKE), "--address", "ray://127.0.0.1:10001"], "is a Ray Client address"),
        (
            ["run", str(ROOT / "tests" / "fixtures" / "density_range.yaml")],
            "density_range.yaml:6: 'search.density' loguniform [0.5, 4.0] reaches 4: density 4.0 is outside (0, 1]",
        ),
        (
            ["run", str(ROOT / "tests" / "fixtures" / "duplicate_key.yaml")],
            "duplicate_key.yaml:6: 'train' is given twice (first on line 3)",
        ),
    ],
)
def test_bad_study_input_is_one_line_exit_2(tmp_path, args, message):
    if "--storage" not in args:
        args = args + ["--storage", str(tmp_path)]
    start = time.time()
    out = cli(*args, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert time.time() - start < 30
    assert not list(tmp_path.glob("*/manifest.json")), "nothing may be created for bad input"
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "a b").exists()


def test_trials_no_node_can_run_are_refused_at_once(ray_cluster, tmp_path):
    start = time.time()
    out = cli("run", str(SMOKE), "--storage", str(tmp_path), "--address", ray_cluster.address, "--cpus-per-trial", "64")
    assert out.returncode == 2 and "no node can run a trial asking for 64 CPU" in out.stderr, out.stderr[-2000:]
    assert time.time() - start < 60 and not (tmp_path / "smoke").exists()


def test_gpus_asked_where_the_cluster_has_none(ray_cluster, tmp_path):
    out = cli(
        "run", str(SMOKE), "--storage", str(tmp_path), "--address", ray_cluster.address, "--gpus-per-trial", "0.5"
    )
    assert out.returncode == 2 and "the cluster has 0" in out.stderr
    assert not (tmp_path / "smoke").exists()


def test_a_wait_for_resources_is_said_once_and_kept_in_the_summary(ray_cluster, tmp_path):
    import ray

    @ray.remote(num_cpus=1)
    class Hog:  # another job holding the cluster's CPUs
        def ready(self):
            return True

    hogs = [Hog.remote() for _ in range(2)]
    ray.get([h.ready.remote() for h in hogs])
    space = write_space(
        tmp_path / "wait.yaml",
        name="wait",
        scheduler={"type": "none"},
        confirm=None,
        train={"epochs": 1, "subsample": 200},
        search={"density": {"grid": [1.0]}},
    )
    run = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tune_search.py"),
            "run",
            str(space),
            "--storage",
            str(tmp_path),
            "--address",
            ray_cluster.address,
            "--stall-minutes",
            "0.05",
            "--verbose",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "wait" / "stalls.log").exists(), 120, "the stall report")
    finally:
        for h in hogs:
            ray.kill(h)
    stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr[-3000:]
    assert stderr.count("waited") == 1 and "for resources with none running" in stderr
    out = cli("export", "wait", "--storage", str(tmp_path), "--out", str(tmp_path / "tables"))
    assert out.returncode == 0 and "## Waits for resources" in (tmp_path / "tables" / "summary.md").read_text()


def test_a_full_disk_in_the_driver_is_one_line_and_resume_finishes(ray_cluster, tmp_path):
    """The driver's writes under a file-size limit (EFBIG, as ENOSPC): its own manifest, then Ray's experiment files.
    Each is one line naming the file and the fix, no traceback; a study not made is not left half-made."""
    from helpers import file_size_limit
    from rest.core.data import load_dataset

    load_dataset("colored_digits", 1)  # the dataset cache, written without the limit
    space = write_space(
        tmp_path / "full.yaml",
        name="full",
        scheduler={"type": "none"},
        confirm=None,
        train={"epochs": 1, "subsample": 200, "conflict_pct": 1},
        search={"density": {"grid": [0.05, 1.0]}},
    )
    run = ["-q", "run", str(space), "--storage", str(tmp_path), "--address", ray_cluster.address, "--verbose", "0"]

    out = cli(*run, preexec_fn=file_size_limit(600))  # study.yaml fits, the manifest (about 1 KB) does not
    assert out.returncode == 2, out.stderr[-3000:]
    assert (
        f"error: no space left on device writing {tmp_path}/full/manifest.json; free space and run the command again"
    ) in out.stderr.splitlines() and "Traceback" not in out.stderr
    assert not (tmp_path / "full").exists()

    out = cli(*run, preexec_fn=file_size_limit(3000))  # the manifest fits, Ray's tuner.pkl does not
    assert out.returncode == 2, out.stderr[-3000:]
    assert (
        f"error: no space left on device writing {tmp_path}/full/search; free space and `tune_search.py resume "
        f"full --storage {tmp_path}`"
    ) in out.stderr.splitlines() and "Traceback" not in out.stderr

    done = cli("resume", "full", "--storage", str(tmp_path), "--address", ray_cluster.address, "--verbose", "0")
    assert done.returncode == 0 and "study full finished" in done.stdout, done.stderr[-3000:]
    assert_no_ray_output(done)
    assert " done, " not in done.stderr, "--verbose 0: no progress line either"


def test_a_method_keeps_its_own_epochs_in_the_confirm_phase():
    from rest.study.runner import select_method_configs
    from rest.study.space import parse_space

    spec = parse_space(
        "search: {conflict_pct: {grid: [1, 5]}}\nmethods:\n"
        "  ERM: {train: {reweight: none}}\n  DCWP: {train: {sparse: dcwp, density: 0.1, epochs: 2}}\n"
        "train: {epochs: 3}\nconfirm: {seeds: [1, 2]}\n"
    )
    confirm = select_method_configs(spec, method_trials(spec, "search", lambda c: (0.5, 0.5)))
    assert sorted({(c["extra"]["method"], c["epochs"]) for c in confirm}) == [("DCWP", 2), ("ERM", 3)]
    assert len(confirm) == 2 * 2 * 2  # cells x methods x seeds
