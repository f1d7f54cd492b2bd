"""Compaction of finished trials: storage per trial bounded by its compact model plus its history.

A trial that ended (trained its planned epochs, or a scheduler stopped it) is never trained
again, so its optimizer state and its non-best weights are dead weight. The driver rewrites
its newest readable checkpoint in compact form (``rest.core.model_format.compact_state``: the model
file ``export-model`` writes, the epoch its weights are from, the best-so-far metrics, the
final record) and empties its older checkpoints. Errored trials are left alone: resume
trains them on from their checkpoint.

Crash safety, step by step, in the trial's newest readable checkpoint directory:
1. write ``compact.pt`` under a temporary name and rename it into place (one object on S3);
2. delete ``state.pt`` (readers take ``compact.pt`` first, so 1-2 is never unreadable);
3. delete the files of every other checkpoint directory, keeping the directory itself: an
   experiment snapshot written before the last checkpoint may still name it, and Ray refuses
   to restore a trial from a checkpoint path that no longer exists.
Every step is idempotent: a driver killed in between leaves a readable trial, and the
catch-up after each phase (``compact_finished``) completes the work.
"""

from __future__ import annotations

import io
import logging
from pathlib import PurePosixPath

from rest.core.model_format import compact_state, is_compact
from rest.storage import Location
from rest.study.contract import COMPACT_FILE, STATE_FILE, checkpoint_dirs, read_checkpoint

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def compact_trial(trial: Location) -> bool:
    """Rewrite a finished trial's newest readable checkpoint in compact form; False if it has none."""
    dirs = checkpoint_dirs(trial)
    for keep in dirs:
        try:
            state = read_checkpoint(keep)
        except Exception as exc:  # cut short by a crash: the one before
            log.debug("skipping unreadable checkpoint %s: %s", keep, exc)
            continue
        if not is_compact(state):
            _write_file(keep.join(COMPACT_FILE), _compact_bytes(state))
        _delete_files(keep, {STATE_FILE, COMPACT_FILE + TMP_SUFFIX})
        for other in dirs:
            if other.path != keep.path:
                other.fs.delete_dir_contents(other.path, missing_dir_ok=True)
        return True
    return False


def _compact_bytes(state: dict) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(compact_state(state), buffer)
    return buffer.getvalue()


def _write_file(target: Location, data: bytes) -> None:
    """The whole file or none: written under a temporary name, then renamed (copied and deleted on S3)."""
    tmp = target.path + TMP_SUFFIX
    with target.fs.open_output_stream(tmp) as f:
        f.write(data)
    target.fs.move(tmp, target.path)


def _delete_files(folder: Location, names: set[str]) -> None:
    for child in folder.children():
        if child.name in names:
            folder.fs.delete_file(child.path)


def needs_compaction(files: list[str]) -> set[str]:
    """Trial directory names, from the paths of every file under a phase, whose checkpoints
    still hold a training state or another leftover that compaction removes."""
    out = set()
    for path in files:
        parts = PurePosixPath(path).parts
        if len(parts) >= 3 and parts[-2].startswith("checkpoint_") and parts[-1] != "history.json":
            if parts[-1] != COMPACT_FILE:
                out.add(parts[-3])
    return out


def compact_finished(experiment: Location, trial_dirs: list[str]) -> int:
    """Compact those of a phase's finished trials (`trial_dirs`) a crash left uncompacted; how many.

    One recursive listing of the phase finds them; the compacted ones are not read again.
    """
    import pyarrow.fs as pafs

    infos = experiment.fs.get_file_info(pafs.FileSelector(experiment.path, recursive=True, allow_not_found=True))
    pending = needs_compaction([i.path for i in infos if i.type == pafs.FileType.File]) & set(trial_dirs)
    for name in sorted(pending):
        compact_logged(experiment.join(name))
    return len(pending)


def compact_logged(trial: Location) -> None:
    """Compact `trial`'s checkpoint; storage trouble is logged and leaves the full checkpoint."""
    try:
        compact_trial(trial)
    except Exception as exc:  # storage trouble: the trial keeps its full checkpoint, still readable
        log.warning("could not compact the checkpoint of %s (%s); it keeps its full checkpoint", trial, exc)
