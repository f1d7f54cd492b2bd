"""rest.study.memory: the bytes a trial puts on its device, and docs/cluster.md's table made from them."""

import re

import pytest
import torch

from conftest import ROOT
from rest.core.models import build_model
from rest.settings import TrainSettings
from rest.study.memory import (
    COMPONENTS,
    LABEL_BYTES,
    activation_fit,
    memory_table,
    saved_tensor_bytes,
    trial_device_bytes,
)

TABLE = re.compile(r"<!-- memory-table: start -->\n(.*?)<!-- memory-table: end -->", re.S)


def test_the_cluster_doc_table_is_what_the_code_computes():
    doc = TABLE.search((ROOT / "docs" / "cluster.md").read_text())
    assert doc, "docs/cluster.md lost its memory-table markers"
    assert doc.group(1) == memory_table(ROOT / "search_spaces"), "regenerate it: python -m rest.study.memory"


@pytest.mark.parametrize(
    "model,size,stem,precision", [("cnn", 28, "auto", "fp32"), ("resnet18", 32, "imagenet", "bf16")]
)
def test_activations_extrapolate_to_a_real_forward(model, size, stem, precision):
    """The estimate (fake tensors at batch 2 and 4, extrapolated) is a real CPU forward's saved bytes at batch 12,
    within 1 % (fake tensors keep BatchNorm's saved batch statistics in bf16, the CPU in fp32: a few KB)."""
    fixed, per_sample = activation_fit(model, 10, (3, size, size), 8, stem, precision)
    torch.manual_seed(0)
    real = saved_tensor_bytes(
        build_model(model, 10, size, 8, stem=stem),
        torch.rand(12, 3, size, size),
        None if precision == "fp32" else torch.bfloat16,
    )
    assert per_sample > 0 and fixed + 12 * per_sample == pytest.approx(real, rel=1e-2)


def test_trial_bytes_count_every_component():
    s = TrainSettings(dataset="cifar10c", model="resnet18", width=8, batch_size=32, density=0.1, precision="fp32")
    shape = (1000, 3, 32, 32)
    parts = trial_device_bytes(s, shape)
    model = build_model("resnet18", 10, 32, 8)
    params = sum(p.numel() for p in model.parameters())
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert parts["data"] == 1000 * (3 * 32 * 32 + LABEL_BYTES)
    assert parts["gradients"] == parts["optimizer"] == 4 * params  # SGD momentum: one fp32 buffer per parameter
    assert parts["masks"] == weights and parts["stage"] == 0
    assert parts["total"] == sum(parts[k] for k in COMPONENTS)
    assert trial_device_bytes(s.replace(optimizer="adam"), shape)["optimizer"] == 8 * params
    assert trial_device_bytes(s.replace(density=1.0), shape)["masks"] == 0
    assert trial_device_bytes(s.replace(reweight="jtt"), shape)["stage"] == parts["model"] + 8 * params
    bf16 = trial_device_bytes(s.replace(precision="auto"), shape)  # auto on a GPU: bf16
    assert bf16["activations"] < parts["activations"]
    # above data_device_fraction of the device's memory the dataset is streamed: not on the device
    assert trial_device_bytes(s, shape, device_bytes=4 * parts["data"] - 4)["data"] == 0
    assert trial_device_bytes(s, shape, device_bytes=4 * parts["data"])["data"] == parts["data"]  # 25 %: still on it
