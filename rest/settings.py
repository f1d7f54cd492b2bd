"""Typed training settings: the one source of truth for hyperparameters.

Nothing here imports torch, so the command line can build and validate settings
before paying for heavy imports. Search spaces (YAML) and command-line flags only
override these defaults.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

# Names of the registries, repeated here (not imported) so validation stays cheap.
# tests/test_registries.py checks they match the real registries.
DATASET_NAMES = ("colored_digits", "cmnist", "cifar10c", "bffhq")
MODEL_NAMES = ("cnn", "resnet18")
SPARSE_METHODS = ("rigl", "set", "static", "dcwp")
DISTRIBUTIONS = ("erk", "er", "uniform")
REWEIGHT_NAMES = ("none", "oracle", "jtt", "pgd")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("plateau", "cosine", "none")
CONFLICT_PCTS = (0.5, 1.0, 2.0, 5.0)
STEMS = ("auto", "imagenet", "cifar")
PRECISIONS = ("fp32", "bf16", "fp16")
# The primary validation metric of model selection: REST selects its reweighted (dense)
# runs on validation worst-group accuracy and its sparse runs on validation average accuracy.
SELECTIONS = ("worst_group", "average")


class SettingsError(UserError, ValueError):
    """A setting has an impossible value; the message names it and the fix."""


@dataclass
class TrainSettings:
    """Everything that defines one training run (one Ray Tune trial)."""

    dataset: str = "colored_digits"
    conflict_pct: float = 1.0
    data_root: str | None = None
    model: str | None = None  # None: the dataset's default model
    width: int = 64  # ResNet base width
    stem: str = "auto"  # ResNet stem: auto (CIFAR stem below 64 px, ImageNet stem from 64 px), imagenet (REST), cifar
    density: float = 1.0
    sparse: str = "rigl"
    distribution: str = "erk"
    update_frequency: int = 100
    drop_rate: float = 0.5
    drop_rate_min: float = 0.0  # floor of the cosine-decayed drop fraction (REST: 0.005)
    t_end: float = 0.75
    reweight: str = "oracle"
    lambda_upweight: float = 30.0
    jtt_epochs: int = 1
    gce_q: float = 0.7  # q of the generalized cross-entropy that trains PGD's and DCWP's biased models (both: 0.7)
    pgd_epochs: int = 1  # epochs of PGD's step 1: the biased model trained with uniform sampling
    pgd_norm: float = 0.7  # p of the per-sample gradient p-norm (PGD's code: norm_scale 0.7)
    dcwp_pretrain_epochs: int = 1  # DCWP step 1: dense pretraining of the model and its biased (GCE) twin
    dcwp_prune_epochs: int = 1  # DCWP step 3: epochs of mask-score learning, weights frozen
    dcwp_mask_lr: float = 0.01  # Adam learning rate of the mask scores (DCWP: lr_prune 1e-2)
    dcwp_prune_upweight: float = 80.0  # sampling weight of flagged samples while scores learn (DCWP: 80)
    dcwp_con_prune: float = 0.05  # weight of the debiased contrastive term while scores learn (DCWP: 0.05)
    dcwp_con_retrain: float = 0.05  # weight of the debiased contrastive term in retraining (DCWP: 0.05)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "plateau"
    plateau_patience: int = 10  # epochs without validation-loss gain before x0.1 (PyTorch's default; REST: 5)
    batch_size: int = 256
    epochs: int = 10
    seed: int = 42
    selection: str = "worst_group"  # validation metric that picks the epoch: worst_group or average (REST's sparse runs)
    device: str = "auto"
    precision: str = "bf16"  # autocast dtype on CUDA; CPU always trains in fp32
    eval_batch_size: int = 256
    subsample: int = 0  # use only the first N samples of each split (0: all); for smoke runs
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "TrainSettings":
        """Raise SettingsError naming the first impossible value."""
        _choice("dataset", self.dataset, DATASET_NAMES)
        if self.model is not None:
            _choice("model", self.model, MODEL_NAMES)
        _choice("sparse", self.sparse, SPARSE_METHODS)
        _choice("distribution", self.distribution, DISTRIBUTIONS)
        _choice("reweight", self.reweight, REWEIGHT_NAMES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("stem", self.stem, STEMS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("selection", self.selection, SELECTIONS)
        if not 0.0 < float(self.density) <= 1.0:
            raise SettingsError(f"density {self.density} is outside (0, 1]; use e.g. 0.05 for 5% of weights")
        if float(self.lambda_upweight) < 1.0:
            raise SettingsError(f"lambda_upweight {self.lambda_upweight} is below 1; use a value >= 1 (1 means no upweighting)")
        for name in ("epochs", "batch_size", "update_frequency", "eval_batch_size", "width"):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{name} {getattr(self, name)} is below 1; give a positive integer")
        if int(self.subsample) < 0:
            raise SettingsError(f"subsample {self.subsample} is negative; use 0 for all samples")
        if self.reweight == "jtt" and int(self.jtt_epochs) < 1:
            raise SettingsError(f"jtt_epochs {self.jtt_epochs} is below 1; JTT needs at least one ERM epoch")
        for name in ("pgd_epochs", "dcwp_pretrain_epochs", "dcwp_prune_epochs"):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{name} {getattr(self, name)} is below 1; the stage needs at least one epoch")
        if not 0.0 < float(self.gce_q) <= 1.0:
            raise SettingsError(f"gce_q {self.gce_q} is outside (0, 1]; PGD and DCWP use 0.7")
        if float(self.pgd_norm) <= 0.0:
            raise SettingsError(f"pgd_norm {self.pgd_norm} must be positive; PGD uses 0.7, 2 is the Euclidean norm")
        if float(self.dcwp_mask_lr) <= 0.0:
            raise SettingsError(f"dcwp_mask_lr {self.dcwp_mask_lr} must be positive (DCWP: 0.01)")
        if float(self.dcwp_prune_upweight) < 1.0:
            raise SettingsError(f"dcwp_prune_upweight {self.dcwp_prune_upweight} is below 1; use a value >= 1 (DCWP: 80)")
        for name in ("dcwp_con_prune", "dcwp_con_retrain"):
            if float(getattr(self, name)) < 0.0:
                raise SettingsError(f"{name} {getattr(self, name)} is negative; use 0 (no contrastive term) or DCWP's 0.05")
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise SettingsError(f"drop_rate {self.drop_rate} is outside [0, 1)")
        if float(self.drop_rate_min) < 0.0:
            raise SettingsError(f"drop_rate_min {self.drop_rate_min} is negative; use 0 (no floor) or e.g. 0.005")
        updates = float(self.density) < 1.0 and self.sparse != "static"  # a floor only matters when masks move
        if updates and float(self.drop_rate_min) > 0.0 and float(self.drop_rate_min) >= float(self.drop_rate):
            raise SettingsError(
                f"drop_rate_min {self.drop_rate_min} is not below drop_rate {self.drop_rate}; lower drop_rate_min or raise drop_rate"
            )
        if int(self.plateau_patience) < 0:
            raise SettingsError(f"plateau_patience {self.plateau_patience} is negative; give epochs >= 0 (REST uses 5)")
        if not 0.0 < float(self.t_end) <= 1.0:
            raise SettingsError(f"t_end {self.t_end} is outside (0, 1]")
        for f in dataclasses.fields(self):  # nan or inf would train to nan and still "finish"
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{f.name} is {value}; give a finite number")
        if float(self.lr) <= 0:
            raise SettingsError(f"lr {self.lr} must be positive")
        if float(self.conflict_pct) <= 0 or float(self.conflict_pct) >= 100:
            raise SettingsError(f"conflict_pct {self.conflict_pct} is outside (0, 100); use one of 0.5, 1, 2, 5")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise SettingsError(f"device '{self.device}' is unknown; choose from auto, cpu, cuda, cuda:N")
        return self

    def replace(self, **changes: Any) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSettings":
        """Build settings from a flat mapping; unknown keys are an error naming them."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        coerced = {k: _coerce(known[k], v) for k, v in values.items()}
        return cls(**coerced)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise SettingsError(f"unknown {name} '{value}'; choose from {', '.join(options)}")


_SCALARS = {"int": int, "float": float, "str": str}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Ray Tune samples numpy scalars and YAML gives ints for floats; make them plain."""
    kind = str(f.type).split(" |")[0]
    if value is None or kind not in _SCALARS:
        return value
    if kind == "int" and isinstance(value, float) and not value.is_integer():
        raise SettingsError(f"setting {f.name} must be an integer, got {value}")
    try:
        return _SCALARS[kind](value)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {f.name} must be {kind}, got {value!r}") from None
