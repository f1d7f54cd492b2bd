"""PGD and DCWP: their maths against independent references, no bias labels, exact masks.

DCWP's bit-exact resume is a case of test_train's resume test.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rest.core.data import BiasedData, DataError, Split
from rest.core.dcwp import gumbel_sigmoid_mask, top_masks
from rest.core.losses import debiased_contrastive, generalized_cross_entropy
from rest.core.pgd import importance, last_layer_grad_norms
from rest.core.reweight import make_sampler
from rest.core.sparse import SparseMask
from rest.core.train import Trainer


@pytest.mark.parametrize("p", [0.7, 1.0, 2.0])
def test_closed_form_grad_norms_match_per_sample_autograd(p):
    """The batched closed form equals torch.func per-sample gradients of the fc weight."""
    torch.manual_seed(0)
    fc = nn.Linear(6, 4)
    h, y = torch.randn(5, 6), torch.randint(0, 4, (5,))

    def loss(weight, h1, y1):
        return F.cross_entropy(torch.func.functional_call(fc, {"weight": weight}, (h1[None],)), y1[None])

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(fc.weight.detach(), h, y)
    expected = torch.linalg.vector_norm(grads.flatten(1), ord=p, dim=1)
    assert torch.allclose(last_layer_grad_norms(fc(h), h, y, p), expected, rtol=1e-5)


def test_importance_is_proportional_to_the_norms():
    w = importance(torch.tensor([1.0, 3.0, 0.0]))
    assert torch.allclose(w, torch.tensor([0.25, 0.75, 1e-8 / 4]), atol=1e-9) and w.sum() == pytest.approx(1.0)


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


def test_gumbel_masks_keep_with_sigmoid_probability_and_pass_gradients():
    scores = torch.tensor([-2.0, 0.0, 2.0]).repeat(20000, 1).requires_grad_(True)
    mask = gumbel_sigmoid_mask(scores, torch.Generator().manual_seed(0))
    values = mask.detach()
    assert torch.all((values.abs() < 1e-6) | ((values - 1).abs() < 1e-6))  # hard 0/1 up to straight-through rounding
    assert torch.allclose(values.round().mean(0), torch.sigmoid(torch.tensor([-2.0, 0.0, 2.0])), atol=0.015)
    mask.sum().backward()
    assert scores.grad.abs().sum() > 0


def test_learned_masks_need_the_exact_counts():
    lin = nn.Linear(10, 10, bias=False)
    mask = SparseMask(lin, 0.3, "dcwp", distribution="uniform")
    assert not mask.enabled and lin.weight.count_nonzero() == 100  # dense until learned
    scores = {"weight": torch.arange(100.0).view(10, 10)}
    mask.set_masks(top_masks(scores, mask.counts))
    assert int(mask.masks["weight"].sum()) == 30 and mask.masks["weight"].flatten()[70:].all()
    assert lin.weight.count_nonzero() <= 30
    with pytest.raises(ValueError, match="expected 30"):
        mask.set_masks({"weight": torch.ones(10, 10, dtype=torch.bool)})


def _split(n=200, n_conflict=10):
    y = torch.arange(n) % 10
    b = y.clone()
    b[:n_conflict] = (y[:n_conflict] + 1) % 10
    return Split(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), y, b)


def test_pgd_samples_by_importance_without_bias_labels():
    train = _split()
    seen = []

    def importance_fn(split):
        seen.append(split)
        with pytest.raises(DataError):
            _ = split.conflicting  # the bias labels are hidden from the method
        return torch.where(split.y == 3, 0.2, 0.01)  # pretend class 3 has the large gradients

    sampler = make_sampler("pgd", train, 30.0, seed=0, importance=importance_fn)
    assert seen[0].b is None
    assert torch.allclose(sampler.weights, torch.where(train.y == 3, 0.2, 0.01))
    draws = torch.cat([sampler.epoch_indices() for _ in range(10)])
    assert (train.y[draws] == 3).float().mean() > 0.5  # 20 x 0.2 against 180 x 0.01


def _blind(data):
    return BiasedData(data.name, 5.0, data.train.without_bias(), data.valid, data.test)


def test_pgd_trains_with_bias_labels_withheld_and_upweights_conflicting_samples(tiny_data, tiny_settings):
    settings = tiny_settings.replace(reweight="pgd", density=1.0, epochs=1, subsample=160, pgd_epochs=8, batch_size=32)
    trainer = Trainer(settings, _blind(tiny_data))
    assert math.isfinite(trainer.run_epoch()["train_loss"])
    conflicting = tiny_data.subsample(160).train.conflicting  # read here only, after training
    weights = trainer.sampler.weights
    assert weights.sum() == pytest.approx(1.0, rel=1e-4)
    assert weights[conflicting].mean() > weights[~conflicting].mean()  # misfit samples have the larger gradients


def test_dcwp_masks_have_the_exact_counts_at_density_0_1_without_bias_labels(tiny_data, tiny_settings):
    settings = tiny_settings.replace(sparse="dcwp", density=0.1, reweight="jtt", epochs=1, subsample=160)
    trainer = Trainer(settings, _blind(tiny_data))
    record = trainer.run_epoch()
    layers = trainer.sparse.layer_counts()
    assert {n: a for n, (a, _) in layers.items()} == trainer.sparse.counts
    total = sum(t for _, t in layers.values())
    assert abs(record["density"] * total - 0.1 * total) <= len(layers)  # to one weight per layer
    for name, p in trainer.sparse.params.items():  # masked weights and their optimizer state are exactly zero
        assert p[~trainer.sparse.masks[name]].abs().sum() == 0
    flagged = trainer.dcwp.flagged
    assert flagged.dtype == torch.bool and len(flagged) == len(trainer.data.train)
