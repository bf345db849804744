"""Batch augmentation on tensors: flips, 90-degree rotations, intensity jitter."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    flips: bool = True
    rotations: bool = True
    intensity_jitter: float = 0.1

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a (B, C, H, W) batch; randomness comes from ``generator`` (on CPU)."""
        b = x.shape[0]

        def coin() -> torch.Tensor:
            return (torch.rand(b, generator=generator) < 0.5).to(x.device)

        if self.flips:
            x = torch.where(coin()[:, None, None, None], x.flip(-1), x)
            x = torch.where(coin()[:, None, None, None], x.flip(-2), x)
        if self.rotations and x.shape[-1] == x.shape[-2]:
            x = torch.where(coin()[:, None, None, None], x.transpose(-1, -2), x)
        if self.intensity_jitter > 0:
            j = self.intensity_jitter
            c = x.shape[1]
            scale = 1 + (torch.rand(b, c, 1, 1, generator=generator) * 2 - 1) * j
            shift = (torch.rand(b, c, 1, 1, generator=generator) * 2 - 1) * j * 0.5
            x = x * scale.to(x.device, x.dtype) + shift.to(x.device, x.dtype)
        return x
