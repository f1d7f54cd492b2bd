"""Invariants of exact dynamic sparsity."""

import math

import pytest
import torch
from torch import nn

from rest.core.dcwp import top_masks
from rest.core.models import build_model
from rest.core.sparse import (
    LEARNED_METHOD_NAMES,
    METHODS,
    SparseMask,
    active_counts,
    cosine_drop_fraction,
    erk_densities,
    maskable_weights,
)


def _model(name="cnn"):
    torch.manual_seed(0)
    return build_model(name, 10, 32, width=8)


def _shapes(model):
    return {n: tuple(p.shape) for n, p in maskable_weights(model).items()}


@pytest.mark.parametrize("distribution", ["erk", "er", "uniform"])
@pytest.mark.parametrize("density", [0.001, 0.05, 0.3, 0.9])
def test_allocation_budget_within_one_weight_per_layer(distribution, density):
    shapes = _shapes(_model("resnet18"))
    densities = erk_densities(shapes, density, distribution)
    counts = active_counts(shapes, densities)
    target = density * sum(math.prod(s) for s in shapes.values())
    assert abs(sum(counts.values()) - target) <= len(shapes)
    assert all(0 < d <= 1 for d in densities.values())


def test_erk_makes_overfull_layers_dense_and_resolves_the_rest():
    shapes = {"small": (4, 3, 3, 3), "big": (512, 512, 3, 3)}
    d = erk_densities(shapes, 0.5)
    assert d["small"] == 1.0
    total = sum(math.prod(s) for s in shapes.values())
    assert d["big"] * math.prod(shapes["big"]) + math.prod(shapes["small"]) == pytest.approx(0.5 * total)


def test_erk_density_one_is_all_dense():
    assert set(erk_densities(_shapes(_model()), 1.0).values()) == {1.0}


def test_schedule_end_points():
    assert cosine_drop_fraction(0, 100, 0.5) == pytest.approx(0.5)
    assert cosine_drop_fraction(50, 100, 0.5) == pytest.approx(0.25)
    assert cosine_drop_fraction(100, 100, 0.5) == 0.0
    assert cosine_drop_fraction(1000, 100, 0.5) == 0.0


def test_schedule_decays_to_its_floor():
    """REST's schedule: cosine from 0.5 to eta_min 0.005 over all steps."""
    assert cosine_drop_fraction(0, 100, 0.5, 0.005) == pytest.approx(0.5)
    assert cosine_drop_fraction(50, 100, 0.5, 0.005) == pytest.approx((0.5 + 0.005) / 2)
    assert cosine_drop_fraction(100, 100, 0.5, 0.005) == pytest.approx(0.005)
    assert cosine_drop_fraction(1000, 100, 0.5, 0.005) == pytest.approx(0.005)
    values = [cosine_drop_fraction(t, 100, 0.5, 0.005) for t in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone, never below the floor
    # PyTorch's CosineAnnealingLR with eta_min, which REST's CosineDecay wraps
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=0.005)
    for t in range(1, 101):
        opt.step()
        sched.step()
        assert cosine_drop_fraction(t, 100, 0.5, 0.005) == pytest.approx(opt.param_groups[0]["lr"])


def test_updates_run_until_the_last_step_with_t_end_one():
    """t_end 1.0 (t_end_step = all steps): the last step is an update, at the floor's fraction."""
    lin = nn.Linear(40, 40, bias=False)
    mask = SparseMask(
        lin,
        0.5,
        "set",
        distribution="uniform",
        update_frequency=2,
        drop_rate=0.5,
        t_end_step=4,
        drop_rate_min=0.1,
        seed=0,
    )
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for step in range(1, 5):
        lin(torch.randn(2, 40)).sum().backward()
        opt.step()
        before = mask.masks["weight"].clone()
        mask.step(opt)
        opt.zero_grad()
        if step == 4:  # fraction 0.1 of 800 active weights: 80 dropped and regrown
            assert int((before & ~mask.masks["weight"]).sum()) <= 80 and not torch.equal(before, mask.masks["weight"])
    assert mask.updates == 2


def _train_steps(model, mask, optimizer, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        nn.functional.cross_entropy(model(x), y).backward()
        before = {n: m.clone() for n, m in mask.masks.items()}
        optimizer.step()
        mask.step(optimizer)
        history.append((before, {n: m.clone() for n, m in mask.masks.items()}))
        optimizer.zero_grad()
    return history


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masked_weights_and_optimizer_state_are_exactly_zero(method, opt):
    model = _model()
    mask = SparseMask(model, 0.1, method, update_frequency=2, t_end_step=100, seed=3)
    if method in LEARNED_METHOD_NAMES:  # DCWP's masks come from its learned scores: any scores will do here
        gen = torch.Generator().manual_seed(0)
        mask.set_masks(top_masks({n: torch.rand(p.shape, generator=gen) for n, p in mask.params.items()}, mask.counts))
    counts = {n: int(m.sum()) for n, m in mask.masks.items()}
    assert counts == mask.counts
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        if opt == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    )
    history = _train_steps(model, mask, optimizer, 7)
    for name, p in mask.params.items():
        m = mask.masks[name]
        assert int(m.sum()) == counts[name], "exact nonzero count per layer"
        assert torch.count_nonzero(p[~m]) == 0
        for value in optimizer.state[p].values():
            if torch.is_tensor(value) and value.shape == p.shape:
                assert torch.count_nonzero(value[~m]) == 0
    changed = any(not torch.equal(b[n], a[n]) for b, a in history for n in b)
    assert changed == (METHODS[method] is not None)


def test_regrown_weights_start_at_zero_with_zero_momentum():
    model = _model()
    mask = SparseMask(model, 0.1, "set", update_frequency=1, t_end_step=100, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    before = {n: m.clone() for n, m in mask.masks.items()}
    optimizer.step()
    mask.step(optimizer)  # step 1: an update (frequency 1)
    grown_any = False
    for name, m in mask.masks.items():
        grown = m & ~before[name]
        grown_any |= bool(grown.any())
        p = mask.params[name]
        assert torch.count_nonzero(p[grown]) == 0
        assert torch.count_nonzero(optimizer.state[p]["momentum_buffer"][grown]) == 0
    assert grown_any


def test_a_weight_dropped_and_regrown_in_one_update_restarts_with_zero_momentum():
    """RigL scores every weight outside the kept set, just-dropped ones included. A weight
    dropped and regrown in the same update must restart like any regrown weight: value 0
    and momentum 0, not the momentum it had built up while active."""
    torch.manual_seed(0)
    lin = nn.Linear(10, 10, bias=False)
    mask = SparseMask(lin, 0.5, "rigl", distribution="uniform", update_frequency=1, drop_rate=0.2, t_end_step=1000)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin(torch.randn(4, 10)).sum().backward()
    opt.step()
    active = mask.masks["weight"].flatten()
    weakest = int(torch.where(active, lin.weight.detach().abs().flatten(), torch.tensor(math.inf)).argmin())
    momentum = opt.state[lin.weight]["momentum_buffer"].flatten()
    assert momentum[weakest] != 0  # the case is meaningful: it has momentum to lose
    lin.weight.grad = torch.zeros(10, 10)
    lin.weight.grad.view(-1)[weakest] = 100.0  # the largest gradient sits on the weight about to be dropped
    mask.step(opt)  # step 1: an update (frequency 1) drops the weakest weights and regrows by gradient
    assert mask.masks["weight"].flatten()[weakest], "dropped and regrown in the same update"
    assert lin.weight.flatten()[weakest] == 0
    assert momentum[weakest] == 0
    assert int(mask.masks["weight"].sum()) == 50


def test_rigl_regrows_where_gradient_is_largest():
    lin = nn.Linear(10, 10, bias=False)
    mask = SparseMask(lin, 0.5, "rigl", distribution="uniform", update_frequency=1, drop_rate=0.2, t_end_step=1000)
    lin.weight.grad = torch.zeros(10, 10)
    inactive = (~mask.masks["weight"]).nonzero()
    target = tuple(inactive[0].tolist())
    lin.weight.grad[target] = 100.0
    mask.steps = 0
    mask.update_topology(None)
    assert mask.masks["weight"][target]
    assert int(mask.masks["weight"].sum()) == 50


def test_density_one_is_dense_and_a_no_op():
    model = _model()
    mask = SparseMask(model, 1.0)
    assert not mask.enabled and mask.realised_density() == 1.0
    assert mask.nonzero_params(model) == sum(p.numel() for p in model.parameters())


def test_state_dict_round_trip_continues_identically():
    def run(split):
        model = _model()
        mask = SparseMask(model, 0.2, "set", update_frequency=2, t_end_step=50, seed=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        _train_steps(model, mask, opt, 3, seed=0)
        if split:
            state, weights = mask.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
            mask = SparseMask(model, 0.2, "set", update_frequency=2, t_end_step=50, seed=99)
            mask.load_state_dict(state)
            model.load_state_dict(weights)
        _train_steps(model, mask, opt, 3, seed=1)
        return mask.masks

    a, b = run(False), run(True)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_flops_scale_with_density():
    from rest.core.sparse import output_positions

    model = _model()
    positions = output_positions(model, torch.zeros(1, 3, 32, 32))
    dense = SparseMask(model, 1.0).inference_flops(positions)
    sparse = SparseMask(model, 0.1, distribution="uniform").inference_flops(positions)
    assert sparse == pytest.approx(0.1 * dense, rel=0.02)
