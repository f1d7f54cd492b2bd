"""Which training samples each epoch draws: ERM, oracle upweighting, JTT, PGD.

A strategy maps the training split to per-sample weights (None = uniform). With
weights, an epoch draws len(train) indices with replacement, sample i with
probability w_i / sum(w): conflicting samples drawn ``lambda_upweight`` times as
often as aligned ones, and the epoch length is unchanged. Without weights, an
epoch is a plain shuffle. Draws come from a seeded generator saved in the
checkpoint.

JTT and PGD ask a stage-1 model about the training split (``Probes``); they are
handed the split with its bias labels withheld, so they cannot read them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rest.core.data import Split

log = logging.getLogger(__name__)

# identify(split_without_bias_labels) -> bool tensor of training samples an ERM model gets wrong
Identify = Callable[[Split], torch.Tensor]
# importance(split_without_bias_labels) -> float tensor, one sampling weight per training sample
Importance = Callable[[Split], torch.Tensor]


@dataclass
class Probes:
    """Stage-1 models a strategy may consult (each trains only when asked)."""

    errors: Identify | None = None  # JTT: the error set of an ERM model
    importance: Importance | None = None  # PGD: per-sample gradient norms of a biased model


def weights_none(train: Split, lam: float, probes: Probes) -> None:
    return None


def weights_oracle(train: Split, lam: float, probes: Probes) -> torch.Tensor:
    """REST: ground-truth conflicting samples get weight lambda, aligned ones 1."""
    return torch.where(train.conflicting, float(lam), 1.0).cpu()


def weights_jtt(train: Split, lam: float, probes: Probes) -> torch.Tensor:
    """JTT: the error set of an ERM model gets weight lambda. Never sees bias labels."""
    if probes.errors is None:
        raise ValueError("reweight jtt needs an error probe (Probes.errors)")
    errors = probes.errors(train.without_bias()).cpu()
    log.info("JTT error set: %d of %d training samples", int(errors.sum()), len(errors))
    return torch.where(errors, float(lam), 1.0)


def weights_pgd(train: Split, lam: float, probes: Probes) -> torch.Tensor:
    """PGD: sampling probability proportional to a biased model's per-sample gradient norm.

    lambda plays no part: PGD's weights are the normalised norms themselves. Never sees bias labels.
    """
    if probes.importance is None:
        raise ValueError("reweight pgd needs an importance probe (Probes.importance)")
    weights = probes.importance(train.without_bias()).cpu().float()
    top = weights.topk(max(1, len(weights) // 100)).values.sum() / weights.sum()
    log.info(
        "PGD importance: the top 1%% of %d training samples hold %.1f%% of the draws", len(weights), 100 * float(top)
    )
    return weights


STRATEGIES: dict[str, Callable[[Split, float, Probes], torch.Tensor | None]] = {
    "none": weights_none,
    "oracle": weights_oracle,
    "jtt": weights_jtt,
    "pgd": weights_pgd,
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


def make_sampler(
    strategy: str,
    train: Split,
    lam: float,
    seed: int,
    identify: Identify | None = None,
    importance: Importance | None = None,
) -> EpochSampler:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown reweighting '{strategy}'; choose from {', '.join(STRATEGIES)}")
    return EpochSampler(len(train), STRATEGIES[strategy](train, lam, Probes(identify, importance)), seed)
