"""Batches as the models see them: normalised float input and the training augmentation (pure functions)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rest.core.data import DatasetSpec


def to_input(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float."""
    x = images.float().div_(255.0)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
        x = x.sub_(mean).div_(std)
    return x


def crop_flip(images: torch.Tensor, gen: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop (zero padding `pad`) and horizontal flip, on uint8 tensors."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(images.device)
    flip = torch.rand(n, generator=gen).to(images.device) < 0.5
    rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]  # n x h
    cols = torch.arange(w, device=images.device)[None, :].expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # n x w
    idx_n = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None] = {
    "none": None,
    "crop_flip": crop_flip,
}
