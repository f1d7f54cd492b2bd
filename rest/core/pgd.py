"""PGD's sample importance (Ahn et al., ICLR 2023): per-sample gradient norms, in closed form.

PGD's code (`trainer/learner.py`, `train_ours`) takes, after training a biased model,
the gradient of each training sample's cross-entropy with respect to the weight of the
last (fc) layer, one backward pass per sample, and samples training data with
probability proportional to its p-norm. For that layer the gradient has a closed form,
so here it is computed for a whole batch at once, with the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_layer_grad_norms(
    logits: torch.Tensor, features: torch.Tensor, y: torch.Tensor, p: float = 0.7
) -> torch.Tensor:
    """Per-sample p-norm of d CE(W h + b, y) / d W, without a backward pass.

    For logits z = W h + b the gradient is the outer product (softmax(z) - onehot(y)) h^T,
    and the entrywise p-norm of an outer product factorises:
    ||g h^T||_p = (sum_ij |g_i|^p |h_j|^p)^(1/p) = ||g||_p ||h||_p  (any p > 0).
    """
    g = torch.softmax(logits.float(), dim=1) - F.one_hot(y, logits.shape[1]).float()
    return torch.linalg.vector_norm(g, ord=p, dim=1) * torch.linalg.vector_norm(features.float(), ord=p, dim=1)


def importance(norms: torch.Tensor, floor: float = 1e-8) -> torch.Tensor:
    """Sampling probabilities proportional to the gradient norms (PGD clamps them at 1e-8)."""
    norms = norms.double().clamp(min=floor)
    return (norms / norms.sum()).float()


@torch.inference_mode()
def grad_norms(model, split, spec, batch_size: int, p: float, amp=None) -> torch.Tensor:
    """Every sample's last-layer gradient p-norm, in eval mode as PGD computes it (batched closed form).

    The forward pass runs in the run's precision (`amp`, a ``rest.core.device.Amp``); the
    norms themselves are computed in fp32 from its logits and features, whatever their dtype.
    """
    from rest.core.batches import to_input
    from rest.core.device import Amp, to_device
    from rest.core.losses import FeatureTap

    amp = amp or Amp()
    device = next(model.parameters()).device
    model.eval()
    norms = []
    with FeatureTap(model) as tap:
        for start in range(0, len(split), batch_size):
            x = to_input(to_device(split.images[start : start + batch_size], device), spec)
            y = to_device(split.y[start : start + batch_size], device)
            with amp.autocast(device):
                logits = model(x)
            norms.append(last_layer_grad_norms(logits, tap.last(), y, p).cpu())
    model.train()
    return torch.cat(norms)
