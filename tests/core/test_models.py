"""Models: every registry entry builds and runs; REST's ResNet-18 stem and CNN shapes."""

import pytest
import torch
from torch import nn

from rest.core.models import MODELS, STEMS, build_model
from rest.core.sparse import maskable_weights, output_positions


def _maskable(model: nn.Module) -> int:
    return sum(p.numel() for p in maskable_weights(model).values())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("stem", sorted(STEMS))
def test_every_model_and_stem_builds_and_runs(name, stem):
    model = build_model(name, 10, 32, width=8, stem=stem)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_rest_resnet18_at_32_px_has_the_imagenet_stem():
    """REST's resnet18vw(64) on CIFAR-10-C: 7x7 stride-2 conv + max-pool even at 32 px."""
    model = build_model("resnet18", 10, 32, width=64, stem="imagenet")
    assert _maskable(model) == 11_172_032
    positions = output_positions(model, torch.zeros(1, 3, 32, 32))
    assert positions["stem.0.weight"] == 16 * 16
    assert positions["blocks.0.conv1.weight"] == 8 * 8  # after the max-pool


def test_auto_stem_follows_the_image_size():
    def first_conv(image_size):
        return build_model("resnet18", 10, image_size, width=8).stem[0]

    assert first_conv(32).kernel_size == (3, 3) and first_conv(32).stride == (1, 1)
    assert first_conv(64).kernel_size == (7, 7) and first_conv(128).stride == (2, 2)
    assert build_model("resnet18", 2, 128, width=8, stem="cifar").stem[0].kernel_size == (3, 3)


def test_cifar_stem_keeps_the_resolution_the_imagenet_stem_divides_by_four():
    x = torch.zeros(1, 3, 32, 32)
    cifar = output_positions(build_model("resnet18", 10, 32, width=8, stem="cifar"), x)
    imagenet = output_positions(build_model("resnet18", 10, 32, width=8, stem="imagenet"), x)
    assert cifar["blocks.0.conv1.weight"] == 16 * imagenet["blocks.0.conv1.weight"]


def test_cnn_convolutions_have_no_bias_and_ignore_the_stem():
    model = build_model("cnn", 10, 28, stem="imagenet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256]
    assert all(c.bias is None for c in convs)
    assert isinstance(model[1], nn.BatchNorm2d)  # BatchNorm right after each conv carries the shift
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in build_model("cnn", 10, 28, stem="cifar").parameters()
    )


def test_unknown_names_list_the_options():
    with pytest.raises(ValueError, match="choose from cnn, resnet18"):
        build_model("vgg", 10, 32)
    with pytest.raises(ValueError, match="choose from auto, imagenet, cifar"):
        build_model("resnet18", 10, 32, stem="tiny")
