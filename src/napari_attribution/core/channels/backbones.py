"""CNN backbones that take any number of input channels and any input size."""

from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("small", "resnet18")


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A fast four-stage CNN: conv-BN-ReLU blocks, max-pooling, global average pooling."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, w),
            nn.MaxPool2d(2, ceil_mode=True),
            _conv_bn(w, 2 * w),
            nn.MaxPool2d(2, ceil_mode=True),
            _conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2, ceil_mode=True),
            _conv_bn(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks) with a 3x3 stem suited to small crops."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(in_channels, w)
        layers: list[nn.Module] = []
        cin = w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def build_backbone(name: str, in_channels: int, n_classes: int, width: int | None = None
                   ) -> nn.Module:
    """Build a backbone by name (``small`` or ``resnet18``)."""
    from ..runtime.errors import InputError

    if name == "small":
        return SmallCNN(in_channels, n_classes, width or 32)
    if name == "resnet18":
        return ResNet18(in_channels, n_classes, width or 64)
    raise InputError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
