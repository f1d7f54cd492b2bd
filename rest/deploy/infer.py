"""Fast CPU inference for sparse models: BatchNorm folding and a sparse convolution kernel.

A model trained with masks is as slow as a dense one: its zeros are still multiplied.
``sparse_engine(model)`` returns a copy for inference in which

1. every BatchNorm that follows a convolution is folded into it (``fold_bn``): the
   convolution's output channel o is scaled by s_o = gamma_o / sqrt(var_o + eps) and
   gets the bias beta_o - mean_o * s_o, so scaling keeps every zero weight zero;
2. every convolution and linear layer becomes a ``SparseConv2d`` / ``SparseLinear``,
   which runs the sparse kernel below when the layer's density is at most the measured
   crossover for the batch size (``CROSSOVER``), and the dense PyTorch kernel otherwise.

The sparse kernel is a direct (im2col-free), weight-stationary convolution over the
nonzero weights, written with numba: torch's CSR matmul (``torch.sparse.mm``), COO
matmul and scipy's CSR product were measured slower than it on these shapes (see
``benchmarks/README.md``, "Fast sparse inference"). Activations are kept batch-innermost
in memory (C, H, W, N), so each nonzero weight w[o, c, i, j] costs one vectorised
multiply-add over the N images of a batch, whatever the feature map's size, and the
layer's stride and padding only decide which taps are skipped. A tensor passed between
layers stays a logical N x C x H x W tensor (a permuted view), so ReLU, residual
additions and pooling run unchanged on it; a dense layer gets it contiguous again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Density at or below which the sparse kernel beats PyTorch's dense convolution, by batch
# size (each entry applies from its batch size up to the next). The lowest crossover over
# the layer shapes is kept, so no layer runs slower than dense. Values from a per-shape
# measurement of ResNet-18's 3x3 and 1x1 layers (32 px, both stems) at densities 0.02,
# 0.05, 0.1, 0.15 and batch 1, 16, 64, 256, timed as thread CPU time on one thread
# because other jobs loaded the machine (load 8-12 on 2 cores) on 2026-11-26: batch 256:
# 0.1 (every shape >= 1.4x faster sparse at 0.1, one 0.96x at 0.15); batch 64: 0.05 (3x3
# shapes >= 1.8x); batch 16: none (a 1x1 stride-2 shortcut is 0.68x even at 0.02); batch 1:
# none (the batch-innermost kernel has no vector work at batch 1). Re-measure with
# ``benchmarks/sparse_infer_bench.py`` (part 1 prints the per-shape crossovers and the
# rule they give, and stores them in benchmarks/results/sparse_infer.json).
CROSSOVER: tuple[tuple[int, float], ...] = ((1, 0.0), (64, 0.05), (256, 0.1))


def crossover(batch: int, rule: tuple[tuple[int, float], ...] = CROSSOVER) -> float:
    """The crossover density for a batch size: the entry of the largest threshold <= batch."""
    chosen = 0.0
    for threshold, density in rule:
        if batch >= threshold:
            chosen = density
    return chosen


# ------------------------------------------------------------ BN folding (pure)


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv-then-BN (eval mode) as one convolution, computed in float64.

        bn(conv(x)) = s * (W * x + b - mean) + beta,  s = gamma / sqrt(var + eps)
                    = (s W) * x + (beta + s (b - mean))

    The result is at least fp32: a bf16 or fp16 model's folded weights keep the product's
    precision rather than being rounded to the model's dtype a second time.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it keeps no running statistics")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = torch.zeros_like(s) if bias is None else bias.double()
    folded_w = weight.double() * s.view(-1, *([1] * (weight.dim() - 1)))
    folded_b = bn.bias.double() + s * (b - bn.running_mean.double())
    return folded_w.to(dtype), folded_b.to(dtype)


# ------------------------------------------------------------ the sparse kernel

_KERNEL = None


def _kernel():
    """Compile the numba kernel once per process (cached on disk by numba across processes)."""
    global _KERNEL
    if _KERNEL is None:
        from rest.deploy.kernel import sparse_conv_chwn

        _KERNEL = sparse_conv_chwn
    return _KERNEL


@dataclass
class CSRWeight:
    """The nonzeros of a conv weight O x C x kh x kw, row o's in indptr[o]:indptr[o+1]."""

    indptr: np.ndarray  # int64, O + 1
    channel: np.ndarray  # int64, nnz: input channel c
    tap_h: np.ndarray  # int64, nnz: kernel row i
    tap_w: np.ndarray  # int64, nnz: kernel column j
    values: np.ndarray  # float32, nnz

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> CSRWeight:
        o, c, kh, kw = weight.shape
        flat = weight.detach().reshape(o, -1).cpu().numpy()
        rows, cols = np.nonzero(flat)  # row-major order: grouped by output channel
        indptr = np.zeros(o + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=o), out=indptr[1:])
        cols = cols.astype(np.int64)
        return cls(
            indptr,
            cols // (kh * kw),
            (cols % (kh * kw)) // kw,
            cols % kw,
            np.ascontiguousarray(flat[rows, cols], dtype=np.float32),
        )


def sparse_conv2d(
    x: torch.Tensor,
    csr: CSRWeight,
    bias: torch.Tensor,
    out_channels: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """conv2d(x, W, bias) from W's nonzeros; x is N x C x H x W (any strides), so is the result.

    The result's memory is batch-innermost (C, H, W, N): a following sparse layer reads
    it without a copy.
    """
    import numba

    n, _, h, w = x.shape
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    chwn = x.detach().permute(1, 2, 3, 0).contiguous()  # no copy when x came from a sparse layer
    out = torch.empty((out_channels, ho, wo, n), dtype=torch.float32)
    threads = torch.get_num_threads()
    # numba.config sets its attributes at import time, out of a type checker's sight
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    _kernel()(
        chwn.numpy(),
        csr.indptr,
        csr.channel,
        csr.tap_h,
        csr.tap_w,
        csr.values,
        bias.detach().numpy(),
        out.numpy(),
        stride[0],
        stride[1],
        padding[0],
        padding[1],
    )
    if torch.get_num_threads() != threads:  # numba's OpenMP layer starting up resets the shared OpenMP thread count
        torch.set_num_threads(threads)
    return out.permute(3, 0, 1, 2)


# ------------------------------------------------------------ inference modules


class SparseConv2d(nn.Module):
    """A (BN-folded) convolution that runs sparse when its density is below the crossover."""

    weight: torch.Tensor  # buffers, registered in __init__
    bias: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride,
        padding,
        rule: tuple[tuple[int, float], ...] = CROSSOVER,
    ):
        super().__init__()
        weight = weight.detach().float().contiguous()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().clone())
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.density = float((weight != 0).sum()) / weight.numel()
        self.rule = rule
        self.csr = CSRWeight.from_weight(weight)

    def kernel_for(self, batch: int) -> str:
        return "sparse" if self.density <= crossover(batch, self.rule) else "dense"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_for(x.shape[0]) == "sparse" and x.dtype == torch.float32 and x.device.type == "cpu":
            return sparse_conv2d(
                x,
                self.csr,
                self.bias,
                self.weight.shape[0],
                (self.weight.shape[2], self.weight.shape[3]),
                self.stride,
                self.padding,
            )
        return F.conv2d(x.contiguous(), self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}, density={self.density:.4f}"


class SparseLinear(SparseConv2d):
    """A linear layer as a 1x1 convolution on a 1x1 map (the same kernel and rule)."""

    def __init__(self, linear: nn.Linear, rule: tuple[tuple[int, float], ...] = CROSSOVER):
        super().__init__(linear.weight[:, :, None, None], linear.bias, (1, 1), (0, 0), rule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, None, None])[:, :, 0, 0]


def _conv_with_bn(conv: nn.Conv2d, bn: nn.Module | None, rule) -> SparseConv2d:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"the sparse engine supports plain convolutions only, not {conv}")
    weight, bias = fold_bn(conv.weight, conv.bias, bn) if isinstance(bn, nn.BatchNorm2d) else (conv.weight, conv.bias)
    return SparseConv2d(weight, bias, conv.stride, conv.padding, rule)


def _next_bn(model: nn.Module, conv_name: str) -> str | None:
    """The BatchNorm applied to this convolution's output: its sibling after it in a Sequential,
    or the same-numbered ``bnK`` of a ``convK`` (ResNet blocks)."""
    parent, _, leaf = conv_name.rpartition(".")
    modules = dict(model.named_modules())
    if leaf.startswith("conv"):
        candidate = f"{parent}.bn{leaf[4:]}" if parent else f"bn{leaf[4:]}"
        if isinstance(modules.get(candidate), nn.BatchNorm2d):
            return candidate
    if isinstance(modules.get(parent), nn.Sequential) and leaf.isdigit():
        sibling = f"{parent}.{int(leaf) + 1}" if parent else str(int(leaf) + 1)
        if isinstance(modules.get(sibling), nn.BatchNorm2d):
            return sibling
    return None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def sparse_engine(model: nn.Module, rule: tuple[tuple[int, float], ...] = CROSSOVER) -> nn.Module:
    """An eval-mode copy of `model` with BN folded and sparse-capable conv / linear layers.

    Handles the project's models (``rest.core.models``): a convolution's BatchNorm is the
    module right after it in a Sequential or its same-numbered ``bn`` sibling, as in
    ``BasicBlock``; every folded BatchNorm becomes an Identity.
    """
    engine = copy.deepcopy(model).eval()
    names = [n for n, _ in engine.named_modules()]
    modules = dict(engine.named_modules())
    for name in names:
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            bn_name = _next_bn(engine, name)
            bn = modules[bn_name] if bn_name else None
            _set(engine, name, _conv_with_bn(module, bn, rule))
            if bn_name:
                _set(engine, bn_name, nn.Identity())
        elif isinstance(module, nn.Linear):
            _set(engine, name, SparseLinear(module, rule))
    return engine.eval()


def layer_plan(engine: nn.Module, batch: int) -> list[dict]:
    """Per sparse-capable layer: its name, weight shape, density and the kernel it runs at this batch size."""
    return [
        {"layer": name, "shape": tuple(m.weight.shape), "density": m.density, "kernel": m.kernel_for(batch)}
        for name, m in engine.named_modules()
        if isinstance(m, SparseConv2d)
    ]


ENGINES = {"dense": lambda model: model, "sparse": sparse_engine}


def make_engine(model: nn.Module, engine: str) -> nn.Module:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    return ENGINES[engine](model)


def timed_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, to_input=lambda x: x
) -> tuple[torch.Tensor, float]:
    """Logits of `images` and images per second of the forward passes alone.

    One untimed pass over the first batch comes first (it compiles or loads the sparse
    kernel); input conversion (``to_input``) is not timed.
    """
    import time

    outs, seconds = [], 0.0
    with torch.inference_mode():
        model(to_input(images[:batch_size]))
        for start in range(0, len(images), batch_size):
            x = to_input(images[start : start + batch_size])
            t0 = time.perf_counter()
            outs.append(model(x))
            seconds += time.perf_counter() - t0
    return torch.cat(outs), len(images) / max(seconds, 1e-12)


__all__ = [
    "CROSSOVER",
    "ENGINES",
    "SparseConv2d",
    "SparseLinear",
    "crossover",
    "fold_bn",
    "layer_plan",
    "make_engine",
    "sparse_conv2d",
    "sparse_engine",
    "timed_logits",
]
