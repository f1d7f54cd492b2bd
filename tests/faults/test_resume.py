"""Interrupted studies resume, and none "finishes" by accident (real drivers, real signals, a 2-node cluster).

Every interruption below is triggered by what is on storage (a checkpoint
directory, tuner.pkl), never by a sleep, and every study ends checked against an
uninterrupted run of the same file with the scheduler off: same trials, every
trial TERMINATED at its planned epochs, every epoch in its history exactly once,
same final metrics.
"""

import json
import shutil
import signal
from pathlib import Path

import pytest

from conftest import ROOT, cli, wait_for
from helpers import checkpoint_epochs, driver, write_s4

COMPARED = (
    "epoch",
    "train_loss",
    "val_worst_group_acc",
    "val_loss",
    "test_unbiased_acc",
    "best_epoch",
    "best_test_worst_group_acc",
)


def finals(storage: Path, name: str) -> dict:
    """(phase, density, lambda, seed) -> the final record's compared metrics, via the study reader."""
    from rest.report.results import read_study
    from rest.storage import local

    study = read_study(local(storage / name))
    out = {}
    for t in study.all_trials():
        last = t.history[-1]
        out[(t.phase, t.config["density"], t.config["lambda_upweight"], t.config["seed"])] = {
            k: last[k] for k in COMPARED
        }
    return study, out


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    """The s4 study run without interruption and with the scheduler off."""
    tmp = tmp_path_factory.mktemp("reference")
    space = write_s4(tmp / "s4.yaml", scheduler={"type": "none"})
    out = cli("run", str(space), "--storage", str(tmp), "--address", ray_cluster.address)
    assert out.returncode == 0, out.stderr[-3000:]
    return finals(tmp, "s4")[1]


def assert_finished_like_reference(storage: Path, reference: dict) -> None:
    manifest = json.loads((storage / "s4" / "manifest.json").read_text())
    assert {p: i["status"] for p, i in manifest["phases"].items()} == {"search": "done", "confirm": "done"}
    study, got = finals(storage, "s4")
    for t in study.all_trials():
        planned = 4 if t.phase == "search" else 2
        assert t.status == "TERMINATED", (t.trial_id, t.status)
        assert [r["epoch"] for r in t.history] == list(range(1, planned + 1)), f"{t.trial_id}: every epoch exactly once"
        raw = [json.loads(line) for line in Path(t.location.path, "result.json").read_text().splitlines()]
        assert sum(r["epoch"] == 1 for r in raw) <= 1, f"{t.trial_id} was restarted from epoch 1"
    assert got == reference


@pytest.mark.xdist_group("s4_reference")  # both share the module's reference run
def test_ctrl_c_sigterm_and_kill_after_a_final_checkpoint_all_resume(ray_cluster, reference, tmp_path):
    space = write_s4(tmp_path / "s4.yaml")
    addr = ["--address", ray_cluster.address]
    experiment = tmp_path / "s4" / "search"
    # Few experiment snapshots: a kill right after a checkpoint then lands before Ray's snapshot.
    slow_snapshots = {"TUNE_GLOBAL_CHECKPOINT_S": "600"}

    # 1. Ctrl-C after the first epoch checkpoint: interrupted, exit 130, the confirm phase never starts.
    run = driver(["run", str(space), "--storage", str(tmp_path), *addr], slow_snapshots)
    wait_for(lambda: checkpoint_epochs(experiment), 180, "a first checkpoint")
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-3000:]
    assert f"interrupted; continue with: tune_search.py resume s4 --storage {tmp_path}" in stdout
    manifest = json.loads((tmp_path / "s4" / "manifest.json").read_text())
    assert manifest["phases"]["search"]["status"] == "interrupted"
    assert not (tmp_path / "s4" / "confirm").exists() and not (tmp_path / "s4" / "confirm_configs.json").exists()

    # 2. SIGTERM once training has moved on: one line, exit 143, no stack dump.
    before = checkpoint_epochs(experiment)
    resumed = driver(["resume", "s4", "--storage", str(tmp_path), *addr], slow_snapshots)
    wait_for(lambda: any(e > before.get(n, 0) for n, e in checkpoint_epochs(experiment).items()), 180, "progress")
    resumed.send_signal(signal.SIGTERM)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 143, stderr[-3000:]
    assert "interrupted; continue with" in stdout and "Traceback" not in stderr and "SIGTERM received" not in stderr

    # 3. kill -9 right after some trial's final checkpoint.
    resumed = driver(["resume", "s4", "--storage", str(tmp_path), *addr], slow_snapshots)
    wait_for(
        lambda: 4 in checkpoint_epochs(experiment).values() or resumed.poll() is not None, 240, "a final checkpoint"
    )
    resumed.kill()
    resumed.communicate(timeout=60)

    # 4. resume finishes the study as if nothing had happened.
    done = cli("resume", "s4", "--storage", str(tmp_path), *addr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study s4 finished" in done.stdout
    assert_finished_like_reference(tmp_path, reference)
    again = cli("resume", "s4", "--storage", str(tmp_path), *addr)  # a finished study says so
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]


@pytest.mark.xdist_group("s4_reference")
def test_kill_before_the_first_snapshot_and_a_second_driver(ray_cluster, reference, tmp_path):
    """kill -9 as soon as tuner.pkl exists; meanwhile a second driver is refused; then resume takes over."""
    space = write_s4(tmp_path / "s4.yaml")
    addr = ["--address", ray_cluster.address]
    experiment = tmp_path / "s4" / "search"
    run = driver(["run", str(space), "--storage", str(tmp_path), *addr])
    wait_for(lambda: (experiment / "tuner.pkl").exists(), 180, "tuner.pkl")
    second = cli("resume", "s4", "--storage", str(tmp_path), *addr)  # one driver per study
    assert second.returncode == 2 and f"pid {run.pid}" in second.stderr and second.stderr.count("\n") == 1, (
        second.stderr
    )
    run.kill()
    run.communicate(timeout=60)
    for state in experiment.glob("experiment_state-*.json"):  # pin the case: no snapshot reached storage
        state.unlink()
    again = cli("run", str(space), "--storage", str(tmp_path), *addr)
    assert again.returncode == 2 and "resume s4" in again.stderr
    done = cli("resume", "s4", "--storage", str(tmp_path), *addr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "taking over the study from a driver that is gone" in done.stderr
    assert not (tmp_path / "s4" / "driver.lock").exists()
    assert list(tmp_path.glob("s4/.search-abandoned-*")), "the unrestorable files are kept aside, not deleted"
    assert_finished_like_reference(tmp_path, reference)


def test_a_study_definition_is_frozen(tmp_path):
    """An edited, missing or damaged definition is refused in one line; a finished study is never rerun."""
    study = tmp_path / "smoke"
    shutil.copytree(ROOT / "tests" / "fixtures" / "smoke_study", study)
    original = (study / "study.yaml").read_text()
    (study / "study.yaml").write_text(original.replace("epochs: 2", "epochs: 5", 1))
    for args in (
        ["resume", "smoke", "--storage", str(tmp_path)],
        ["export", "smoke", "--storage", str(tmp_path), "--out", str(tmp_path / "x")],
    ):
        out = cli(*args)
        assert out.returncode == 2 and "was edited after the study started (train.epochs: 2 -> 5)" in out.stderr, (
            out.stderr
        )
        assert out.stderr.count("\n") == 1
    (study / "study.yaml").unlink()
    out = cli("resume", "smoke", "--storage", str(tmp_path))
    assert out.returncode == 2 and "study.yaml is missing; restore it" in out.stderr
    (study / "study.yaml").write_text(original)
    manifest = (study / "manifest.json").read_text()
    (study / "manifest.json").write_text(manifest[: len(manifest) // 2])
    out = cli("export", "smoke", "--storage", str(tmp_path), "--out", str(tmp_path / "y"))
    assert out.returncode == 2 and "manifest.json is damaged" in out.stderr
    (study / "manifest.json").write_text(manifest)
    out = cli("resume", "smoke", "--storage", str(tmp_path))
    assert out.returncode == 0 and "already finished" in out.stdout
