"""DCWP's pruning (Park et al., CVPR 2023): mask scores learned on a frozen network.

DCWP (GitHub `geonyeong-park/DCWP`, `training/pruning_solver.py`) runs four steps:

1. pretrain the model densely, and beside it a biased twin with generalized
   cross-entropy (GCE);
2. flag the training samples the biased twin gets wrong (presumed bias-conflicting;
   no bias labels);
3. with the weights frozen, learn one real score per weight: each step samples a hard
   mask from the scores (Gumbel-sigmoid, straight-through gradient) and minimises
   cross-entropy plus its debiased contrastive term, drawing flagged samples 80 times
   as often;
4. retrain the masked network's weights, with the contrastive term and upweighted
   sampling.

Here step 3 ends with the top-k scores of each layer (ERK counts, as every sparse
method of this project), so the density is the requested one to the weight; DCWP
instead keeps scores >= 0 and steers the density with an L1 weight on the scores.
The loops live in ``rest.core.train.Trainer``; this module holds the pieces and the state.
"""

from __future__ import annotations

import math

import torch

from rest.core.sparse import top_mask

SCORE_INIT = 1.5  # DCWP's initial score (GumbelSigmoidMask: 1.5 everywhere)
TEMPERATURE = 1.0  # Gumbel-sigmoid temperature (DCWP: tau 1)


def gumbel_sigmoid_mask(scores: torch.Tensor, gen: torch.Generator, tau: float = TEMPERATURE) -> torch.Tensor:
    """A hard 0/1 mask drawn with P(keep) = sigmoid(score); gradients flow through the soft sample.

    Logistic noise log(u) - log(1 - u) added to the score's logit is the Gumbel-sigmoid
    (binary Concrete) relaxation; the forward value is the hard threshold at 1/2.
    """
    u = torch.rand(scores.shape, generator=gen).clamp_(1e-10, 1 - 1e-10).to(scores.device)
    soft = torch.sigmoid((scores + torch.log(u) - torch.log1p(-u)) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


def top_masks(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per layer, the `counts[name]` weights of highest score (exact counts; ties by index)."""
    return {name: top_mask(s.detach(), counts[name]) for name, s in scores.items()}


def initial_scores(shapes: dict[str, tuple[int, ...]], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.full(shape, SCORE_INIT, device=device, requires_grad=True) for name, shape in shapes.items()}


class DCWPState:
    """What DCWP keeps across epochs: whether masks were learned, and the flagged samples.

    The flagged set feeds the contrastive term of retraining (and JTT-style upweighting,
    ``reweight: jtt``); the masks themselves live in ``SparseMask``.
    """

    def __init__(self):
        self.flagged: torch.Tensor | None = None  # bool per training sample: the biased twin got it wrong
        self.pruned = False

    def state_dict(self) -> dict:
        return {"flagged": self.flagged, "pruned": self.pruned}

    def load_state_dict(self, state: dict) -> None:
        self.flagged = state["flagged"]
        self.pruned = bool(state["pruned"])


def flagged_fraction(flagged: torch.Tensor) -> float:
    return float(flagged.float().mean()) if len(flagged) else math.nan


def learn_scores(
    model, params: dict, train, flagged: torch.Tensor, spec, s, gen: torch.Generator, amp=None
) -> dict[str, torch.Tensor]:
    """DCWP step 3: Adam on one score per weight of `params` (the model's maskable weights),
    weights frozen, through sampled hard masks; `s` the run's TrainSettings.

    Scores, masks and the masked weights are fp32; under `amp` (a ``rest.core.device.Amp``) the
    forward pass autocasts them, and in fp16 the score gradients go through its own loss scaler.
    """
    import torch.nn.functional as F

    from rest.core.batches import AUGMENTATIONS, to_input
    from rest.core.device import Amp, backward_step, to_device
    from rest.core.losses import FeatureTap, debiased_contrastive
    from rest.core.reweight import EpochSampler

    amp = amp or Amp()
    device = next(model.parameters()).device
    scores = initial_scores({n: tuple(p.shape) for n, p in params.items()}, device)
    optimizer = torch.optim.Adam(list(scores.values()), lr=s.dcwp_mask_lr)
    sampler = EpochSampler(len(train), torch.where(flagged, float(s.dcwp_prune_upweight), 1.0), s.seed + 5)
    augment = AUGMENTATIONS[spec.augment]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.train()
    try:
        with FeatureTap(model) as tap:
            for _ in range(s.dcwp_prune_epochs):
                order = sampler.epoch_indices()
                for i in range(0, len(order), s.batch_size):
                    idx = order[i : i + s.batch_size]
                    images = train.images[idx]
                    images = augment(images, gen) if augment is not None else images
                    x = to_input(to_device(images, device), spec)
                    y = to_device(train.y[idx], device)
                    masked = {n: p * gumbel_sigmoid_mask(scores[n], gen) for n, p in params.items()}
                    with amp.autocast(device):  # the forward only; the losses in fp32
                        logits = torch.func.functional_call(model, masked, (x,), strict=False)
                    loss = F.cross_entropy(logits.float(), y) + s.dcwp_con_prune * debiased_contrastive(
                        tap.last(), y, flagged[idx]
                    )
                    optimizer.zero_grad(set_to_none=True)
                    backward_step(amp, loss, optimizer)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return scores
