"""Trials that fail at run time: the phase is failed, the driver says so, tables say so, resume retries them."""

import json
import subprocess
import sys

import pandas as pd
import pytest

import rest
from conftest import ROOT, cli, wait_for, write_png_tree
from rest.errors import TrialsFailed

STUDY = """\
name: lost
dataset: cmnist
train: {epochs: 1, batch_size: 16, width: 4, update_frequency: 2, reweight: oracle, lambda_upweight: 5}
search:
  conflict_pct: {grid: [1, 2]}
  density: {grid: [0.5, 1.0]}
scheduler: {type: none}
confirm: {top_k: 1, seeds: [41], baseline: false, epochs: 1}
"""


def _hold_every_cpu():
    """Actors holding the cluster's CPUs (another job): trials wait until they are killed."""
    import ray

    @ray.remote(num_cpus=1)
    class Hog:
        def ready(self):
            return True

    hogs = [Hog.remote() for _ in range(int(ray.cluster_resources()["CPU"]))]
    ray.get([h.ready.remote() for h in hogs])
    return hogs


def test_errored_trials_fail_the_phase_exit_3_and_resume_retries_them(ray_cluster, tmp_path):
    """A cell's data goes missing after the driver checked it: its trials error at run time.

    The loader lists a tree's files before it looks at its cache (the cache key is a
    fingerprint of those files), so a moved ratio directory fails its trials whatever
    the cache holds.
    """
    import ray

    data = tmp_path / "data"
    for pct in ("1pct", "2pct"):
        write_png_tree(data, {"align": 2, "conflict": 1, "valid": 1, "test": 1}, pct=pct)
    space = tmp_path / "lost.yaml"
    space.write_text(STUDY)
    storage = tmp_path / "studies"
    study = storage / "lost"
    hogs = _hold_every_cpu()
    driver = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tune_search.py"),
            "run",
            str(space),
            "--storage",
            str(storage),
            "--address",
            ray_cluster.address,
            "--data-root",
            str(data),
            "--max-failures",
            "0",
            "--verbose",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (study / "manifest.json").exists() or driver.poll() is not None, 120, "the study to start")
        (data / "2pct").rename(data / "2pct.moved")  # the data was checked; now the 2 % cell's trials cannot load it
    finally:
        for h in hogs:
            ray.kill(h)
    stdout, stderr = driver.communicate(timeout=240)
    assert driver.returncode == 3, stderr[-3000:]
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["phases"]["search"]["status"] == "failed" and manifest["phases"]["confirm"]["status"] == "pending"
    assert not (study / "confirm_configs.json").exists(), "a failed search phase must not select confirm configs"
    failed = sorted(
        p.name.removeprefix("trial_") for p in (study / "search").glob("trial_*") if (p / "error.txt").exists()
    )
    assert len(failed) == 2
    for trial_id in failed:
        assert trial_id in stderr
    assert "conflict ratio 2% is missing under" in stderr
    assert f"resume lost --storage {storage}" in stderr
    assert "2 of 2 configs failed" in stdout  # the CLI's summary of what ran
    assert "Traceback" not in stdout + stderr and "Trial task failed" not in stderr, (
        "--verbose 0: no Ray traceback per trial"
    )

    tables = tmp_path / "tables"  # what `export` writes (the command is a thin layer over this call)
    rest.load_study("lost", storage=str(storage)).export(tables, formats=("md", "csv"))
    for name in (
        "best_configs.csv",
        "best_configs.md",
        "paper_table.md",
        "by_density.md",
        "by_density.csv",
        "trials.csv",
        "summary.md",
    ):
        assert "2 of 2 configs failed" in (tables / name).read_text(), name
    best = pd.read_csv(tables / "best_configs.csv")
    assert sorted(best["conflict_pct"]) == [1, 2], "a cell whose every trial failed still appears"

    with pytest.raises(TrialsFailed) as failed_again:  # the API drives the same phases: the retried trials fail again
        rest.run_study(space, storage=str(storage), address=ray_cluster.address, data_root=str(data), max_failures=0)
    message = stderr.rsplit("\nerror: ", 1)[1]  # the driver's last line(s): main prints the library's message
    assert str(failed_again.value).splitlines()[1:] == message.splitlines()[1:]
    assert json.loads((study / "manifest.json").read_text())["phases"]["search"]["status"] == "failed"

    (data / "2pct.moved").rename(data / "2pct")
    again = cli("resume", "lost", "--storage", str(storage), "--address", ray_cluster.address, "--verbose", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Trial status" in again.stdout, "--verbose 2: Ray's own tables (a restored phase too)"
    manifest = json.loads((study / "manifest.json").read_text())
    assert {p: i["status"] for p, i in manifest["phases"].items()} == {"search": "done", "confirm": "done"}
    finished = rest.load_study("lost", storage=str(storage))
    trials = finished.trials()
    assert len(trials) == 6 and set(trials["status"]) == {"TERMINATED"} and (trials["epochs_run"] == 1).all()
    assert len(finished.best_configs()) == 2 and "failed" not in finished.best_configs().columns
