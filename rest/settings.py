"""Typed training settings: the one source of truth for hyperparameters.

Nothing here imports torch, so the command line can build and validate settings
before paying for heavy imports. Search spaces (YAML) and command-line flags only
override these defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from rest.errors import UserError

# Names of the registries, repeated here (not imported) so validation stays cheap.
# tests/test_registries.py checks they match the real registries.
DATASET_NAMES = ("colored_digits", "cmnist", "cifar10c", "bffhq")
MODEL_NAMES = ("cnn", "resnet18")
SPARSE_METHOD_NAMES = ("rigl", "set", "static", "dcwp")
ALLOCATION_NAMES = ("erk", "er", "uniform")
REWEIGHT_NAMES = ("none", "oracle", "jtt", "pgd")
OPTIMIZER_NAMES = ("sgd", "adam")
SCHEDULE_NAMES = ("plateau", "cosine", "none")
STEM_NAMES = ("auto", "imagenet", "cifar")
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMAT_NAMES = ("auto", "channels_last", "contiguous")
# The primary validation metric of model selection: REST selects its reweighted (dense)
# runs on validation worst-group accuracy and its sparse runs on validation average accuracy.
PRIMARY_METRIC_NAMES = ("worst_group", "average")


# Keys a trial config (or an older checkpoint's settings) carries that are not settings.
NON_SETTING_KEYS = ("extra",)


class SettingsError(UserError, ValueError):
    """A setting has an impossible value; the message names it and the fix."""


def _setting(default: Any, help: str) -> Any:
    """A field with its one help string: the command line's flag and its --help line come from it."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainSettings:
    """Everything that defines one training run (one Ray Tune trial).

    Every field is a ``train`` flag (``--conflict-pct`` for conflict_pct) and a key of a
    study file's ``train:`` or ``search:``; its help string is below.
    """

    dataset: str = _setting("colored_digits", f"dataset: {', '.join(DATASET_NAMES)} (colored_digits is embedded)")
    conflict_pct: float = _setting(1.0, "percent of bias-conflicting training samples")
    data_root: str | None = _setting(None, "root of an LfF-layout dataset (cmnist, cifar10c, bffhq)")
    model: str | None = _setting(None, f"model: {', '.join(MODEL_NAMES)} (default: the dataset's)")
    width: int = _setting(64, "ResNet base width")
    stem: str = _setting(
        "auto", "ResNet stem: auto (CIFAR stem below 64 px, ImageNet stem from 64 px), imagenet (REST's), cifar"
    )
    density: float = _setting(1.0, "fraction of conv/linear weights kept, in (0, 1]; 1 = dense")
    sparse: str = _setting(
        "rigl",
        f"sparse method: {', '.join(SPARSE_METHOD_NAMES)} (rigl, set, static: mask rules "
        "during training; dcwp: masks learned first, then retraining)",
    )
    distribution: str = _setting("erk", f"layer-wise density: {', '.join(ALLOCATION_NAMES)}")
    update_frequency: int = _setting(100, "optimizer steps between mask updates")
    drop_rate: float = _setting(0.5, "initial drop fraction of a mask update, cosine-decayed")
    drop_rate_min: float = _setting(0.0, "floor the drop fraction decays to, below drop_rate (REST: 0.005)")
    t_end: float = _setting(0.75, "fraction of training after which masks stop changing, in (0, 1] (REST: 1)")
    reweight: str = _setting("oracle", f"sampling: {', '.join(REWEIGHT_NAMES)}")
    lambda_upweight: float = _setting(30.0, "upweighting factor of bias-conflicting samples, >= 1")
    jtt_epochs: int = _setting(1, "ERM epochs of JTT's identification model")
    gce_q: float = _setting(
        0.7, "q of the generalized cross-entropy of PGD's and DCWP's biased models (both papers: 0.7)"
    )
    pgd_epochs: int = _setting(1, "PGD: epochs of the biased model, trained with uniform sampling")
    pgd_norm: float = _setting(0.7, "PGD: p of the per-sample gradient p-norm (PGD's code: 0.7)")
    dcwp_pretrain_epochs: int = _setting(1, "DCWP: dense pretraining epochs of the model and its biased (GCE) twin")
    dcwp_prune_epochs: int = _setting(1, "DCWP: epochs of mask-score learning, weights frozen")
    dcwp_mask_lr: float = _setting(0.01, "DCWP: Adam learning rate of the mask scores (DCWP: 0.01)")
    dcwp_prune_upweight: float = _setting(
        80.0, "DCWP: sampling weight of flagged samples while scores learn (DCWP: 80)"
    )
    dcwp_con_prune: float = _setting(
        0.05, "DCWP: weight of the debiased contrastive term while scores learn (DCWP: 0.05)"
    )
    dcwp_con_retrain: float = _setting(0.05, "DCWP: weight of the debiased contrastive term in retraining (DCWP: 0.05)")
    optimizer: str = _setting("sgd", f"optimizer: {', '.join(OPTIMIZER_NAMES)}")
    lr: float = _setting(0.01, "learning rate")
    momentum: float = _setting(0.9, "SGD momentum")
    weight_decay: float = _setting(0.0, "weight decay")
    schedule: str = _setting("plateau", f"learning-rate schedule: {', '.join(SCHEDULE_NAMES)}")
    plateau_patience: int = _setting(10, "plateau: epochs without validation-loss gain before lr x0.1 (REST: 5)")
    batch_size: int = _setting(256, "training batch size")
    epochs: int = _setting(10, "training epochs")
    seed: int = _setting(42, "random seed")
    selection: str = _setting(
        "worst_group",
        f"validation metric that selects the epoch: {', '.join(PRIMARY_METRIC_NAMES)} "
        "(REST: worst_group for reweighted runs, average for sparse ones)",
    )
    device: str = _setting("auto", "auto, cpu, cuda or cuda:N (auto: the GPU if there is one)")
    precision: str = _setting(
        "auto",
        f"autocast precision: {', '.join(PRECISION_NAMES)} (fp16 with a loss scaler); auto: bf16 "
        "on CUDA, fp32 on CPU (CPU autocast is slower; bf16/fp16 there are for testing)",
    )
    memory_format: str = _setting(
        "auto",
        f"weight and activation layout: {', '.join(MEMORY_FORMAT_NAMES)} "
        "(auto: channels_last on CUDA, contiguous on CPU)",
    )
    data_device_fraction: float = _setting(
        0.25,
        "the dataset goes onto the device when it takes at most this fraction "
        "of the device's memory; else it stays in host memory and batches are "
        "streamed (0: always stream)",
    )
    eval_batch_size: int = _setting(256, "batch size of validation and test passes")
    subsample: int = _setting(
        0,
        "use N samples of each split, for quick runs: a seeded sample that keeps each split's "
        "class and aligned/conflicting shares, the same for every seed (0: all)",
    )

    def validate(self) -> TrainSettings:
        """Raise SettingsError naming the first impossible value."""
        _choice("dataset", self.dataset, DATASET_NAMES)
        if self.model is not None:
            _choice("model", self.model, MODEL_NAMES)
        _choice("sparse", self.sparse, SPARSE_METHOD_NAMES)
        _choice("distribution", self.distribution, ALLOCATION_NAMES)
        _choice("reweight", self.reweight, REWEIGHT_NAMES)
        _choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        _choice("schedule", self.schedule, SCHEDULE_NAMES)
        _choice("stem", self.stem, STEM_NAMES)
        _choice("precision", self.precision, PRECISION_NAMES)
        _choice("memory_format", self.memory_format, MEMORY_FORMAT_NAMES)
        _choice("selection", self.selection, PRIMARY_METRIC_NAMES)
        if not 0.0 < float(self.density) <= 1.0:
            raise SettingsError(f"density {self.density} is outside (0, 1]; use e.g. 0.05 for 5% of weights")
        if float(self.lambda_upweight) < 1.0:
            raise SettingsError(
                f"lambda_upweight {self.lambda_upweight} is below 1; use a value >= 1 (1 means no upweighting)"
            )
        for name in ("epochs", "batch_size", "update_frequency", "eval_batch_size", "width"):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{name} {getattr(self, name)} is below 1; give a positive integer")
        if not -(2**62) <= int(self.seed) <= 2**62:  # torch's generators take 64 bits; trials add small offsets
            raise SettingsError(f"seed {self.seed} is out of range; use an integer such as 42")
        if not 0.0 <= float(self.data_device_fraction) <= 1.0:
            raise SettingsError(
                f"data_device_fraction {self.data_device_fraction} is outside [0, 1]; "
                "use 0.25 (the default) or 0 to always stream"
            )
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
            raise SettingsError(
                f"dcwp_prune_upweight {self.dcwp_prune_upweight} is below 1; use a value >= 1 (DCWP: 80)"
            )
        for name in ("dcwp_con_prune", "dcwp_con_retrain"):
            if float(getattr(self, name)) < 0.0:
                raise SettingsError(
                    f"{name} {getattr(self, name)} is negative; use 0 (no contrastive term) or DCWP's 0.05"
                )
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise SettingsError(f"drop_rate {self.drop_rate} is outside [0, 1)")
        if float(self.drop_rate_min) < 0.0:
            raise SettingsError(f"drop_rate_min {self.drop_rate_min} is negative; use 0 (no floor) or e.g. 0.005")
        updates = float(self.density) < 1.0 and self.sparse != "static"  # a floor only matters when masks move
        if updates and float(self.drop_rate_min) > 0.0 and float(self.drop_rate_min) >= float(self.drop_rate):
            raise SettingsError(
                f"drop_rate_min {self.drop_rate_min} is not below drop_rate {self.drop_rate}; "
                "lower drop_rate_min or raise drop_rate"
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

    def replace(self, **changes: Any) -> TrainSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        """Build settings from a flat mapping; unknown keys are an error naming them.

        A study's bookkeeping (``extra``: a trial's role, method, position) rides in its
        trial configs, and checkpoints and model files written before it left the settings
        carry an empty one: it is not a setting and is dropped here.
        """
        values = {k: v for k, v in values.items() if k not in NON_SETTING_KEYS}
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


def _real(value: Any) -> bool:
    """A real number, numpy's included (registered with the numbers ABCs), bools excluded."""
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Ray Tune samples numpy scalars and YAML gives ints for floats; make them plain.

    Only numbers become numbers and only text becomes text: `true` or "0.5" for a
    number would pass float() yet reach the tables as another type.
    """
    kind = str(f.type).split(" |")[0]
    if value is None or kind not in _SCALARS:
        return value
    if not (isinstance(value, (str, os.PathLike)) if kind == "str" else _real(value)):
        raise SettingsError(f"setting {f.name} must be {'text' if kind == 'str' else kind}, got {value!r}")
    if kind == "int" and isinstance(value, float) and not value.is_integer():
        raise SettingsError(f"setting {f.name} must be an integer, got {value}")
    try:
        return os.fspath(value) if kind == "str" else _SCALARS[kind](value)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {f.name} must be {kind}, got {value!r}") from None
