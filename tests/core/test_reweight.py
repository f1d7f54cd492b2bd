"""Reweighted sampling: lambda really changes the draws; JTT never reads bias labels."""

import pytest
import torch

from helpers import biased_split
from rest.core.data import DataError
from rest.core.reweight import EpochSampler, expected_weighted_fraction, make_sampler


@pytest.mark.parametrize("lam", [1.0, 10.0, 50.0])
def test_sampled_conflicting_fraction_matches_lambda(lam):
    train = biased_split(2000, 40)
    sampler = make_sampler("oracle", train, lam, seed=0, identify=None)
    expected = lam * 40 / (lam * 40 + 1960)
    assert expected_weighted_fraction(sampler.weights, train.conflicting) == pytest.approx(expected)
    draws = torch.cat([sampler.epoch_indices() for _ in range(20)])
    assert len(draws) == 20 * len(train)
    observed = train.conflicting[draws].float().mean().item()
    assert observed == pytest.approx(expected, abs=4 * (expected * (1 - expected) / len(draws)) ** 0.5)


def test_none_is_a_permutation():
    order = make_sampler("none", biased_split(2000, 40), 30.0, seed=0, identify=None).epoch_indices()
    assert torch.equal(order.sort().values, torch.arange(2000))


def test_jtt_upweights_the_error_set_without_bias_labels():
    train = biased_split(2000, 40)
    seen = []

    def identify(split):
        seen.append(split)
        with pytest.raises(DataError):
            _ = split.conflicting  # the bias labels are hidden from the method
        return split.y == 3  # pretend the ERM model got class 3 wrong

    sampler = make_sampler("jtt", train, 20.0, seed=0, identify=identify)
    assert seen[0].b is None
    assert sampler.weights[train.y == 3].eq(20).all() and sampler.weights[train.y != 3].eq(1).all()


def test_sampler_state_round_trip():
    a = make_sampler("oracle", biased_split(2000, 40), 30.0, seed=4, identify=None)
    a.epoch_indices()
    state = a.state_dict()
    b = EpochSampler(2000, None, seed=0)
    b.load_state_dict(state)
    assert torch.equal(a.epoch_indices(), b.epoch_indices())
