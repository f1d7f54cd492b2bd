"""Model registry: REST's small CNN for digits and a width-parameterised ResNet-18 (with a stem registry)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def cnn(num_classes: int, image_size: int, width: int = 64, stem: str = "auto") -> nn.Module:
    """REST's 3-layer CNN: three 4x4 stride-2 convs (64, 128, 256), BN, ReLU, pool, fc.

    The convolutions have no bias, as in REST: the BatchNorm after each one has its own
    shift, so a conv bias would be a redundant (and dense, never masked) parameter.
    """
    del image_size, width, stem  # global pooling makes it size-agnostic; channels fixed as in REST
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in (64, 128, 256):
        layers += [
            nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def imagenet_stem(width: int, image_size: int) -> nn.Module:
    """7x7 stride-2 conv and 3x3 stride-2 max-pool: a 4x smaller feature map (REST at every size)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )


def cifar_stem(width: int, image_size: int) -> nn.Module:
    """3x3 stride-1 conv, no pooling: keeps the resolution of small (32 px) images."""
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


def auto_stem(width: int, image_size: int) -> nn.Module:
    """The CIFAR stem below 64 px, the ImageNet stem from 64 px on."""
    return (imagenet_stem if image_size >= 64 else cifar_stem)(width, image_size)


STEMS: dict[str, Callable[[int, int], nn.Module]] = {"auto": auto_stem, "imagenet": imagenet_stem, "cifar": cifar_stem}


class ResNet18(nn.Module):
    """ResNet-18 with a base width parameter and a choice of stem.

    Written here rather than taken from torchvision because torchvision's ResNet
    fixes the base width at 64 and its stem. REST's code uses the ImageNet stem at
    every input size, CIFAR-10-C's 32 px included (``stem="imagenet"``); the usual
    CIFAR choice is the 3x3 stem without max-pool (``stem="cifar"``), which keeps a
    16x larger feature map at 32 px and costs that much more compute.
    """

    def __init__(self, num_classes: int, image_size: int, width: int = 64, stem: str = "auto"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem '{stem}'; choose from {', '.join(STEMS)}")
        self.stem = STEMS[stem](width, image_size)
        blocks: list[nn.Module] = []
        c_in = width
        for i, mult in enumerate((1, 2, 4, 8)):
            c_out = width * mult
            blocks += [BasicBlock(c_in, c_out, 1 if i == 0 else 2), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


MODELS: dict[str, Callable[..., nn.Module]] = {"cnn": cnn, "resnet18": ResNet18}


def build_model(name: str, num_classes: int, image_size: int, width: int = 64, stem: str = "auto") -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, image_size=image_size, width=width, stem=stem)
