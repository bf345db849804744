"""Tiny models and images with known evidence, shared by the attribution tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SpotModel(nn.Module):
    """Class 1 = bright spots in channel 0 (translation invariant); class 0 = constant."""

    def __init__(self, n_channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_channels, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.conv(x) - 0.5).flatten(1).mean(1) * 200
        return torch.stack([torch.full_like(s, 1.0), s], 1)


class BlindModel(nn.Module):
    """Has a convolution (so its channels can be inferred) but ignores the image:
    class 0 always wins, no pixel carries evidence."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv(x).mean((1, 2, 3)) * 0.0
        return torch.stack([s + 2.0, s - 1.0], 1)


def spot_images(n: int = 3, size: int = 24, c: int = 2, seed: int = 0):
    """Low noise with one bright 5x5 spot per image in channel 0; returns images, masks."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.3, (n, c, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        y0, x0 = rng.integers(2, size - 7, 2)
        x[i, 0, y0:y0 + 5, x0:x0 + 5] += 0.8
        masks[i, y0:y0 + 5, x0:x0 + 5] = True
    return x, masks


def small_cnn(c: int = 2, n_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, n_classes)).eval()
