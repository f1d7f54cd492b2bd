"""Losses of the stage-1 models and of DCWP: generalized cross-entropy, debiased contrastive.

Both are written out here rather than imported: neither is in torch, and each is
a few lines whose exact form the methods depend on (docs/fidelity.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def generalized_cross_entropy(logits: torch.Tensor, y: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Mean GCE (Zhang & Sabuncu 2018), as LfF, PGD and DCWP train their biased models.

    L_q = (1 - p_y^q) / q has the gradient p_y^q * dCE. It is computed as CE weighted by
    the detached p_y^q (times q, as LfF's code does), which has that same gradient up to
    the constant q: easy (bias-aligned) samples dominate, so the model learns the shortcut.
    """
    ce = F.cross_entropy(logits, y, reduction="none")
    p_y = torch.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1).detach()
    return (ce * p_y.pow(q) * q).mean()


def debiased_contrastive(
    features: torch.Tensor, y: torch.Tensor, flagged: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """DCWP's supervised contrastive term over one batch.

    Features are L2-normalised; the positives of anchor i are the other samples j of its
    class where i or j is flagged (a presumed bias-conflicting sample), so same-class pairs
    of two bias-aligned samples are never pulled together. Every other sample is in the
    denominator. Anchors without a positive are left out; a batch without any gives 0.

        L = - mean_i  1/|P(i)|  sum_{j in P(i)}  log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) )
    """
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.T / temperature
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()  # numerical stability; cancels in the ratio
    n = len(y)
    not_self = ~torch.eye(n, dtype=torch.bool, device=f.device)
    flagged = flagged.to(f.device).bool()
    positive = (y[:, None] == y[None, :]) & (flagged[:, None] | flagged[None, :]) & not_self
    anchors = positive.any(dim=1)
    if not bool(anchors.any()):
        return sim.sum() * 0.0
    log_prob = sim - torch.log((sim.exp() * not_self).sum(dim=1, keepdim=True))
    mean_positive = (positive * log_prob).sum(dim=1)[anchors] / positive.sum(dim=1)[anchors]
    return -mean_positive.mean()


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer: the model's last nn.Linear."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear classifier layer")
    return linears[-1]


class FeatureTap:
    """Holds the input of the model's classifier layer (the penultimate features) of the last forward."""

    def __init__(self, model: nn.Module):
        self.features: torch.Tensor | None = None
        self._hook = last_linear(model).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = inputs[0]

    def last(self) -> torch.Tensor:
        """The features of the last forward pass."""
        if self.features is None:
            raise RuntimeError("FeatureTap.last() before the model's first forward pass")
        return self.features

    def close(self) -> None:
        self._hook.remove()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
