"""Train one configuration: reweighted sampling (none, oracle, JTT, PGD) + sparse training
(RigL, SET, static masks, or DCWP's learned masks).

``Trainer`` owns every piece of training state and saves it as one checkpoint
dict (model, masks, optimizer, LR schedule, sampler, RNG states, epoch, best so
far), so training N epochs straight and training in pieces across processes give
bitwise-identical metrics on CPU. ``train`` is the generator most callers want:
one metrics record per epoch.

Model selection: the epoch the project's one rule (``rest.selection``) ranks
first on validation numbers is remembered, with its weights, and all its metrics
are reported as ``best_*``; test numbers never influence selection.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from rest import selection
from rest.core import pgd
from rest.core.batches import AUGMENTATIONS, to_input
from rest.core.data import BiasedData, DataError, DatasetSpec, Split, get_dataset_spec, load_dataset
from rest.core.dcwp import DCWPState, flagged_fraction, learn_scores, top_masks
from rest.core.device import (
    Amp,
    backward_step,
    data_placement,
    make_amp,
    memory_format,
    resolve_device,
    resolve_precision,
    rng_state,
    set_rng_state,
    to_device,
)
from rest.core.losses import FeatureTap, debiased_contrastive, generalized_cross_entropy
from rest.core.models import build_model
from rest.core.reweight import EpochSampler, make_sampler
from rest.core.sparse import LEARNED_METHOD_NAMES, SparseMask, output_positions
from rest.settings import TrainSettings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
# criterion(logits, y, sample indices) -> scalar loss; None: cross-entropy
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Every key of a run_epoch record: a contract with the study and export code (docs/metrics.md).
SPLIT_PREFIXES = ("val_", "test_")
EPOCH_METRICS = (
    "epoch", "train_loss",
    "val_worst_group_acc", "val_avg_acc", "val_conflict_acc", "val_align_acc",
    "val_worst_class_bias_acc", "val_balanced_acc", "val_align_count", "val_conflict_count", "val_loss",
    "test_unbiased_acc", "test_worst_group_acc", "test_conflict_acc", "test_align_acc",
    "test_worst_class_bias_acc", "test_balanced_acc",
)  # fmt: skip
# Every key of a record: the epoch's metrics, the selected epoch's (best_*), then the model's size and timing.
METRICS = (
    EPOCH_METRICS
    + ("best_epoch",)
    + tuple(f"best_{k}" for k in EPOCH_METRICS if k.startswith(SPLIT_PREFIXES))
    + ("density", "nonzero_params", "dense_params", "inference_flops", "dense_inference_flops", "lr", "epoch_seconds")
)


# ---------------------------------------------------------------- evaluation


def group_accuracies(correct: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Accuracies of one split from per-sample correctness, targets y and bias labels b.

    REST's two groups: aligned (y == b) and conflicting (y != b); ``worst`` is exactly
    min(aligned, conflicting), over the groups present. Finer groups: every (y, b) pair
    present in the split; ``worst_class_bias`` is the lowest of their accuracies and
    ``balanced`` their unweighted mean, so a pair of 3 samples counts as much as a pair
    of 3,000. Accuracies are fractions (nan for an empty group); counts are sample numbers.
    """

    def mean(sel: torch.Tensor) -> float:
        return float(correct[sel].float().mean()) if bool(sel.any()) else math.nan

    conflicting = y != b
    aligned, conflict = mean(~conflicting), mean(conflicting)
    two = [a for a in (aligned, conflict) if not math.isnan(a)]
    pair = y * (int(b.max()) + 1) + b  # one id per (y, b) pair
    _, group, sizes = torch.unique(pair, return_inverse=True, return_counts=True)
    per_pair = torch.bincount(group, weights=correct.double(), minlength=len(sizes)) / sizes
    return {
        "avg": float(correct.float().mean()),
        "align": aligned,
        "conflict": conflict,
        "worst": min(two),
        "worst_class_bias": float(per_pair.min()),
        "balanced": float(per_pair.mean()),
        "align_count": int((~conflicting).sum()),
        "conflict_count": int(conflicting.sum()),
    }


@torch.inference_mode()
def predict(
    model: nn.Module, split: Split, spec: DatasetSpec, batch_size: int, amp: Amp | None = None
) -> tuple[torch.Tensor, float]:
    """Predicted classes and mean cross-entropy on a split."""
    amp = amp or Amp()
    model.eval()
    preds, loss = [], 0.0
    device = next(model.parameters()).device
    for start in range(0, len(split), batch_size):
        x = to_input(to_device(split.images[start : start + batch_size], device), spec)
        y = to_device(split.y[start : start + batch_size], device)
        with amp.autocast(device):
            logits = model(x)
        loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        preds.append(logits.argmax(1))
    model.train()
    return torch.cat(preds), loss / max(1, len(split))


def evaluate(
    model: nn.Module, split: Split, spec: DatasetSpec, batch_size: int, amp: Amp | None = None
) -> dict[str, float]:
    if split.b is None:
        raise DataError("bias labels were withheld from an evaluation split; group accuracies need them")
    preds, loss = predict(model, split, spec, batch_size, amp)
    acc = group_accuracies(preds.cpu() == split.y.cpu(), split.y.cpu(), split.b.cpu())
    acc["loss"] = loss
    return acc


# ------------------------------------------------------------------ training

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], TrainSettings], torch.optim.Optimizer]] = {
    "sgd": lambda params, s: torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay),
    "adam": lambda params, s: torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay),
}

Scheduler = torch.optim.lr_scheduler.LRScheduler  # ReduceLROnPlateau is one too (torch >= 2.2)
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, TrainSettings], Scheduler | None]] = {
    # REST: ReduceLROnPlateau on validation loss, x0.1 after `plateau_patience` flat epochs (REST: 5)
    "plateau": lambda opt, s: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.1, patience=s.plateau_patience
    ),
    "cosine": lambda opt, s: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs),
    "none": lambda opt, s: None,
}


def fit_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    order: torch.Tensor,
    spec: DatasetSpec,
    batch_size: int,
    sparse: SparseMask | None = None,
    aug_gen: torch.Generator | None = None,
    progress: Progress | None = None,
    amp: Amp | None = None,
    criterion: Criterion | None = None,
) -> float:
    """One pass over `order` (indices into split); returns the mean training loss."""
    amp = amp or Amp()
    device = next(model.parameters()).device
    augment = AUGMENTATIONS[spec.augment]
    model.train()
    total = torch.zeros((), device=device)
    n_batches = math.ceil(len(order) / batch_size)
    for i in range(n_batches):
        idx = order[i * batch_size : (i + 1) * batch_size].to(split.y.device)
        images = split.images[idx]
        if augment is not None:
            images = augment(images, aug_gen)
        x = to_input(to_device(images, device), spec)
        y = to_device(split.y[idx], device)
        with amp.autocast(device):  # the model's forward only: losses are computed in fp32, outside autocast
            logits = model(x).float()
        loss = F.cross_entropy(logits, y) if criterion is None else criterion(logits, y, idx)
        stepped = backward_step(amp, loss, optimizer)
        if sparse is not None and stepped:  # the mask schedule counts optimizer steps taken
            sparse.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach() * len(idx)
        if progress is not None:
            progress(i + 1, n_batches)
    return float(total) / len(order)


class Trainer:
    """All state of one training run; ``run_epoch`` advances it by one epoch."""

    def __init__(self, settings: TrainSettings, data: BiasedData | None = None, progress: Progress | None = None):
        self.settings = s = settings.validate()
        self.spec = get_dataset_spec(s.dataset)
        self.device = resolve_device(s.device)
        self.precision = resolve_precision(s.precision, self.device)
        data = data if data is not None else load_dataset(s.dataset, s.conflict_pct, s.data_root)
        data = data.subsample(s.subsample) if s.subsample else data
        # the whole dataset on the device when it fits the budget; else batches are streamed from host memory
        self.placement = data_placement(data_bytes(data), self.device, s.data_device_fraction)
        self.data = data.to(self.device) if self.placement == "device" else data
        self.data_fields = data.describe()  # what the run trains and is tested on, once: callers add it to records
        self.progress = progress
        self.amp = make_amp(self.precision, self.device)

        torch.manual_seed(s.seed)
        self.model = self._new_model()
        self.optimizer = OPTIMIZERS[s.optimizer](list(self.model.parameters()), s)
        self.scheduler = SCHEDULES[s.schedule](self.optimizer, s)
        steps_per_epoch = math.ceil(len(self.data.train) / s.batch_size)
        self.sparse = SparseMask(
            self.model,
            s.density,
            s.sparse,
            s.distribution,
            s.update_frequency,
            s.drop_rate,
            t_end_step=int(s.t_end * s.epochs * steps_per_epoch),
            seed=s.seed,
            drop_rate_min=s.drop_rate_min,
        )
        self.positions = output_positions(self.model, to_input(self.data.train.images[:1].to(self.device), self.spec))
        self.dense_flops = sum(2 * self.positions[n] * p.numel() for n, p in self.sparse.params.items())
        self.aug_gen = torch.Generator().manual_seed(s.seed + 1)
        # DCWP learns its masks on the first epoch, before the sampler (which may use its flagged set)
        self.dcwp = DCWPState() if s.sparse in LEARNED_METHOD_NAMES and self.sparse.counts else None
        self.sampler: EpochSampler | None = None  # built on first epoch (JTT and PGD train a model for it)
        self.epoch = 0
        self.best: dict[str, float] = {"best_epoch": 0}  # the selected epoch's metrics, as best_<metric>
        self.best_weights: dict | None = None  # model and masks at the best epoch, for export

    def _new_model(self) -> nn.Module:
        s = self.settings
        model = build_model(
            s.model or self.spec.default_model, self.spec.num_classes, self.spec.image_size, s.width, stem=s.stem
        )
        return model.to(self.device).to(memory_format=memory_format(s.memory_format, self.device))

    def _identify_errors(self, train: Split) -> torch.Tensor:
        """JTT stage 1: a dense ERM model trained jtt_epochs; its training errors.

        With DCWP, its biased twin's errors instead: upweighting them is DCWP's retraining.
        """
        s = self.settings
        if self.dcwp is not None and self.dcwp.flagged is not None:
            return self.dcwp.flagged
        model = self._new_model()
        optimizer = OPTIMIZERS[s.optimizer](list(model.parameters()), s)
        amp = make_amp(self.precision, self.device)  # its own loss scaler: this model's gradients differ
        gen = torch.Generator().manual_seed(s.seed + 2)
        for _ in range(s.jtt_epochs):
            fit_epoch(
                model,
                optimizer,
                train,
                torch.randperm(len(train), generator=gen),
                self.spec,
                s.batch_size,
                aug_gen=gen,
                amp=amp,
            )
        preds, _ = predict(model, train, self.spec, s.eval_batch_size, amp)
        return preds.cpu() != train.y.cpu()

    def _pgd_importance(self, train: Split) -> torch.Tensor:
        """PGD steps 1-2: a dense model trained pgd_epochs with GCE and uniform sampling (as
        PGD's code trains its biased model), then each training sample's last-layer
        gradient p-norm, in eval mode as PGD computes it. Returns sampling probabilities."""
        s = self.settings
        model = self._new_model()
        optimizer = OPTIMIZERS[s.optimizer](list(model.parameters()), s)
        amp = make_amp(self.precision, self.device)
        gen = torch.Generator().manual_seed(s.seed + 3)
        gce = functools.partial(_gce_criterion, q=s.gce_q)
        for _ in range(s.pgd_epochs):
            order = torch.randperm(len(train), generator=gen)
            fit_epoch(model, optimizer, train, order, self.spec, s.batch_size, aug_gen=gen, amp=amp, criterion=gce)
        return pgd.importance(pgd.grad_norms(model, train, self.spec, s.eval_batch_size, s.pgd_norm, amp))

    def _learn_dcwp_masks(self, dcwp: DCWPState, train: Split) -> None:
        """DCWP steps 1-3 (rest.core.dcwp): dense pretraining of the model beside a GCE twin, the
        twin's training errors as flagged samples, mask scores learned on the frozen model,
        the top-k of each layer installed as the mask. Never reads bias labels."""
        s = self.settings
        gen = torch.Generator().manual_seed(s.seed + 4)
        twin = self._new_model()
        optimizers = [OPTIMIZERS[s.optimizer](list(m.parameters()), s) for m in (self.model, twin)]
        amps = [make_amp(self.precision, self.device) for _ in range(3)]  # model, twin, scores: a loss scaler each
        gce = functools.partial(_gce_criterion, q=s.gce_q)
        # both models see the same batch order, as DCWP trains them side by side
        for _ in range(s.dcwp_pretrain_epochs):
            order = torch.randperm(len(train), generator=gen)
            fit_epoch(self.model, optimizers[0], train, order, self.spec, s.batch_size, aug_gen=gen, amp=amps[0])
            fit_epoch(
                twin, optimizers[1], train, order, self.spec, s.batch_size, aug_gen=gen, amp=amps[1], criterion=gce
            )
        preds, _ = predict(twin, train, self.spec, s.eval_batch_size, self.amp)
        flagged = preds.cpu() != train.y.cpu()
        log.info(
            "DCWP flagged %d of %d training samples (%.1f%%)",
            int(flagged.sum()),
            len(flagged),
            100 * flagged_fraction(flagged),
        )
        dcwp.flagged = flagged
        scores = learn_scores(self.model, self.sparse.params, train, flagged, self.spec, s, gen, amps[2])
        self.sparse.set_masks(top_masks(scores, self.sparse.counts), self.optimizer)
        dcwp.pruned = True

    def _criterion(self, tap: FeatureTap | None) -> Criterion | None:
        """DCWP's retraining loss (cross-entropy + its contrastive term); None: cross-entropy."""
        s = self.settings
        flagged = self.dcwp.flagged if self.dcwp is not None else None
        if tap is None or flagged is None:  # the contrastive term needs DCWP's flagged samples
            return None

        def loss(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.float(), y) + s.dcwp_con_retrain * debiased_contrastive(
                tap.last(), y, flagged[idx.cpu()]
            )

        return loss

    def run_epoch(self) -> dict[str, float]:
        s = self.settings
        start = time.perf_counter()
        if self.dcwp is not None and not self.dcwp.pruned:
            self._learn_dcwp_masks(self.dcwp, self.data.train.without_bias())
        if self.sampler is None:
            self.sampler = make_sampler(
                s.reweight, self.data.train, s.lambda_upweight, s.seed, self._identify_errors, self._pgd_importance
            )
        order = self.sampler.epoch_indices()
        contrastive = self.dcwp is not None and s.dcwp_con_retrain > 0
        with FeatureTap(self.model) if contrastive else nullcontext() as tap:
            train_loss = fit_epoch(
                self.model,
                self.optimizer,
                self.data.train,
                order,
                self.spec,
                s.batch_size,
                self.sparse if self.sparse.enabled else None,
                self.aug_gen,
                self.progress,
                self.amp,
                self._criterion(tap),
            )
        val = evaluate(self.model, self.data.valid, self.spec, s.eval_batch_size, self.amp)
        test = evaluate(self.model, self.data.test, self.spec, s.eval_batch_size, self.amp)
        self.epoch += 1
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val["loss"])
        elif self.scheduler is not None:
            self.scheduler.step()
        record = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "val_worst_group_acc": val["worst"],
            "val_avg_acc": val["avg"],
            "val_conflict_acc": val["conflict"],
            "val_align_acc": val["align"],
            "val_worst_class_bias_acc": val["worst_class_bias"],
            "val_balanced_acc": val["balanced"],
            "val_align_count": val["align_count"],
            "val_conflict_count": val["conflict_count"],
            "val_loss": val["loss"],
            "test_unbiased_acc": test["avg"],
            "test_worst_group_acc": test["worst"],
            "test_conflict_acc": test["conflict"],
            "test_align_acc": test["align"],
            "test_worst_class_bias_acc": test["worst_class_bias"],
            "test_balanced_acc": test["balanced"],
        }
        if selection.better(record, self._incumbent(), s.selection):
            self.best = {
                "best_epoch": self.epoch,
                **{f"best_{k}": v for k, v in record.items() if k.startswith(SPLIT_PREFIXES)},
            }
            self.best_weights = {
                "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
                "masks": {n: m.cpu().clone() for n, m in self.sparse.masks.items()},
            }
        return {
            **record,
            **self.best,
            "density": self.sparse.realised_density(),
            "nonzero_params": self.sparse.nonzero_params(self.model),
            "dense_params": sum(p.numel() for p in self.model.parameters()),
            "inference_flops": self.sparse.inference_flops(self.positions),
            "dense_inference_flops": self.dense_flops,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - start,
        }

    def _incumbent(self) -> dict | None:
        """The selected epoch so far, as a record the selection rule can compare (None before epoch 1)."""
        if not self.best.get("best_epoch"):
            return None
        return {
            "epoch": self.best["best_epoch"],
            **{k.removeprefix("best_"): v for k, v in self.best.items() if k.startswith("best_val_")},
        }

    def state_dict(self) -> dict:
        return {
            "settings": self.settings.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
            "sparse": self.sparse.state_dict(),
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "dcwp": self.dcwp.state_dict() if self.dcwp is not None else None,
            "precision": self.precision,
            "aug_generator": self.aug_gen.get_state(),
            **rng_state(self.device),
            "best": dict(self.best),
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self._load_precision(state)
        self.sparse.load_state_dict(state["sparse"])
        if self.dcwp is not None and state.get("dcwp") is not None:
            self.dcwp.load_state_dict(state["dcwp"])
        if state["sampler"] is not None:
            self.sampler = EpochSampler(len(self.data.train), None, self.settings.seed)
            self.sampler.load_state_dict(state["sampler"])
        self.aug_gen.set_state(state["aug_generator"])
        set_rng_state(state, self.device)
        self.best = dict(state["best"])
        self.best_weights = state.get("best_weights")

    def _load_precision(self, state: dict) -> None:
        """The checkpoint's precision and loss scaler.

        A checkpoint resumes in another precision too: weights and optimizer state are
        fp32 in every precision, so they carry over; a loss scaler the checkpoint lacks
        starts afresh, and one it holds but this run does not use is dropped. A
        checkpoint without a precision predates CPU autocast and stays fp32 on the CPU.
        """
        saved = state.get("precision")
        if saved is None and self.device.type == "cpu" and self.precision != "fp32":
            # written before CPU autocast existed, when the CPU trained in fp32 whatever the setting
            log.warning("this checkpoint predates CPU autocast: it trained in fp32 on the CPU and continues in fp32")
            self.precision, self.amp = "fp32", make_amp("fp32", self.device)
        elif saved is not None and saved != self.precision:
            log.warning(
                "resuming a %s checkpoint in %s after epoch %d: weights and optimizer state carry over%s",
                saved,
                self.precision,
                self.epoch,
                "; the loss scaler starts afresh" if self.amp.scaler else "",
            )
        if self.amp.scaler is not None and state.get("scaler"):
            self.amp.scaler.load_state_dict(state["scaler"])


def data_bytes(data: BiasedData) -> int:
    """Bytes of a dataset's tensors: uint8 images, int64 labels."""
    splits = (data.train, data.valid, data.test)
    return sum(t.nbytes for sp in splits for t in (sp.images, sp.y, sp.b) if t is not None)


def _gce_criterion(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, q: float) -> torch.Tensor:
    return generalized_cross_entropy(logits.float(), y, q)


def train(
    settings: TrainSettings, data: BiasedData | None = None, state: dict | None = None, progress: Progress | None = None
) -> Iterator[dict[str, float]]:
    """Yield one metrics record per epoch, resuming from a checkpoint `state` if given.

    Callers that save checkpoints between epochs use ``Trainer`` directly.
    """
    trainer = Trainer(settings, data, progress)
    if state is not None:
        trainer.load_state_dict(state)
    while trainer.epoch < settings.epochs:
        yield trainer.run_epoch()
