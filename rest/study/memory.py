"""Bytes a training trial puts on its device, by component: what to know before packing trials on a GPU.

``trial_device_bytes(settings, dataset_shape)`` adds up, for one trial at its batch size:

| component | what it counts |
|---|---|
| data | every split's uint8 images and int64 labels (y, b), when the dataset sits on the device (else 0) |
| model | parameters and buffers, fp32 in every precision (autocast keeps fp32 master weights) |
| gradients | one fp32 gradient per parameter (RigL reads dense gradients, so every weight has one) |
| optimizer | SGD's momentum (one tensor per parameter) or Adam's two moments |
| masks | one bool per conv/linear weight when density < 1 |
| activations | the tensors autograd saves for backward in one training step (see below) |
| batch | the uint8 batch and its fp32 model input |
| stage | the first epoch's extra model (JTT's, PGD's dense model; DCWP's GCE twin, mask scores), optimizer state |

Activations are measured, not modelled: one training-mode forward pass on the CPU (on
PyTorch's fake tensors: shapes and dtypes without arithmetic), in the precision the trial
autocasts to on CUDA, with a ``saved_tensors_hooks`` that records
every distinct storage autograd keeps for backward (parameters excluded: they are
``model``). It runs at batch 2 and batch 4; the difference gives the bytes per sample, the
rest is what does not grow with the batch (autocast's low-precision weight copies), and
the two are extrapolated linearly to the trial's batch size. fp16 saves what bf16 saves
(both 2 bytes per element), so fp16 is measured as bf16. Fake tensors keep BatchNorm's saved
batch statistics in the input's dtype where the CPU and cuDNN keep fp32: a few KB per model.

Not counted: the CUDA context (a few hundred MB per process, so per trial), cuDNN
workspaces, the caching allocator's reserve and fragmentation, and the transient
gradients of activations during backward. The total is a floor, not a ceiling.
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path

import torch
from torch import nn

from rest.settings import TrainSettings

DataShape = tuple[int, int, int, int]  # images over every split, channels, height, width
LABEL_BYTES = 16  # y and b, int64 each
COMPONENTS = ("data", "model", "gradients", "optimizer", "masks", "activations", "batch", "stage")
OPTIMIZER_STATES = {"sgd": lambda s: 1 if s.momentum else 0, "adam": lambda s: 2}  # fp32 tensors per parameter
MEASURE_BATCHES = (2, 4)  # batch 1 cannot train BatchNorm on a 1x1 feature map


def saved_tensor_bytes(
    model: nn.Module, example: torch.Tensor, dtype: torch.dtype | None, state: dict[str, torch.Tensor] | None = None
) -> int:
    """Bytes of the distinct storages autograd saves for backward in one training forward, parameters
    excluded; `state` replaces the model's parameters and buffers (``torch.func.functional_call``)."""
    state = dict(model.named_parameters()) | dict(model.named_buffers()) if state is None else state
    params = {p.untyped_storage()._cdata for p in state.values()}  # _cdata: the storage's identity
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()
        return t

    model.train()
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        out = torch.func.functional_call(model, state, (example,))
    del out  # the graph (and every saved tensor) goes with it
    return sum(saved.values())


@functools.lru_cache(maxsize=32)
def activation_fit(
    model: str, num_classes: int, shape: tuple[int, int, int], width: int, stem: str, precision: str
) -> tuple[int, int]:
    """(fixed bytes, bytes per sample) of saved activations, from a CPU forward at two batch sizes."""
    from rest.core.device import PRECISIONS
    from rest.core.models import build_model

    dtype = PRECISIONS["bf16" if precision == "fp16" else precision]
    net = build_model(model, num_classes, shape[1], width, stem=stem)
    state = dict(net.named_parameters()) | dict(net.named_buffers())
    with _shapes_only() as fake:
        if fake is not None:
            state = {k: fake.from_tensor(v) for k, v in state.items()}
        small, large = (
            saved_tensor_bytes(net, torch.zeros(n, *shape), None if dtype is torch.float32 else dtype, state)
            for n in MEASURE_BATCHES
        )
    per_sample = (large - small) // (MEASURE_BATCHES[1] - MEASURE_BATCHES[0])
    return small - per_sample * MEASURE_BATCHES[0], per_sample


def _shapes_only():
    """PyTorch's fake tensors: every op runs its CPU dispatch (autocast included) on shapes and
    dtypes alone, with no arithmetic, so ResNet-18 at 128 px measures in about a second.
    Without them (a PyTorch that moved the private module) the same forward runs for real."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:  # pragma: no cover - the same numbers, only slower
        return contextlib.nullcontext()
    return FakeTensorMode()


def _model(settings: TrainSettings, image_size: int) -> nn.Module:
    from rest.core.data import get_dataset_spec
    from rest.core.models import build_model

    spec = get_dataset_spec(settings.dataset)
    return build_model(
        settings.model or spec.default_model, spec.num_classes, image_size, settings.width, stem=settings.stem
    )


def trial_device_bytes(
    settings: TrainSettings, dataset_shape: DataShape, device: str = "cuda", device_bytes: int | None = None
) -> dict[str, int]:
    """Bytes one trial puts on its device, per component (``COMPONENTS``) and in ``total``.

    `device` resolves ``precision: auto`` (bf16 on cuda); with `device_bytes` (the device's
    memory) the dataset counts only if ``data_device_fraction`` lets it onto the device.
    """
    from rest.core.data import get_dataset_spec
    from rest.core.device import resolve_precision
    from rest.core.sparse import maskable_weights

    n, c, h, w = dataset_shape
    spec = get_dataset_spec(settings.dataset)
    model = _model(settings, h)
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() for p in maskable_weights(model).values())
    model_bytes = 4 * params + sum(b.nbytes for b in model.buffers())
    optimizer = 4 * params * OPTIMIZER_STATES[settings.optimizer](settings)
    data = n * (c * h * w + LABEL_BYTES)
    if device_bytes is not None and data > settings.data_device_fraction * device_bytes:
        data = 0  # streamed from host memory
    precision = resolve_precision(settings.precision, torch.device(device))
    fixed, per_sample = activation_fit(
        settings.model or spec.default_model, spec.num_classes, (c, h, w), settings.width, settings.stem, precision
    )
    parts = {
        "data": data,
        "model": model_bytes,
        "gradients": 4 * params,
        "optimizer": optimizer,
        "masks": weights if settings.density < 1.0 else 0,
        "activations": fixed + per_sample * settings.batch_size,
        "batch": settings.batch_size * c * h * w * 5,  # uint8 + fp32
        "stage": _stage_bytes(settings, model_bytes + 4 * params + optimizer, weights),
    }
    return {**parts, "total": sum(parts.values())}


def _stage_bytes(settings: TrainSettings, one_model: int, weights: int) -> int:
    """The first epoch's second model (with gradients and optimizer state); DCWP adds its scores
    with their gradients and Adam's two moments (16 bytes per maskable weight)."""
    if settings.sparse == "dcwp" and settings.density < 1.0:
        return one_model + 16 * weights
    return one_model if settings.reweight in ("jtt", "pgd") else 0


# ------------------------------------------------------------ the table of docs/cluster.md

# The studies' datasets: images over train + valid + test, and the study file whose settings apply.
# CMNIST: 60,000 MNIST training images (train + valid) and 10,000 test (docs/datasets.md);
# CIFAR-10-C: 45,000 + 5,000 + 10,000 (docs/datasets.md); BFFHQ: 19,200 + 1,000 + 1,000 (its release).
STUDY_DATASETS = {
    "BFFHQ": ((21_200, 3, 128, 128), "rest_bffhq.yaml"),
    "CIFAR-10-C": ((60_000, 3, 32, 32), "rest_cifar10c.yaml"),
    "CMNIST": ((70_000, 3, 28, 28), "rest_cmnist.yaml"),
}
TABLE_DENSITY = 0.05  # any density below 1 costs the same: masks are dense bool tensors
MIB = 2**20


def study_settings(study_file: Path) -> TrainSettings:
    """The fixed training settings of a shipped study file, at a sparse density."""
    from rest.study.space import load_space

    return load_space(study_file)[0].train.replace(density=TABLE_DENSITY)


def memory_table(studies_dir: Path) -> str:
    """docs/cluster.md's table: MiB per trial for each study dataset, in fp32 and bf16."""
    head = (
        "| dataset (study file) | model, batch | data | model + grads + optimizer + masks | activations fp32 / bf16 "
        "| first-epoch stage | total fp32 / bf16 |\n|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, (shape, study) in STUDY_DATASETS.items():
        base = study_settings(studies_dir / study)
        fp32, bf16 = (trial_device_bytes(base.replace(precision=p), shape) for p in ("fp32", "bf16"))
        state = sum(fp32[k] for k in ("model", "gradients", "optimizer", "masks"))
        rows.append(
            f"| {name} (`{study}`) | {base.model}, {base.batch_size} | {_mib(fp32['data'])} | {_mib(state)} "
            f"| {_mib(fp32['activations'])} / {_mib(bf16['activations'])} | {_mib(fp32['stage'])} "
            f"| {_mib(fp32['total'])} / {_mib(bf16['total'])} |"
        )
    return head + "\n".join(rows) + "\n"


def _mib(n: int) -> str:
    return f"{math.ceil(n / MIB):,}"


if __name__ == "__main__":  # python -m rest.study.memory: the table for docs/cluster.md
    print(memory_table(Path(__file__).resolve().parents[1] / "search_spaces"), end="")
