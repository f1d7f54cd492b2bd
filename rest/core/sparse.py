"""Exact dynamic sparse training (RigL / SET / static masks).

Conv and linear weights carry a boolean mask with an exact number of active
entries (top-k and shuffled indices, never Bernoulli draws, so the realised
density is the target density to one weight per layer). Biases and normalisation
layers stay dense. Every ``update_frequency`` optimizer steps, up to and including
``t_end_step``, a cosine-decayed fraction of each layer's active weights with the
smallest magnitude is dropped and as many are regrown: by dense-gradient magnitude
(RigL) or uniformly at random (SET). Regrown weights start at zero with zeroed
optimizer state, a weight dropped and regrown in the same update included. After
every optimizer step the masked weights and every optimizer-state tensor of the
same shape (momentum, Adam moments) are multiplied by the mask, so they are
exactly zero, whatever the weight decay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


# ---------------------------------------------------------------- allocation (pure)


def _erk_score(shape: Shape) -> float:
    """Erdos-Renyi-Kernel: (sum of all dims) / (product of all dims)."""
    return sum(shape) / math.prod(shape)


def _er_score(shape: Shape) -> float:
    """Erdos-Renyi: kernel dims ignored, (c_out + c_in) / (c_out * c_in)."""
    return (shape[0] + shape[1]) / (shape[0] * shape[1])


ALLOCATIONS: dict[str, Callable[[Shape], float]] = {"erk": _erk_score, "er": _er_score, "uniform": lambda shape: 1.0}


def erk_densities(shapes: dict[str, Shape], density: float, distribution: str = "erk") -> dict[str, float]:
    """Layer-wise densities whose weight-weighted mean is ``density``.

    Each layer l of n_l weights gets d_l = eps * s_l with s_l its allocation score
    (ERK: sum(shape)/prod(shape), so large layers get sparser). eps solves
    sum_l d_l n_l = density * sum_l n_l. A layer whose d_l would exceed 1 is made
    dense, its weights are taken out of the budget and eps is solved again for the
    others (as in RigL), until no layer exceeds 1.
    """
    if distribution not in ALLOCATIONS:
        raise ValueError(f"unknown distribution '{distribution}'; choose from {', '.join(ALLOCATIONS)}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density {density} is outside (0, 1]")
    if density == 1.0:
        return {n: 1.0 for n in shapes}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    scores = {name: ALLOCATIONS[distribution](tuple(shape)) for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        if not sparse:
            return {n: 1.0 for n in shapes}
        eps = (budget - sum(sizes[n] for n in dense)) / sum(scores[n] * sizes[n] for n in sparse)
        over = [n for n in sparse if eps * scores[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * scores[n] for n in shapes}
        dense.add(max(over, key=lambda n: scores[n]))


def active_counts(shapes: dict[str, Shape], densities: dict[str, float]) -> dict[str, int]:
    """Exact number of active weights per layer (at least one, at most all)."""
    return {n: min(math.prod(s), max(1, round(densities[n] * math.prod(s)))) for n, s in shapes.items()}


def cosine_drop_fraction(step: int, t_end_step: int, drop_rate: float, drop_rate_min: float = 0.0) -> float:
    """Drop fraction at `step`, cosine-decayed from drop_rate to the floor drop_rate_min.

        f(t) = m + (d - m) / 2 * (1 + cos(pi * t / T))   for 0 <= t <= T,   f(t) = m for t > T

    with d = drop_rate, m = drop_rate_min and T = t_end_step, so f(0) = d, f(T/2) = (d + m) / 2
    and f(T) = m. This is PyTorch's CosineAnnealingLR with eta_min = m, which REST's
    CosineDecay uses (m = 0.005, T = all training steps); RigL's schedule is m = 0.
    """
    if step >= t_end_step:
        return drop_rate_min
    return drop_rate_min + (drop_rate - drop_rate_min) / 2.0 * (1.0 + math.cos(math.pi * step / t_end_step))


# ------------------------------------------------------------ drop and grow rules


def drop_magnitude(weight: torch.Tensor, mask: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep the n_keep active weights of largest magnitude."""
    score = torch.where(mask, weight.abs(), torch.full_like(weight, -1.0))
    return top_mask(score, n_keep)


def grow_gradient(weight: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """RigL: regrow where the dense gradient is largest."""
    if grad is None:
        raise RuntimeError("RigL regrowth needs the dense gradient; call SparseMask.step before zero_grad")
    return grad.abs()


def grow_random(weight: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """SET: regrow uniformly at random."""
    return torch.rand(weight.shape, generator=gen).to(weight.device)


DROP = {"magnitude": drop_magnitude}
GROW = {"gradient": grow_gradient, "random": grow_random}
METHODS: dict[str, tuple[str, str] | None] = {
    "rigl": ("magnitude", "gradient"), "set": ("magnitude", "random"), "static": None,
    "dcwp": None,  # masks learned before training (rest.core.dcwp), then fixed
}  # fmt: skip
# Methods whose masks come from a learning stage: the model stays dense until set_masks().
LEARNED_METHOD_NAMES = ("dcwp",)


def _mask_state(optimizer: torch.optim.Optimizer | None, p: nn.Parameter, mask: torch.Tensor) -> None:
    """Multiply every per-weight optimizer-state tensor of p (momentum, Adam moments) by mask."""
    if optimizer is None:
        return
    for value in optimizer.state.get(p, {}).values():
        if torch.is_tensor(value) and value.shape == p.shape:
            value.mul_(mask)


def top_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask of `score`'s shape keeping its `k` largest entries (ties broken by ``torch.topk``)."""
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        mask[torch.topk(score.flatten(), k, sorted=False).indices] = True
    return mask.view_as(score)


# ------------------------------------------------------------------- the masks


def maskable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv and linear weights, by parameter name; everything else stays dense."""
    return {
        f"{mod_name}.weight" if mod_name else "weight": cast(nn.Parameter, mod.weight)  # torch annotates a Tensor
        for mod_name, mod in model.named_modules()
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    }


def output_positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Per maskable layer, how often each weight is used per sample (conv: H_out * W_out)."""
    positions: dict[str, int] = {}
    hooks = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            key = f"{mod_name}.weight" if mod_name else "weight"

            def hook(m, inp, out, key=key):
                positions[key] = out[0].numel() // out.shape[1] if out.dim() > 2 else 1

            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(example[:1])
    model.train(was_training)
    for h in hooks:
        h.remove()
    return positions


class SparseMask:
    """Masks of a model's conv/linear weights plus the topology-update schedule.

    Call ``step(optimizer)`` right after every ``optimizer.step()`` and before
    ``zero_grad()``: it re-applies the masks to weights and optimizer state and,
    when due, drops and regrows connections using the gradients of that step.
    """

    def __init__(
        self,
        model: nn.Module,
        density: float,
        method: str = "rigl",
        distribution: str = "erk",
        update_frequency: int = 100,
        drop_rate: float = 0.5,
        t_end_step: int = 1,
        seed: int = 0,
        drop_rate_min: float = 0.0,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown sparse method '{method}'; choose from {', '.join(METHODS)}")
        self.params = maskable_weights(model)
        self.density = float(density)
        self.method = method
        self.update_frequency = int(update_frequency)
        self.drop_rate = float(drop_rate)
        self.drop_rate_min = float(drop_rate_min)
        self.t_end_step = max(1, int(t_end_step))
        self.steps = 0
        self.updates = 0
        self.generator = torch.Generator().manual_seed(int(seed))
        self.masks: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # exact active weights per layer (empty when dense)
        if self.density < 1.0:
            shapes = {n: tuple(p.shape) for n, p in self.params.items()}
            self.counts = counts = active_counts(shapes, erk_densities(shapes, self.density, distribution))
            if method in LEARNED_METHOD_NAMES:
                return  # dense until the learned masks arrive (set_masks)
            for name, p in self.params.items():
                idx = torch.randperm(p.numel(), generator=self.generator)[: counts[name]]
                mask = torch.zeros(p.numel(), dtype=torch.bool)
                mask[idx] = True
                self.masks[name] = mask.view_as(p).to(p.device)
            self.apply()

    @property
    def enabled(self) -> bool:
        return bool(self.masks)

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero masked weights and their optimizer state (momentum, Adam moments)."""
        for name, mask in self.masks.items():
            p = self.params[name]
            p.mul_(mask)
            _mask_state(optimizer, p, mask)

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Install learned masks (DCWP); each must hold exactly this mask's count for its layer."""
        for name, count in self.counts.items():
            mask = masks[name]
            if mask.shape != self.params[name].shape or int(mask.sum()) != count:
                raise ValueError(
                    f"mask of {name} has {int(mask.sum())} active weights of shape {tuple(mask.shape)}; "
                    f"expected {count} of {tuple(self.params[name].shape)}"
                )
        self.masks = {name: masks[name].bool().to(self.params[name].device) for name in self.counts}
        self.apply(optimizer)

    def update_due(self) -> bool:
        return (
            self.enabled
            and METHODS[self.method] is not None
            and self.steps % self.update_frequency == 0
            and self.steps <= self.t_end_step  # t_end 1.0: updates until the last step, as REST
        )

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.enabled:
            return
        self.steps += 1
        self.apply(optimizer)  # first with the old masks: inactive weights and state -> 0
        if self.update_due():
            self.update_topology(optimizer)  # leaves every weight outside the new mask, and its state, at 0

    @torch.no_grad()
    def update_topology(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Drop the weakest active weights and regrow as many elsewhere, per layer.

        Regrowth may pick a weight dropped in this same update (RigL scores every
        weight outside the kept set). Such a weight restarts like any other regrown
        one: its value and its optimizer state are zeroed, not carried over.
        """
        rule = METHODS[self.method]
        if rule is None:
            raise ValueError(f"sparse method '{self.method}' keeps its masks fixed; it has no topology update")
        drop_name, grow_name = rule
        fraction = cosine_drop_fraction(self.steps, self.t_end_step, self.drop_rate, self.drop_rate_min)
        for name, mask in self.masks.items():
            p = self.params[name]
            n_active = int(mask.sum())
            n_swap = int(round(fraction * n_active))
            if n_swap == 0:
                continue
            kept = DROP[drop_name](p, mask, n_active - n_swap)
            score = GROW[grow_name](p, p.grad, self.generator)
            score = torch.where(kept, torch.full_like(score, -math.inf), score)
            grown = top_mask(score, n_swap)
            # Everything outside `kept` restarts from zero: dropped weights, weights regrown
            # from long-masked positions (already 0) and weights dropped and regrown now,
            # whose momentum would otherwise survive the update.
            p.mul_(kept)
            _mask_state(optimizer, p, kept)
            self.masks[name] = kept | grown
        self.updates += 1
        log.debug("topology update %d at step %d: drop fraction %.4f", self.updates, self.steps, fraction)

    # ------------------------------------------------------------ reporting

    def layer_counts(self) -> dict[str, tuple[int, int]]:
        """(active, total) weights per maskable layer."""
        return {
            n: (int(self.masks[n].sum()) if n in self.masks else p.numel(), p.numel()) for n, p in self.params.items()
        }

    def realised_density(self) -> float:
        counts = self.layer_counts().values()
        return sum(a for a, _ in counts) / sum(t for _, t in counts)

    def nonzero_params(self, model: nn.Module) -> int:
        """Parameters that can be nonzero: active masked weights plus every dense parameter."""
        masked = {id(p) for p in self.params.values()}
        dense = sum(p.numel() for p in model.parameters() if id(p) not in masked)
        return dense + sum(a for a, _ in self.layer_counts().values())

    def inference_flops(self, positions: dict[str, int]) -> int:
        """Multiply-add FLOPs (2 per MAC) of the conv/linear layers at the current masks."""
        return sum(2 * positions[n] * active for n, (active, _) in self.layer_counts().items())

    # --------------------------------------------------------- checkpointing

    def state_dict(self) -> dict:
        return {
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "steps": self.steps,
            "updates": self.updates,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.masks = {n: m.to(self.params[n].device) for n, m in state["masks"].items()}
        self.steps = int(state["steps"])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"])
