"""Training: every registry entry runs, metrics contract, determinism, exact resume."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, write_png_tree
from rest.core.batches import crop_flip
from rest.core.data import BiasedData
from rest.core.device import make_amp, scaled_step
from rest.core.models import MODELS
from rest.core.reweight import STRATEGIES
from rest.core.sparse import METHODS
from rest.core.train import METRICS, Trainer, group_accuracies, train


def _records(settings, data):
    return list(train(settings, data))


def test_metrics_contract(tiny_data, tiny_settings):
    records = _records(tiny_settings.replace(epochs=1), tiny_data)
    assert set(records[0]) == set(METRICS), "METRICS lists every key of the record, and only those"
    r = records[0]
    assert r["density"] == pytest.approx(0.1, abs=1e-3)
    assert r["nonzero_params"] < r["dense_params"] and r["inference_flops"] < r["dense_inference_flops"]
    valid = tiny_data.valid
    assert r["val_conflict_count"] == int((valid.y != valid.b).sum()) > 0
    assert r["val_align_count"] + r["val_conflict_count"] == len(valid)
    for split in ("val", "test"):
        assert 0 <= r[f"{split}_worst_class_bias_acc"] <= r[f"{split}_balanced_acc"] <= 1
        assert r[f"{split}_worst_class_bias_acc"] <= r[f"{split}_worst_group_acc"]  # finer groups: a lower minimum


def test_same_seed_same_metrics(tiny_data, tiny_settings):
    a, b = _records(tiny_settings, tiny_data), _records(tiny_settings, tiny_data)
    assert a[-1]["train_loss"] == b[-1]["train_loss"]
    assert [r["val_avg_acc"] for r in a] == [r["val_avg_acc"] for r in b]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_model_and_sparse_method_trains(tiny_data, tiny_settings, model, method):
    s = tiny_settings.replace(model=model, sparse=method, width=8, epochs=1)
    (r,) = _records(s, tiny_data)
    assert math.isfinite(r["train_loss"]) and r["density"] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_reweighting_trains(tiny_data, tiny_settings, strategy):
    (r,) = _records(tiny_settings.replace(reweight=strategy, epochs=1), tiny_data)
    assert math.isfinite(r["train_loss"])


def test_jtt_trains_with_bias_labels_withheld_and_oracle_cannot(tiny_data, tiny_settings):
    blind = BiasedData(tiny_data.name, 5.0, tiny_data.train.without_bias(), tiny_data.valid, tiny_data.test)
    (r,) = _records(tiny_settings.replace(reweight="jtt", epochs=1), blind)
    assert math.isfinite(r["train_loss"])
    with pytest.raises(ValueError, match="withheld"):
        _records(tiny_settings.replace(reweight="oracle", epochs=1), blind)


@pytest.mark.parametrize("dataset", ["cmnist", "cifar10c", "bffhq"])
def test_every_folder_dataset_trains(tmp_path, tiny_settings, dataset):
    root = tmp_path / dataset
    classes = 2 if dataset == "bffhq" else 10
    write_png_tree(root, {"align": 2, "conflict": 1, "valid": 1, "test": 1}, pct="0.5pct", classes=classes)
    s = tiny_settings.replace(dataset=dataset, data_root=str(root), conflict_pct=0.5, width=4, epochs=1)
    (r,) = _records(s, None)
    assert math.isfinite(r["train_loss"])


def test_best_metrics_come_from_the_epoch_the_selection_rule_picks(tiny_data, tiny_settings):
    from rest import selection

    records = _records(tiny_settings.replace(epochs=3), tiny_data)
    best = selection.best_epoch(records)
    last = records[-1]
    assert last["best_epoch"] == best["epoch"]
    for key in ("val_loss", "test_worst_group_acc", "test_unbiased_acc", "test_balanced_acc"):
        assert last[f"best_{key}"] == best[key]


def test_group_accuracies():
    #                        aligned: (0,0) (0,0) (1,1) | conflicting: (0,1) (1,0) (1,0)
    y = torch.tensor([0, 0, 1, 0, 1, 1])
    b = torch.tensor([0, 0, 1, 1, 0, 0])
    correct = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    acc = group_accuracies(correct, y, b)
    assert acc["avg"] == pytest.approx(4 / 6)
    assert acc["align"] == pytest.approx(2 / 3) and acc["conflict"] == pytest.approx(2 / 3)
    assert acc["worst"] == pytest.approx(2 / 3)  # REST's worst group: min(aligned, conflicting)
    # (y, b) groups: (0,0) 2/2, (1,1) 0/1, (0,1) 1/1, (1,0) 1/2
    assert acc["worst_class_bias"] == 0.0
    assert acc["balanced"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert (acc["align_count"], acc["conflict_count"]) == (3, 3)


def test_group_accuracies_without_conflicting_samples():
    acc = group_accuracies(torch.tensor([True, False]), torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert math.isnan(acc["conflict"]) and acc["worst"] == 0.5 == acc["align"]
    assert acc["worst_class_bias"] == 0.0 and acc["balanced"] == 0.5 and acc["conflict_count"] == 0


def test_settings_reach_the_model_scheduler_and_masks(tiny_data, tiny_settings):
    s = tiny_settings.replace(model="resnet18", width=4, stem="imagenet", plateau_patience=5, drop_rate_min=0.005)
    trainer = Trainer(s, tiny_data)
    assert trainer.model.stem[0].kernel_size == (7, 7)
    assert trainer.scheduler.patience == 5 and trainer.scheduler.factor == pytest.approx(0.1)
    assert trainer.sparse.drop_rate_min == 0.005
    assert Trainer(tiny_settings, tiny_data).scheduler.patience == 10  # default: PyTorch's


def test_precision_auto_trains_in_fp32_on_cpu_and_bf16_is_honoured(tiny_data, tiny_settings):
    """The shipped default (auto) is fp32 on the CPU, bit for bit; bf16 asked for autocasts there too
    (tests/core/test_device.py trains every method that way)."""
    auto = _records(tiny_settings.replace(epochs=1, device="cpu", precision="auto"), tiny_data)
    fp32 = _records(tiny_settings.replace(epochs=1, device="cpu", precision="fp32"), tiny_data)
    assert auto[0]["train_loss"] == fp32[0]["train_loss"]
    cpu = torch.device("cpu")
    assert make_amp("auto", cpu).dtype is None and make_amp("bf16", cpu).dtype is torch.bfloat16
    assert make_amp("fp16", cpu).scaler is not None and make_amp("bf16", cpu).scaler is None


def test_scaled_step_unscales_gradients_and_reports_skipped_steps():
    """The fp16 path, on a CPU loss scaler: RigL must read true gradients, and a step the
    scaler skips (inf gradients) must not count as a step."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert scaled_step(scaler, (2 * w).sum(), opt)
    assert torch.equal(w.grad, torch.full((3,), 2.0)) and torch.allclose(w.detach(), torch.full((3,), 0.8))
    opt.zero_grad()
    assert not scaled_step(scaler, w.sum() * math.inf, opt)
    assert torch.allclose(w.detach(), torch.full((3,), 0.8))


def test_crop_flip_keeps_shape_dtype_and_pixels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(x, gen, pad=0)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for a, b in zip(x, out):  # pad 0: each image is itself or its mirror
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)


RESUME_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from conftest import TINY
from rest.core.data.base import from_arrays
from rest.core.data.digits import build_colored_digits
from rest.settings import TrainSettings
from rest.core.train import Trainer
data = from_arrays("colored_digits", 5.0, build_colored_digits(5.0, seed=0, per_class=TINY))
settings = TrainSettings.from_dict(json.loads(sys.argv[1]))
trainer = Trainer(settings, data)
trainer.load_state_dict(torch.load(sys.argv[2], weights_only=False))
while trainer.epoch < settings.epochs:
    print(json.dumps(trainer.run_epoch()))
"""


@pytest.mark.parametrize(
    "changes",
    [
        dict(epochs=4, sparse="set", reweight="oracle", schedule="cosine", weight_decay=1e-4),
        dict(epochs=4, sparse="set", reweight="jtt", schedule="cosine", weight_decay=1e-4),
        dict(epochs=2, sparse="dcwp", density=0.1, reweight="jtt", subsample=160),  # DCWP's learned masks and flags
    ],
    ids=["set-oracle", "set-jtt", "dcwp"],
)
def test_resume_in_a_new_process_is_bitwise_identical(tiny_data, tiny_settings, tmp_path, changes):
    s = tiny_settings.replace(**changes)
    straight = _records(s, tiny_data)
    trainer = Trainer(s, tiny_data)
    first = [trainer.run_epoch() for _ in range(s.epochs // 2)]
    torch.save(trainer.state_dict(), tmp_path / "ckpt.pt")
    script = RESUME_SCRIPT.format(tests=str(ROOT / "tests"))
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(s.to_dict()), str(tmp_path / "ckpt.pt")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    resumed = first + [json.loads(line) for line in out.stdout.splitlines()]
    drop = {"epoch_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight
    ]
