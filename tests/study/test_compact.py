"""Finished trials keep only a compact checkpoint; export-model and resume read it as before."""

import io
import json
from pathlib import Path

import pytest
import torch

from conftest import cli, wait_for
from helpers import S4, driver, write_s4

SLACK = 4096  # bytes: the compact file's few keys beyond the model file, torch's zip headers


def model_file_bytes(state: dict) -> int:
    from rest.core.model_format import sparse_model_state

    buffer = io.BytesIO()
    torch.save(sparse_model_state(state), buffer)
    return len(buffer.getvalue())


def test_compaction_keeps_the_model_file_bit_exact_and_drops_the_rest(tiny_data, tiny_settings, tmp_path):
    """A real trainer's checkpoints in a trial directory: export-model writes the same bytes after compaction."""
    from rest.api import selected_epoch_state
    from rest.core.model_format import is_compact
    from rest.core.train import Trainer
    from rest.deploy.model_file import save_sparse_model
    from rest.storage import local
    from rest.study.compact import compact_trial, needs_compaction
    from rest.study.contract import COMPACT_FILE, HISTORY_FILE, STATE_FILE, checkpoint_dirs
    from rest.study.trials import Trial

    trainer, history = Trainer(tiny_settings.replace(epochs=3), tiny_data), []
    for epoch in range(3):
        history.append(trainer.run_epoch())
        ckpt = tmp_path / "trial_x" / f"checkpoint_00000{epoch}"
        ckpt.mkdir(parents=True)
        torch.save({**trainer.state_dict(), "history": history}, ckpt / STATE_FILE)
        (ckpt / HISTORY_FILE).write_text(json.dumps(history))
    trial = Trial("search", "x", "TERMINATED", {}, 0, history, local(tmp_path / "trial_x"))
    full = selected_epoch_state(trial)
    save_sparse_model(full, tmp_path / "before" / "m.pt")  # torch names the archive after the file
    assert needs_compaction([str(p) for p in tmp_path.rglob("*") if p.is_file()]) == {"trial_x"}

    assert compact_trial(trial.location) and compact_trial(trial.location)  # idempotent
    newest, *older = checkpoint_dirs(trial.location)
    assert sorted(p.name for p in Path(newest.path).iterdir()) == [COMPACT_FILE, HISTORY_FILE]
    assert all(Path(o.path).is_dir() and not any(Path(o.path).iterdir()) for o in older)  # emptied, kept for Ray
    compact = selected_epoch_state(trial)
    assert is_compact(compact) and "optimizer" not in compact and "best_weights" not in compact
    save_sparse_model(compact, tmp_path / "after" / "m.pt")
    assert (tmp_path / "after" / "m.pt").read_bytes() == (tmp_path / "before" / "m.pt").read_bytes()
    stored = sum(p.stat().st_size for p in Path(newest.path).iterdir())
    assert stored <= model_file_bytes(full) + len(json.dumps(history)) + SLACK
    assert needs_compaction([str(p) for p in tmp_path.rglob("*") if p.is_file()]) == set()


def checkpoint_files(trial_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(trial_dir)) for p in trial_dir.glob("checkpoint_*/*"))


@pytest.mark.xdist_group("s4_reference")
def test_asha_study_compacts_ended_trials_and_a_kill_after_compaction_resumes(ray_cluster, tmp_path):
    """ASHA stops some trials; kill -9 right after the first trial is compacted (Ray's snapshot, taken
    rarely, still lists it as running at an older checkpoint); resume neither retrains it nor fails."""
    from rest.report.export import read_for_export
    from rest.storage import local
    from rest.study.contract import COMPACT_FILE, HISTORY_FILE, read_checkpoint

    space = write_s4(
        tmp_path / "s4.yaml",
        train={**S4["train"], "epochs": 3},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    addr = ["--address", ray_cluster.address]
    search = tmp_path / "s4" / "search"
    run = driver(["run", str(space), "--storage", str(tmp_path), *addr], {"TUNE_GLOBAL_CHECKPOINT_S": "600"})
    first = wait_for(lambda: sorted(search.glob(f"trial_*/checkpoint_*/{COMPACT_FILE}")), 300, "a compacted trial")[0]
    before = first.read_bytes()
    run.kill()
    run.communicate(timeout=60)

    done = cli("resume", "s4", "--storage", str(tmp_path), *addr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert first.read_bytes() == before, "a compacted trial is never trained again"
    study = read_for_export(local(tmp_path / "s4"))
    trials = study.trials()
    assert trials["stopped_early"].any() and (trials["status"] == "TERMINATED").all()
    for t in study.all_trials():
        assert [r["epoch"] for r in t.history] == list(range(1, t.epochs_run + 1)), t.trial_id
        trial_dir = Path(t.location.path)
        files = checkpoint_files(trial_dir)
        assert [Path(f).name for f in files] == [COMPACT_FILE, HISTORY_FILE], (t.trial_id, files)
        compact = read_checkpoint(local(trial_dir / Path(files[0]).parent))
        assert "optimizer" not in compact
        stored = sum((trial_dir / f).stat().st_size for f in files)
        assert stored <= model_file_bytes(compact) + (trial_dir / files[1]).stat().st_size + SLACK

    out = cli("export-model", str(tmp_path / "s4"), "--cell", "colored_digits:1", "--out", str(tmp_path / "m.pt"))
    assert out.returncode == 0, out.stderr[-2000:]
    import rest

    assert rest.load_model(tmp_path / "m.pt") is not None
