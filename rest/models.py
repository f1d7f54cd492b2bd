"""Model registry: REST's small CNN for digits and a width-parameterised ResNet-18."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def cnn(num_classes: int, image_size: int, width: int = 64) -> nn.Module:
    """REST's 3-layer CNN: three 4x4 stride-2 convs (64, 128, 256), BN, ReLU, pool, fc."""
    del image_size, width  # global pooling makes it size-agnostic; channels fixed as in REST
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in (64, 128, 256):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with a base width parameter.

    Written here rather than taken from torchvision because torchvision's ResNet
    fixes the base width at 64, and the CIFAR-size stem (3x3 conv, no max-pool) is
    what CIFAR-10-C results use. Images of 64 px and more get the ImageNet stem.
    """

    def __init__(self, num_classes: int, image_size: int, width: int = 64):
        super().__init__()
        if image_size >= 64:
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
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


def build_model(name: str, num_classes: int, image_size: int, width: int = 64) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, image_size=image_size, width=width)
