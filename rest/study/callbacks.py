"""The driver's Ray Tune callbacks: the stall watch, the progress watch, the compaction of ended trials.

The stall watch says once, in the log and in stalls.log (``contract.STALL_LOG``), when
trials wait for resources that never come; the progress watch hands the caller's progress
function a ``rest.study.progress.PhaseProgress`` as trials start, report and end.

Imports Ray: the command line imports the study's Ray modules inside its handlers only.
"""

from __future__ import annotations

import logging
import time

from ray.tune import Callback

from rest.selection import PRIMARY_METRIC_KEYS
from rest.storage import Location
from rest.study import tune_ext
from rest.study.compact import compact_logged
from rest.study.contract import STALL_LOG
from rest.study.progress import PhaseProgress, count_trials, epochs_left, eta_seconds

log = logging.getLogger(__name__)


class StallWatch(Callback):
    """Says once when trials wait for resources and none has run for `seconds` (no silent hangs).

    Trials that no node can ever run are refused before fitting (check_feasible);
    this catches the rest: resources held by other jobs, nodes gone, an autoscaler
    that never delivers.
    """

    def __init__(self, seconds: float, study: Location):
        self.seconds = seconds
        self.log_file = study.join(STALL_LOG)  # summary.md reports what is written here
        self.last_progress = time.time()
        self.warned = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last_progress = time.time()

    def on_step_end(self, iteration, trials, **info):
        running = any(t.status == "RUNNING" for t in trials)
        pending = sum(t.status == "PENDING" for t in trials)
        if running or not pending:
            self.last_progress = time.time()
            return
        waited = time.time() - self.last_progress
        if waited > self.seconds and not self.warned:
            self.warned = True
            message = (
                f"{pending} trial(s) have waited {waited / 60:.1f} min for resources with none running; "
                f"check 'ray status' (other jobs, lost nodes) or lower --cpus-per-trial / --gpus-per-trial"
            )
            log.warning(message)
            earlier = self.log_file.read_text() if self.log_file.exists() else ""
            self.log_file.write_text(earlier + f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


class ProgressWatch(Callback):
    """Calls `report(PhaseProgress)` when a trial starts, reports or ends: the caller decides what to show.

    The function is the caller's (a console, a notebook widget): it is not pickled
    with the tuner (Ray saves its callbacks in tuner.pkl), so a restored one is silent.
    """

    def __init__(self, report, phase: str, planned_epochs: int, primary: str = "worst_group"):
        self.report, self.phase, self.planned = report, phase, planned_epochs
        self.metric = f"val_{PRIMARY_METRIC_KEYS[primary]}"
        key = PRIMARY_METRIC_KEYS[primary]
        self.label = "val " + key.removesuffix("_acc").replace("_", "-")  # val worst-group, val avg
        self.total, self.peak = 0, 1
        self.best: float | None = None
        self.timed = [0.0, 0]  # seconds and count of epochs trained in this run

    def __getstate__(self):
        return {**self.__dict__, "report": None}

    def setup(self, stop=None, num_samples=None, total_num_samples: int | None = None, **info):
        self.total = total_num_samples or 0

    def on_trial_start(self, iteration, trials, trial, **info):
        self._emit(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value and (self.best is None or value > self.best):
            self.best = float(value)
        if result.get("time_this_iter_s"):
            self.timed = [self.timed[0] + result["time_this_iter_s"], self.timed[1] + 1]
        self._emit(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._emit(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._emit(trials)

    def on_experiment_end(self, trials, **info):
        self._emit(trials)

    def _emit(self, trials) -> None:
        if self.report is None:
            return
        done, running, pending, failed = count_trials([t.status for t in trials], self.total)
        self.peak = max(self.peak, running)
        left = epochs_left(
            [
                (t.status, int((t.last_result or {}).get("epoch", 0)), int(t.config.get("epochs") or self.planned))
                for t in trials
            ],
            self.total - len(trials),
            self.planned,
        )
        pace = self.timed[0] / self.timed[1] if self.timed[1] else None
        eta = eta_seconds(left, pace, min(self.peak, running + pending))
        self.report(PhaseProgress(self.phase, done, running, pending, failed, self.best, self.label, eta))


class CompactFinished(Callback):
    """Compacts each trial's checkpoint (rest/study/compact.py) when the trial ends without error.

    Tune calls ``on_trial_complete`` for trials that trained their epochs and for trials a
    scheduler stopped (running or paused), after their last checkpoint is registered;
    errored and interrupted trials never reach it.
    """

    def on_trial_complete(self, iteration, trials, trial, **info):
        tune_ext.check_guards()  # a driver that lost its study writes nothing more to it
        fs, path = tune_ext.trial_location(trial)
        compact_logged(Location(fs, path))
