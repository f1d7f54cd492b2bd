"""The debiasing losses against independent references: GCE's gradient, DCWP's contrastive loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from rest.core.losses import debiased_contrastive, generalized_cross_entropy


def test_gce_gradient_is_cross_entropy_gradient_times_q_p_to_the_q():
    torch.manual_seed(0)
    logits, y, q = torch.randn(3, 5, requires_grad=True), torch.tensor([0, 2, 4]), 0.7
    (g_gce,) = torch.autograd.grad(generalized_cross_entropy(logits, y, q), logits)
    p_y = torch.softmax(logits, 1)[torch.arange(3), y].detach()
    (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="none").mul(q * p_y**q).mean(), logits)
    assert torch.allclose(g_gce, g_ce)


def _supcon_reference(features, y, flagged, t):
    """Anchor by anchor, straight from the formula (DCWP's positives: same class, either flagged)."""
    f = F.normalize(features, dim=1)
    terms = []
    for i in range(len(y)):
        pos = [j for j in range(len(y)) if j != i and y[j] == y[i] and (flagged[i] or flagged[j])]
        if not pos:
            continue
        denom = sum(math.exp(float(f[i] @ f[k]) / t) for k in range(len(y)) if k != i)
        terms.append(-sum(float(f[i] @ f[j]) / t - math.log(denom) for j in pos) / len(pos))
    return sum(terms) / len(terms) if terms else 0.0


def test_debiased_contrastive_matches_the_formula():
    torch.manual_seed(1)
    features, y = torch.randn(8, 4), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    flagged = torch.tensor([1, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    got = float(debiased_contrastive(features, y, flagged, temperature=0.5))
    assert got == pytest.approx(_supcon_reference(features, y, flagged, 0.5), rel=1e-5)
    assert float(debiased_contrastive(features, y, torch.zeros(8, dtype=torch.bool))) == 0.0  # aligned pairs never pull
