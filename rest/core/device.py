"""Every choice that depends on the device, one function each.

The CPU and CUDA paths run the same training code; they differ only in these answers,
and only where the hardware does:

| choice | CPU | CUDA |
|---|---|---|
| precision ``auto`` (``resolve_precision``) | fp32 (bf16/fp16 autocast is slower there) | bf16 |
| autocast (``make_amp``) | ``torch.autocast("cpu", dtype)`` | ``torch.autocast("cuda", dtype)`` |
| fp16 loss scaler (``make_scaler``) | ``GradScaler("cpu")`` | ``GradScaler("cuda")`` |
| memory format ``auto`` (``memory_format``) | contiguous (NCHW) | channels_last |
| dataset placement (``data_placement``) | host memory | on the GPU if it fits a fraction of its memory, else streamed |
| one batch to the device (``to_device``) | no copy | pinned, asynchronous copy |
| RNG state (``rng_state``) | the CPU generator | the CPU generator and every GPU's |

Model weights stay fp32 in every precision (autocast computes in the low precision and
keeps fp32 master weights), so masks, optimizer state and checkpoints are fp32 alike.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rest.settings import SettingsError

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_PRECISION = {"cuda": "bf16", "cpu": "fp32"}  # precision "auto": the faster one on each kind of device
AUTO_MEMORY_FORMAT = {"cuda": "channels_last", "cpu": "contiguous"}  # tensor cores prefer NHWC
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(
            f"device '{name}' was asked for but this machine has no CUDA GPU; use --device cpu (or auto)"
        )
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32, bf16 or fp16: the setting itself, or for ``auto`` the device's default."""
    return AUTO_PRECISION.get(device.type, "fp32") if precision == "auto" else precision


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's narrow exponent flushes small gradients to zero: scale the loss. bf16 has fp32's range."""
    return torch.amp.GradScaler(device.type) if resolve_precision(precision, device) == "fp16" else None


def memory_format(name: str, device: torch.device) -> torch.memory_format:
    """The layout of the model's weights (and so of its activations)."""
    return MEMORY_FORMATS[AUTO_MEMORY_FORMAT.get(device.type, "contiguous") if name == "auto" else name]


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of the device: the GPU's, or the host's RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def data_placement(data_bytes: int, device: torch.device, fraction: float) -> str:
    """ "device" when the dataset takes at most `fraction` of the device's memory, else "host"
    (it stays in host memory and each batch is copied over). On the CPU both are host memory."""
    return "device" if data_bytes <= fraction * device_memory_bytes(device) else "host"


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One batch onto the training device; from host to GPU through pinned memory, without blocking."""
    if batch.device == device or device.type != "cuda" or batch.device.type != "cpu":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


def rng_state(device: torch.device) -> dict:
    """The global RNG states a run draws from (its own generators are saved with their owners)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore ``rng_state``; GPU states only on a GPU (a CUDA checkpoint resumes on a CPU without them)."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])


# ---------------------------------------------------------------- mixed precision


@dataclass
class Amp:
    """Mixed precision of one model: the autocast dtype (None: plain fp32) and fp16's loss scaler."""

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()


def make_amp(precision: str, device: torch.device) -> Amp:
    """Autocast in the resolved precision on any device; fp16 with its own loss scaler."""
    dtype = PRECISIONS[resolve_precision(precision, device)]
    return Amp(None if dtype is torch.float32 else dtype, make_scaler(precision, device))


def scaled_step(scaler: torch.amp.GradScaler, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
    """Backward and optimizer step through a loss scaler; False if the step was skipped.

    The gradients are unscaled in place before the step, so that RigL's regrowth,
    which reads ``p.grad`` after the step, sees true gradients. The scaler skips a step
    whose gradients hold inf or nan, and exactly then lowers its scale.
    """
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale


def backward_step(amp: Amp, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
    """Backward and step, through the loss scaler when there is one; False if the step was skipped."""
    if amp.scaler is not None:
        return scaled_step(amp.scaler, loss, optimizer)
    loss.backward()
    optimizer.step()
    return True
