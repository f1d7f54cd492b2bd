"""Every use of Ray Tune internals, behind one small door.

Ray's public API does not cover a few things this project needs: where the
current trial stores its checkpoints (to find one newer than Ray hands back),
whether an experiment directory really holds a snapshot to restore, the graceful
stop Tune performs on SIGUSR1, the bookkeeping of Ray's ASHA scheduler that
the per-cell wrapper routes, and recording a paused trial that a scheduler stops.
They live here, and ``tests/test_tune_ext.py`` checks each against the installed
Ray, so an upgrade that moves one fails loudly in the tests instead of silently
weakening resume.
"""
from __future__ import annotations

import os
import signal
from pathlib import PurePosixPath

# Tune's own SIGINT handler would end `fit()` looking like a finished run; the
# study driver installs its own (see driver.StopSignals) and asks Tune to stop
# through SIGUSR1, which Tune always handles the same graceful way.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")

TUNER_FILE = "tuner.pkl"
STATE_PREFIX = "experiment_state-"


def experiment_restorable(fs, path: str) -> bool:
    """Ray can restore `path` only if it holds both the tuner file and an experiment snapshot.

    ``Tuner.can_restore`` checks the tuner file alone; a driver killed before the
    first snapshot leaves the first without the second, and restoring that fails.
    """
    import pyarrow.fs as pafs

    names = {PurePosixPath(i.path).name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))}
    return TUNER_FILE in names and any(n.startswith(STATE_PREFIX) and n.endswith(".json") for n in names)


def trial_storage() -> tuple:
    """(pyarrow filesystem, trial directory) of the trial running in this process."""
    from ray import tune

    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def request_graceful_stop() -> None:
    """Ask a running ``Tuner.fit()`` in this process to stop after one last forced snapshot."""
    os.kill(os.getpid(), signal.SIGUSR1)


def asha_knows(asha, trial) -> bool:
    """Whether Ray's ASHA instance tracks `trial` (it raises on unknown trials)."""
    return trial.trial_id in asha._trial_info


def asha_forget(asha, trial) -> None:
    asha._trial_info.pop(trial.trial_id, None)


def asha_stopped(asha) -> int:
    return int(asha._num_stopped)


def stop_trial(tune_controller, trial) -> None:
    """Stop `trial` (paused or running) from a scheduler, and have Tune's next snapshot record it.

    Tune's ``stop_trial`` ends a PAUSED trial, but as the trial has no actor it never
    marks it for the experiment snapshot: storage would keep it PAUSED, and the phase
    would look unfinished. Schedulers get the controller wrapped (``_tune_controller``).
    """
    tune_controller.stop_trial(trial)
    getattr(tune_controller, "_tune_controller", tune_controller)._mark_trial_to_checkpoint(trial)
