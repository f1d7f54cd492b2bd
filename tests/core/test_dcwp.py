"""DCWP: Gumbel-sigmoid masks, learned masks with exact counts, no bias labels.

DCWP's bit-exact resume is a case of test_train's resume test.
"""

import pytest
import torch
from torch import nn

from helpers import without_bias_labels
from rest.core.dcwp import gumbel_sigmoid_mask, top_masks
from rest.core.sparse import SparseMask
from rest.core.train import Trainer


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


def test_dcwp_masks_have_the_exact_counts_at_density_0_1_without_bias_labels(tiny_data, tiny_settings):
    settings = tiny_settings.replace(sparse="dcwp", density=0.1, reweight="jtt", epochs=1, subsample=160)
    trainer = Trainer(settings, without_bias_labels(tiny_data))
    record = trainer.run_epoch()
    layers = trainer.sparse.layer_counts()
    assert {n: a for n, (a, _) in layers.items()} == trainer.sparse.counts
    total = sum(t for _, t in layers.values())
    assert abs(record["density"] * total - 0.1 * total) <= len(layers)  # to one weight per layer
    for name, p in trainer.sparse.params.items():  # masked weights and their optimizer state are exactly zero
        assert p[~trainer.sparse.masks[name]].abs().sum() == 0
    flagged = trainer.dcwp.flagged
    assert flagged.dtype == torch.bool and len(flagged) == len(trainer.data.train)
