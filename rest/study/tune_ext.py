"""Every use of Ray Tune internals, behind one small door.

Ray's public API does not cover a few things this project needs: where the
current trial stores its checkpoints (to find one newer than Ray hands back, and
to write its history file), fewer per-metric statistics in Tune's snapshot,
whether an experiment directory really holds a snapshot to restore, the graceful
stop Tune performs on SIGUSR1, a check before every experiment snapshot (the
driver lock), the bookkeeping of Ray's ASHA scheduler that the per-cell wrapper
routes, recording a paused trial that a scheduler stops, the file where
``ray start`` leaves its address, the run config a restored tuner runs with, and
the switches that keep Ray quiet in the driver. They live here, and ``tests/study/test_tune_ext.py`` checks
each against the installed Ray, so an upgrade that moves one fails loudly in the
tests instead of silently weakening resume. The names of Ray's files (snapshots, error files) are in
``rest.study.contract``; reading an experiment back (``ExperimentAnalysis``) is ``rest.study.trials``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import PurePosixPath

from rest.study.contract import STATE_PREFIX

log = logging.getLogger(__name__)

# Tune's own SIGINT handler would end `fit()` looking like a finished run; the
# study driver installs its own (see driver.StopSignals) and asks Tune to stop
# through SIGUSR1, which Tune always handles the same graceful way.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")

TUNER_FILE = "tuner.pkl"


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


def trial_location(trial) -> tuple:
    """(pyarrow filesystem, trial directory) of a trial, in the driver (where it is after a restore too)."""
    return trial.storage.storage_filesystem, trial.path


def keep_statistics_only_of(metrics) -> None:
    """Have Tune keep its running statistics (min, max, mean, last-5 and last-10 means) of `metrics` only
    (None: of every numeric key again).

    Tune keeps them for every numeric key of every result, per trial, and writes them all
    into every experiment snapshot (~650 bytes a key and trial; its own keys, e.g.
    ``time_total_s``, among them). Only Ray's ``ExperimentAnalysis.get_best_trial`` reads
    them, for the metric it is asked about; this project reads none.
    """
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    update = getattr(_TrainingRunMetadata.update_metric, "rest_original", _TrainingRunMetadata.update_metric)
    # Deliberate patches of Ray's method (mypy refuses assigning to a method).
    if metrics is None:  # every key again, as Tune does
        _TrainingRunMetadata.update_metric = update  # type: ignore[method-assign]
        return
    kept = frozenset(metrics)

    @functools.wraps(update)
    def update_metric(self, metric, value, step=1):
        if metric in kept:
            update(self, metric, value, step)

    update_metric.rest_original = update  # type: ignore[attr-defined]  # a marker on our wrapper
    _TrainingRunMetadata.update_metric = update_metric  # type: ignore[method-assign]


def request_graceful_stop() -> None:
    """Ask a running ``Tuner.fit()`` in this process to stop after one last forced snapshot."""
    os.kill(os.getpid(), signal.SIGUSR1)


def fit_listens() -> bool:
    """Whether a ``Tuner.fit()`` runs in this process with its SIGUSR1 handler (installed inside fit) in place."""
    return callable(signal.getsignal(signal.SIGUSR1))


def stop_fit() -> bool:
    """Ask the ``Tuner.fit()`` running in this process to stop (True); False when none listens."""
    if not fit_listens():
        return False
    request_graceful_stop()
    return True


def current_cluster_address() -> str | None:
    """HOST:PORT of the cluster ``ray start`` last started on this machine (Ray's ray_current_cluster file), if any.

    Only the file: Ray's own "auto" also joins any GCS process it finds on the machine.
    """
    from ray._private.services import find_bootstrap_address

    return find_bootstrap_address(None) or None


def use_run_config(tuner, verbose: int, callbacks: list) -> None:
    """Give a restored Tuner this driver's verbosity and callbacks; it would run with those pickled in tuner.pkl."""
    config = tuner._local_tuner.get_run_config()
    config.verbose, config.callbacks = verbose, callbacks


# Below --verbose 2 the driver shows none of Ray's output. Ray's legacy output engine is silent at
# verbose 0 (the default engine still prints a configuration table and paths); Tune's traceback per
# failed trial is left to the study's own failure summary (error.txt keeps it); its warning about
# frequent snapshots (every checkpoint of a trial with few epochs forces one) is not the user's to fix;
# the "ray" logger's INFO lines (start-up, "Wrote the latest version...") go. Other warnings stay.
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@contextmanager
def quiet_ray(quiet: bool):
    """Ray's console output in this process held to its warnings and errors while inside, if `quiet`."""
    if not quiet:
        yield
        return
    saved = {k: os.environ.get(k) for k in QUIET_ENV}
    ray_log = logging.getLogger("ray")
    level = ray_log.level
    os.environ.update(QUIET_ENV)
    ray_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        ray_log.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_SNAPSHOT_GUARDS: list[Callable[[], None]] = []


def check_guards() -> None:
    """Run the snapshot guards of this process (the driver lock's check): before any write to the study."""
    for guard in list(_SNAPSHOT_GUARDS):
        guard()


def _guarded(save_to_dir):
    @functools.wraps(save_to_dir)
    def guarded_save_to_dir(self, *args, **kwargs):
        check_guards()
        return save_to_dir(self, *args, **kwargs)

    guarded_save_to_dir.rest_guarded = True  # type: ignore[attr-defined]  # a marker on our wrapper
    return guarded_save_to_dir


def _checked_upload(upload: Callable, **kwargs):
    """`upload(**kwargs)` unless a snapshot guard refuses (then skipped, logged: this thread has no caller).

    Module-level (with ``functools.partial``) because Ray pickles the syncer's current command
    with the search algorithm's state: a closure would take this module's locks along.
    """
    with _UPLOADS:
        _UPLOADS.running += 1
    try:
        check_guards()
    except BaseException as exc:  # noqa: BLE001 - this thread has no caller to raise to
        log.warning("experiment snapshot not uploaded: %s", exc)
        return None
    else:
        return upload(**kwargs)
    finally:
        with _UPLOADS:
            _UPLOADS.running -= 1
            _UPLOADS.notify_all()


def _guarded_upload(sync_up_command):
    """The syncer's upload, checked again in its own thread just before it starts.

    Tune uploads a saved snapshot in a background thread; a driver paused between
    the save and the upload would otherwise upload after waking. A failed check
    skips the upload (logged): the main thread stops on its own next check.
    """

    @functools.wraps(sync_up_command)
    def guarded_sync_up_command(self, *args, **kwargs):
        upload, upload_kwargs = sync_up_command(self, *args, **kwargs)
        return functools.partial(_checked_upload, upload), upload_kwargs

    guarded_sync_up_command.rest_guarded = True  # type: ignore[attr-defined]  # a marker on our wrapper
    return guarded_sync_up_command


class _Uploads(threading.Condition):
    running = 0


_UPLOADS = _Uploads()  # snapshot uploads under way in Tune's syncer threads


def wait_for_uploads(seconds: float) -> bool:
    """Wait up to `seconds` for snapshot uploads under way to end; whether none is left.

    The syncer's threads are daemons whose pyarrow copy calls back into Python: a process
    that exits while one runs can die in the interpreter's shutdown (SIGABRT).
    """
    with _UPLOADS:
        return _UPLOADS.wait_for(lambda: _UPLOADS.running == 0, timeout=seconds)


@contextmanager
def guard_snapshots(check: Callable[[], None]):
    """Within the block, Tune calls `check()` before it saves each experiment snapshot in this process,
    and again, in the upload thread, before it uploads the snapshot to storage.

    ``TuneController.save_to_dir`` writes the experiment state (trials, searcher,
    callbacks) to the driver's staging directory, and its only caller,
    ``TuneController.checkpoint``, then has the syncer upload that directory in a
    background thread: periodic and forced snapshots alike go through both. `check`
    raising (a BaseException, so that Tune's own ``except Exception`` does not turn
    it into a log line) keeps the snapshot from being written or uploaded. An upload
    already under way when the driver is paused can still land when it wakes: storage
    without conditional writes cannot refuse it (docs/cluster.md). (A callback's
    public ``get_state`` also runs before each snapshot, but a restored experiment
    takes its callbacks from the pickled run config of the driver that started it:
    older studies have none.)
    """
    from ray.train._internal.storage import _FilesystemSyncer
    from ray.tune.execution.tune_controller import TuneController

    # Deliberate patches of Ray's methods (mypy refuses assigning to a method).
    if not getattr(TuneController.save_to_dir, "rest_guarded", False):
        TuneController.save_to_dir = _guarded(TuneController.save_to_dir)  # type: ignore[method-assign]
    if not getattr(_FilesystemSyncer._sync_up_command, "rest_guarded", False):
        _FilesystemSyncer._sync_up_command = _guarded_upload(  # type: ignore[method-assign]
            _FilesystemSyncer._sync_up_command
        )
    _SNAPSHOT_GUARDS.append(check)
    try:
        yield
    finally:
        _SNAPSHOT_GUARDS.remove(check)
        if not wait_for_uploads(60):
            log.warning("an experiment snapshot upload still runs after 60 s; leaving it")


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
