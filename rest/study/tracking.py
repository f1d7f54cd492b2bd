"""What a study reports besides its files: experiment trackers.

Trackers are Ray Tune's own logger callbacks, chosen by the study file's `callbacks:`
list. The stall watch (which writes ``contract.STALL_LOG``) and the progress watch are in
rest/study/callbacks.py.
"""

from __future__ import annotations

import logging
import os

from rest.errors import StudyError
from rest.study.space import StudySpec

log = logging.getLogger(__name__)


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


def make_callbacks(spec: StudySpec, study: str, phase: str) -> list:
    try:
        return [CALLBACKS[name](study, phase) for name in spec.callbacks]
    except ImportError as exc:
        raise StudyError(
            f"the study file asks for a tracker whose package is missing ({exc.name}); "
            f"pip install {exc.name} or remove it from 'callbacks'"
        ) from None
