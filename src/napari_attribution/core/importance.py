"""Channel importance readouts of a trained DCMIX model, with an ablation check.

Three numbers per channel, reported side by side:

* ``weights``: the raw mixing weights per head (K, C).
* ``overall``: the heads' weights averaged with each head weighted by its downstream
  effect (how much the validation loss rises when that head's mixed image is replaced
  by its mean). A head the network ignores then adds nothing to the readout.
* ``ablation``: the check that does not trust the weights at all: replace one input
  channel by its mean and measure the drop in validation accuracy and rise in loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ChannelImportance:
    """Channel importance of one model, keyed by channel name."""

    channel_names: list[str]
    weights: np.ndarray  # (K, C)
    head_effect: np.ndarray  # (K,) loss increase when a head is ablated
    overall: np.ndarray  # (C,)
    ablation_accuracy_drop: np.ndarray | None = None  # (C,)
    ablation_loss_increase: np.ndarray | None = None  # (C,)
    baseline_accuracy: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ablation_importance(self) -> np.ndarray | None:
        """Ablation loss increases clipped at zero and normalised to sum to one."""
        if self.ablation_loss_increase is None:
            return None
        v = np.clip(self.ablation_loss_increase, 0, None)
        return v / v.sum() if v.sum() > 0 else np.full_like(v, 1 / v.size)

    def ranking(self) -> list[str]:
        """Channel names from most to least important (by ``overall``)."""
        return [self.channel_names[i] for i in np.argsort(-self.overall, kind="stable")]

    def as_dict(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.channel_names, self.overall, strict=True)}

    def rows(self) -> list[dict]:
        """One row per channel: name, overall, per-head weights, ablation figures."""
        rows = []
        abl = self.ablation_importance
        for i, name in enumerate(self.channel_names):
            row: dict = {"channel": name, "importance": float(self.overall[i])}
            for h in range(self.weights.shape[0]):
                row[f"head{h}_weight"] = float(self.weights[h, i])
            if abl is not None:
                row["ablation_importance"] = float(abl[i])
                row["ablation_accuracy_drop"] = float(self.ablation_accuracy_drop[i])
                row["ablation_loss_increase"] = float(self.ablation_loss_increase[i])
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        d = {
            "channel_names": list(self.channel_names),
            "weights": self.weights.tolist(),
            "head_effect": self.head_effect.tolist(),
            "overall": self.overall.tolist(),
            "baseline_accuracy": self.baseline_accuracy,
            "extra": self.extra,
        }
        if self.ablation_loss_increase is not None:
            d["ablation_accuracy_drop"] = self.ablation_accuracy_drop.tolist()
            d["ablation_loss_increase"] = self.ablation_loss_increase.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ChannelImportance:
        def arr(key: str) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], dtype=float)

        return cls(
            channel_names=list(d["channel_names"]),
            weights=arr("weights"),
            head_effect=arr("head_effect"),
            overall=arr("overall"),
            ablation_accuracy_drop=arr("ablation_accuracy_drop"),
            ablation_loss_increase=arr("ablation_loss_increase"),
            baseline_accuracy=d.get("baseline_accuracy"),
            extra=d.get("extra", {}),
        )


@torch.no_grad()
def _loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                       transform=None) -> tuple[float, float]:
    total_loss, correct = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = model(xb) if transform is None else transform(xb)
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return total_loss / x.shape[0], correct / x.shape[0]


@torch.no_grad()
def channel_importance(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    channel_names: list[str],
    batch_size: int = 128,
    ablation: bool = True,
) -> ChannelImportance:
    """Read the mixing weights of ``model`` and check them by ablation on (normalised) data.

    ``model`` is a :class:`~napari_attribution.core.dcmix.DCMIXClassifier`; for a model
    without a mixing layer only the ablation figures are meaningful (weights uniform).
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(images, dtype=torch.float32, device=device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    c = x.shape[1]
    w = model.mixing_weights() if hasattr(model, "mixing_weights") else None
    weights = (w.cpu().numpy().astype(float) if w is not None
               else np.full((1, c), 1.0 / c))
    base_loss, base_acc = _loss_and_accuracy(model, x, y, batch_size)

    head_effect = np.ones(weights.shape[0])
    if w is not None and weights.shape[0] > 1:
        mixed_mean = torch.cat(
            [model.mix(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        ).mean(dim=(0, 2, 3))
        for h in range(weights.shape[0]):
            def ablate_head(xb: torch.Tensor, h: int = h) -> torch.Tensor:
                m = model.mix(xb).clone()
                m[:, h] = mixed_mean[h]
                return model.backbone(m)

            loss, _ = _loss_and_accuracy(model, x, y, batch_size, ablate_head)
            head_effect[h] = max(loss - base_loss, 0.0)
    if head_effect.sum() <= 0:
        head_effect = np.ones_like(head_effect)
    overall = (head_effect[:, None] * weights).sum(0) / head_effect.sum()

    drop = inc = None
    if ablation:
        channel_mean = x.mean(dim=(0, 2, 3))
        drop, inc = np.zeros(c), np.zeros(c)
        for ci in range(c):
            def ablate_channel(xb: torch.Tensor, ci: int = ci) -> torch.Tensor:
                xa = xb.clone()
                xa[:, ci] = channel_mean[ci]
                return model(xa)

            loss, acc = _loss_and_accuracy(model, x, y, batch_size, ablate_channel)
            drop[ci], inc[ci] = base_acc - acc, loss - base_loss
    return ChannelImportance(
        channel_names=list(channel_names),
        weights=weights,
        head_effect=np.asarray(head_effect, dtype=float),
        overall=overall,
        ablation_accuracy_drop=drop,
        ablation_loss_increase=inc,
        baseline_accuracy=base_acc,
    )
