"""Same study, same table: deterministic per-cell halving against arrival order (real drivers, a 2-node cluster).

The smoke study (no confirm phase) runs at ``--max-concurrent 1``; then at 2 with the 1 % cell's
first trial made slow (the test-only REST_TUNE_TEST_DELAY hook), so trials reach rung 1 in
another order; then the same, killed with -9 mid-search and resumed. Deterministic halving
stops the same trials and exports the same best_configs and paper_table every time; Ray's
async ASHA (``mode: async``) under the same two settings stops different trials, so the
comparison is not vacuous.
"""

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import cli, wait_for
from helpers import driver, write_space

pytestmark = pytest.mark.xdist_group("determinism")  # the module's sequential runs are shared

SLOW = "conflict_pct=1,density=0.05,lambda_upweight=10"  # the 1 % cell's first trial in search order
COMPARED = ("train_loss", "val_loss", "val_worst_group_acc", "val_avg_acc", "test_unbiased_acc", "test_worst_group_acc")


def study(storage: Path, mode: str, max_concurrent: int, cluster, delay: float | None = None) -> dict:
    """Run the smoke study (confirm off, scheduler `mode`) to the end and read what it decided."""
    space = write_space(storage / "s.yaml", name="s", confirm=None, scheduler={"mode": mode})
    env = {"REST_TUNE_TEST_DELAY": f"{SLOW}:{delay}"} if delay else {}
    out = cli(
        "run",
        str(space),
        "--storage",
        str(storage),
        "--address",
        cluster.address,
        "--max-concurrent",
        str(max_concurrent),
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return outcome(storage)


def outcome(storage: Path) -> dict:
    """Stopped trials (config -> epochs), every epoch record, the exported best_configs and paper_table."""
    from rest.storage import local
    from rest.study.trials import read_phase

    trials = read_phase(local(storage / "s" / "search"), "search")
    key = lambda t: (t.config["conflict_pct"], t.config["density"], t.config["lambda_upweight"])  # noqa: E731
    out = cli("export", "s", "--storage", str(storage), "--out", str(storage / "tables"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert {t.status for t in trials} == {"TERMINATED"} and len(trials) == 8
    return {
        "stopped": {key(t): t.epochs_run for t in trials if t.epochs_run < 2},
        "records": {(key(t), r["epoch"]): r for t in trials for r in t.history},
        "tables": {name: (storage / "tables" / name).read_text() for name in ("best_configs.csv", "paper_table.csv")},
        "wall": json.loads((storage / "s" / "manifest.json").read_text())["phases"]["search"]["wall_seconds"],
    }


@pytest.fixture(scope="module")
def sequential(ray_cluster, tmp_path_factory):
    """Both modes at --max-concurrent 1 (trials in search order), and a delay that reorders arrivals at 2.

    The slow trial must reach rung 1 after two other trials have run (one of them both
    epochs): the delay is five times the sequential run's wall time per trial-epoch, at
    least 10 s, so a loaded machine gets a longer one.
    """
    runs = {mode: study(tmp_path_factory.mktemp(mode), mode, 1, ray_cluster) for mode in ("deterministic", "async")}
    epochs = sum(1 for _ in runs["async"]["records"])
    runs["delay"] = round(max(10.0, 5 * runs["async"]["wall"] / epochs), 1)
    return runs


def test_deterministic_halving_ignores_concurrency_and_a_slow_trial(ray_cluster, sequential, tmp_path):
    slow = study(tmp_path, "deterministic", 2, ray_cluster, delay=sequential["delay"])
    reference = sequential["deterministic"]
    assert slow["stopped"] == reference["stopped"] and len(reference["stopped"]) == 4, "half of each cell at rung 1"
    assert slow["tables"] == reference["tables"]
    book = json.loads((tmp_path / "s" / "search_rungs.json").read_text())
    assert book["pauses"] >= 2 and len(book["groups"]) == 2, "trials waited at rung 1 for their cell"


def test_deterministic_halving_survives_kill_9_and_resume(ray_cluster, sequential, tmp_path):
    space = write_space(tmp_path / "s.yaml", name="s", confirm=None, scheduler={"mode": "deterministic"})
    addr = ["--address", ray_cluster.address]
    run = driver(
        ["run", str(space), "--storage", str(tmp_path), *addr, "--max-concurrent", "2"],
        {"REST_TUNE_TEST_DELAY": f"{SLOW}:{sequential['delay']}", "TUNE_GLOBAL_CHECKPOINT_S": "1"},
    )
    book = tmp_path / "s" / "search_rungs.json"
    wait_for(lambda: book.exists() or run.poll() is not None, 300, "the first rung cut")
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["phases"]["search"]["status"] != "done", "killed in the middle of the search"
    cut_before = json.loads(book.read_text())["groups"]
    done = cli("resume", "s", "--storage", str(tmp_path), *addr)
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads(book.read_text())["groups"]
    assert all(after[group] == cuts for group, cuts in cut_before.items()), "a stored cut is replayed, not taken again"
    resumed = outcome(tmp_path)
    assert resumed["stopped"] == sequential["deterministic"]["stopped"]
    assert resumed["tables"] == sequential["deterministic"]["tables"]


def test_async_asha_differs_under_the_same_settings(ray_cluster, sequential, tmp_path):
    """What the deterministic tests guard against: Ray's ASHA compares a trial with those that arrived before it."""
    slow = study(tmp_path, "async", 2, ray_cluster, delay=sequential["delay"])
    assert slow["stopped"] != sequential["async"]["stopped"], (slow["stopped"], sequential["delay"])


def test_a_paused_trial_resumes_from_its_rung_checkpoint_bit_exactly(sequential):
    """Epoch 2 of the same config, trained after a pause at rung 1 (deterministic) and straight on (async)."""
    paused, straight = sequential["deterministic"]["records"], sequential["async"]["records"]
    pairs = [(paused[k], straight[k]) for k in paused if k[1] == 2 and k in straight]
    assert any(p["resumed_from_epoch"] == 1 and s["resumed_from_epoch"] == 0 for p, s in pairs), "a pause to compare"
    for p, s in pairs:
        assert {m: p[m] for m in COMPARED} == {m: s[m] for m in COMPARED}
