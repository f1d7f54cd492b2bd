"""What a study reports besides its files: experiment trackers and the stall watch.

Trackers are Ray Tune's own logger callbacks, chosen by the study file's `callbacks:`
list; the stall watch says once, in the log and in stalls.log, when trials wait for
resources that never come.
"""
from __future__ import annotations

import logging
import os
import time

from .errors import StudyError
from .space import StudySpec
from .storage import Location

log = logging.getLogger(__name__)

STALL_LOG = "stalls.log"


def _tensorboard(study: str, phase: str):
    from ray.tune.logger import TBXLoggerCallback

    return TBXLoggerCallback()  # Ray adds it anyway when tensorboardX is installed; listed, it is required


def _mlflow(study: str, phase: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    # MLflow reads MLFLOW_TRACKING_URI itself: a local file or SQLite store works offline.
    return MLflowLoggerCallback(experiment_name=study, tags={"phase": phase}, save_artifact=False)


def _wandb(study: str, phase: str):
    from ray.air.integrations.wandb import WandbLoggerCallback

    # W&B reads WANDB_MODE (offline works without a network) and WANDB_API_KEY itself.
    return WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", study), group=phase)


CALLBACKS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def stall_watch_class():
    from ray.tune import Callback

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
                message = (f"{pending} trial(s) have waited {waited / 60:.1f} min for resources with none running; "
                           f"check 'ray status' (other jobs, lost nodes) or lower --cpus-per-trial / --gpus-per-trial")
                log.warning(message)
                earlier = self.log_file.read_text() if self.log_file.exists() else ""
                self.log_file.write_text(earlier + f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    return StallWatch


def make_callbacks(spec: StudySpec, study: str, phase: str) -> list:
    try:
        return [CALLBACKS[name](study, phase) for name in spec.callbacks]
    except ImportError as exc:
        raise StudyError(f"the study file asks for a tracker whose package is missing ({exc.name}); "
                         f"pip install {exc.name} or remove it from 'callbacks'") from None
