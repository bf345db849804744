"""Channel importance readouts of a trained DCMIX model, with an ablation check.

Three numbers per channel, reported side by side:

* ``weights``: the raw mixing weights per head (K, C).
* ``overall``: the heads' weights averaged with each head weighted by its downstream
  effect (how much the validation loss rises when that head's mixed image is replaced
  by its mean). A head the network ignores then adds nothing to the readout.
* ``ablation``: the check that does not trust the weights at all: replace one input
  channel by its mean (Captum ``FeatureAblation``) and measure the absolute drop in
  balanced validation accuracy and the rise in class-balanced loss, each with a 95 %
  bootstrap interval over the validation images. These are never renormalised: a drop
  of 0.03 is reported as 0.03, not as a share of the total.
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
    ablation_accuracy_drop: np.ndarray | None = None  # (C,) balanced-accuracy drop
    ablation_loss_increase: np.ndarray | None = None  # (C,) class-balanced loss rise
    baseline_accuracy: float | None = None  # balanced accuracy of the intact model
    extra: dict = field(default_factory=dict)
    ablation_drop_interval: np.ndarray | None = None  # (C, 2) 95 % bootstrap interval
    ablation_loss_interval: np.ndarray | None = None  # (C, 2)

    def ranking(self) -> list[str]:
        """Channel names from most to least important (by ``overall``)."""
        return [self.channel_names[i] for i in np.argsort(-self.overall, kind="stable")]

    def as_dict(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.channel_names, self.overall, strict=True)}

    def rows(self) -> list[dict]:
        """One row per channel: name, overall, per-head weights, ablation figures."""
        rows = []
        for i, name in enumerate(self.channel_names):
            row: dict = {"channel": name, "importance": float(self.overall[i])}
            for h in range(self.weights.shape[0]):
                row[f"head{h}_weight"] = float(self.weights[h, i])
            if self.ablation_accuracy_drop is not None:
                row["ablation_balanced_accuracy_drop"] = float(self.ablation_accuracy_drop[i])
                if self.ablation_drop_interval is not None:
                    row["ablation_drop_95_low"] = float(self.ablation_drop_interval[i, 0])
                    row["ablation_drop_95_high"] = float(self.ablation_drop_interval[i, 1])
                row["ablation_loss_increase"] = float(self.ablation_loss_increase[i])
                if self.ablation_loss_interval is not None:
                    row["ablation_loss_95_low"] = float(self.ablation_loss_interval[i, 0])
                    row["ablation_loss_95_high"] = float(self.ablation_loss_interval[i, 1])
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
            d["ablation_balanced"] = True
        for key in ("ablation_drop_interval", "ablation_loss_interval"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key).tolist()
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
            ablation_drop_interval=arr("ablation_drop_interval"),
            ablation_loss_interval=arr("ablation_loss_interval"),
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
    seed: int = 0,
) -> ChannelImportance:
    """Read the mixing weights of ``model`` and check them by ablation on (normalised) data.

    ``model`` is a :class:`~napari_attribution.core.channels.dcmix.DCMIXClassifier`; for a model
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

    fields: dict = {}
    if not ablation:
        from ..study.classification import class_balanced_mean
        from .posthoc import per_image_outcomes

        base_acc = float(class_balanced_mean(per_image_outcomes(model, x, y, batch_size)[1],
                                             y.cpu().numpy()))
    else:
        from .posthoc import posthoc_channel_importance

        abl = posthoc_channel_importance(model, x, y, channel_names, "feature_ablation",
                                         batch_size=batch_size, seed=seed)
        base_acc = abl.baseline_balanced_accuracy
        fields = {"ablation_accuracy_drop": abl.balanced_accuracy_drop,
                  "ablation_loss_increase": abl.loss_increase,
                  "ablation_drop_interval": abl.drop_interval,
                  "ablation_loss_interval": abl.loss_interval}
    return ChannelImportance(
        channel_names=list(channel_names),
        weights=weights,
        head_effect=np.asarray(head_effect, dtype=float),
        overall=overall,
        baseline_accuracy=base_acc,
        **fields,
    )


#: Below this share of the mixing weight the top channel is not "the" channel (the
#: ``channels-shared`` finding of ``core.channels.verdict``).
SHARED_WEIGHT = 0.8
