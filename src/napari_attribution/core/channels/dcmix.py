"""DCMIX: a learnable, non-negative channel-mixing layer in front of a CNN.

Alpha compositing of N layers is a convex combination of them. DCMIX learns, per
mixing head, channel weights ``w = softmax(logits)`` (non-negative, summing to one)
and feeds the mixed images ``m_h = sum_c w_{h,c} x_c`` to a backbone whose first layer
takes one input per head. The weights are the channel importance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..runtime.errors import InputError
from .backbones import build_backbone


class ChannelMixing(nn.Module):
    """``K`` convex combinations of ``C`` input channels: (B, C, H, W) -> (B, K, H, W)."""

    def __init__(self, n_channels: int, n_heads: int = 1) -> None:
        super().__init__()
        if n_channels < 1 or n_heads < 1:
            raise InputError("ChannelMixing needs at least one channel and one head")
        self.n_channels = n_channels
        self.n_heads = n_heads
        # Zero logits = uniform weights; a tiny per-head offset breaks the symmetry
        # between heads so that they can specialise.
        init = torch.zeros(n_heads, n_channels)
        if n_heads > 1:
            g = torch.Generator().manual_seed(1234)
            init += 0.01 * torch.randn(n_heads, n_channels, generator=g)
        self.logits = nn.Parameter(init)

    def weights(self) -> torch.Tensor:
        """Mixing weights, shape (K, C), non-negative, each row summing to one."""
        return torch.softmax(self.logits, dim=1)

    def entropy(self) -> torch.Tensor:
        """Mean normalised entropy of the heads' weights (1 = uniform, 0 = one channel)."""
        w = self.weights()
        h = -(w * torch.log(w.clamp_min(1e-12))).sum(dim=1)
        return h.mean() / math.log(self.n_channels) if self.n_channels > 1 else h.mean() * 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.n_channels:
            raise InputError(
                f"input has {x.shape[1]} channel(s) but the mixing layer expects "
                f"{self.n_channels}"
            )
        return torch.einsum("kc,bchw->bkhw", self.weights().to(x.dtype), x)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a classifier (stored in model bundles)."""

    n_channels: int
    n_classes: int
    n_heads: int = 1
    backbone: str = "small"
    width: int | None = None
    mixing: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class DCMIXClassifier(nn.Module):
    """Channel mixing followed by a CNN; with ``mixing=False`` a plain all-channel CNN."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.n_classes < 2:
            raise InputError("a classifier needs at least two classes")
        self.config = config
        self.mixing = ChannelMixing(config.n_channels, config.n_heads) if config.mixing else None
        in_ch = config.n_heads if config.mixing else config.n_channels
        self.backbone = build_backbone(config.backbone, in_ch, config.n_classes, config.width)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The mixed images the backbone sees ("what the network sees")."""
        return self.mixing(x) if self.mixing is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.n_channels:
            raise InputError(
                f"model expects (B, {self.config.n_channels}, H, W) input; got "
                f"{tuple(x.shape)}"
            )
        return self.backbone(self.mix(x))

    def mixing_weights(self) -> torch.Tensor | None:
        """(K, C) mixing weights, or None for a model without a mixing layer."""
        return None if self.mixing is None else self.mixing.weights().detach()


class DCMIXProbabilities(DCMIXClassifier):
    """The same network (same weights) returning class probabilities instead of logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)


def build_dcmix(output: str = "logits", **config) -> DCMIXClassifier:
    """A DCMIX classifier from :class:`ModelConfig` fields, returning ``logits`` or
    ``probabilities`` (the architecture callable of exported bioimage.io packages)."""
    cls = DCMIXProbabilities if output == "probabilities" else DCMIXClassifier
    return cls(ModelConfig.from_dict(config))
