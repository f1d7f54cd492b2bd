"""Which training samples each epoch draws: ERM, oracle upweighting, JTT.

A strategy maps the training split to per-sample weights (None = uniform). With
weights, an epoch draws len(train) indices with replacement, sample i with
probability w_i / sum(w): conflicting samples drawn ``lambda_upweight`` times as
often as aligned ones, and the epoch length is unchanged. Without weights, an
epoch is a plain shuffle. Draws come from a seeded generator saved in the
checkpoint.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from .data import Split

log = logging.getLogger(__name__)

# identify(split_without_bias_labels) -> bool tensor of training samples an ERM model gets wrong
Identify = Callable[[Split], torch.Tensor]


def weights_none(train: Split, lam: float, identify: Identify) -> None:
    return None


def weights_oracle(train: Split, lam: float, identify: Identify) -> torch.Tensor:
    """REST: ground-truth conflicting samples get weight lambda, aligned ones 1."""
    return torch.where(train.conflicting, float(lam), 1.0).cpu()


def weights_jtt(train: Split, lam: float, identify: Identify) -> torch.Tensor:
    """JTT: the error set of an ERM model gets weight lambda. Never sees bias labels."""
    errors = identify(train.without_bias()).cpu()
    log.info("JTT error set: %d of %d training samples", int(errors.sum()), len(errors))
    return torch.where(errors, float(lam), 1.0)


STRATEGIES: dict[str, Callable[[Split, float, Identify], torch.Tensor | None]] = {
    "none": weights_none,
    "oracle": weights_oracle,
    "jtt": weights_jtt,
}


def expected_weighted_fraction(weights: torch.Tensor, selected: torch.Tensor) -> float:
    """Probability that one draw lands in `selected` (e.g. the conflicting samples)."""
    return float(weights[selected].sum() / weights.sum())


class EpochSampler:
    """Index order of each training epoch, reproducible and checkpointable."""

    def __init__(self, n: int, weights: torch.Tensor | None, seed: int):
        self.n = n
        self.weights = weights
        self.generator = torch.Generator().manual_seed(int(seed))

    def epoch_indices(self) -> torch.Tensor:
        if self.weights is None:
            return torch.randperm(self.n, generator=self.generator)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator)

    def state_dict(self) -> dict:
        return {"weights": self.weights, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.weights = state["weights"]
        self.generator.set_state(state["generator"])


def make_sampler(strategy: str, train: Split, lam: float, seed: int, identify: Identify) -> EpochSampler:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown reweighting '{strategy}'; choose from {', '.join(STRATEGIES)}")
    return EpochSampler(len(train), STRATEGIES[strategy](train, lam, identify), seed)
