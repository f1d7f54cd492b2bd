"""PGD: per-sample gradient norms against torch.func, importance sampling without bias labels."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import biased_split, without_bias_labels
from rest.core.data import DataError
from rest.core.pgd import importance, last_layer_grad_norms
from rest.core.reweight import make_sampler
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


def test_pgd_samples_by_importance_without_bias_labels():
    train = biased_split(200, 10)
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


def test_pgd_trains_with_bias_labels_withheld_and_upweights_conflicting_samples(tiny_data, tiny_settings):
    settings = tiny_settings.replace(reweight="pgd", density=1.0, epochs=1, subsample=160, pgd_epochs=8, batch_size=32)
    trainer = Trainer(settings, without_bias_labels(tiny_data))
    assert math.isfinite(trainer.run_epoch()["train_loss"])
    conflicting = tiny_data.subsample(160).train.conflicting  # read here only, after training
    weights = trainer.sampler.weights
    assert weights.sum() == pytest.approx(1.0, rel=1e-4)
    assert weights[conflicting].mean() > weights[~conflicting].mean()  # misfit samples have the larger gradients
