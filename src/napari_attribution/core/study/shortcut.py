"""Shortcut check: can plain per-channel brightness tell the classes apart?

A stain, exposure or batch difference between wells shows up as a whole-channel
intensity difference. If a few intensity statistics of one channel separate the
classes on the held-out images about as well as the CNN does, the CNN may have learnt
exactly that, and its channel ranking then names a batch effect, not the biology.

The check fits small multinomial logistic regressions (numpy features, torch fit) on
the SAME train/validation split as the CNN: all statistics of all channels, all
statistics of each channel, and each single statistic alone, and reports held-out
balanced accuracy for each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .classification import balanced_accuracy

STATISTICS = ("mean", "std", "p05", "p50", "p95", "object_mean")
# a single channel statistic is "well above chance" at this share of the way to 1.0
WELL_ABOVE = 0.6
CLOSE_TO_CNN = 0.05


def intensity_features(images: np.ndarray, object_masks: np.ndarray | None = None
                       ) -> np.ndarray:
    """Per image and channel: mean, std, 5/50/95th percentiles and the object mean
    (inside ``object_masks`` (N, H, W) when given, else a central disc of a quarter of
    the crop side in radius: nuclei-centred crops have their object there): (N, C, 6)."""
    x = np.asarray(images, dtype=np.float32)
    n, c, h, w = x.shape
    flat = x.reshape(n, c, -1)
    pct = np.percentile(flat, [5, 50, 95], axis=-1).transpose(1, 2, 0)
    if object_masks is None or np.shape(object_masks) != (n, h, w):
        yy, xx = np.mgrid[:h, :w]
        disc = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= max(1.0, min(h, w) / 4)
        obj = flat[:, :, disc.ravel()].mean(-1)
    else:
        m = np.asarray(object_masks, bool).reshape(n, 1, -1)
        area = m.sum(-1)
        obj = np.where(area > 0, (flat * m).sum(-1) / np.maximum(area, 1), flat.mean(-1))
    return np.concatenate([flat.mean(-1)[..., None], flat.std(-1)[..., None], pct,
                           obj[..., None]], axis=-1)


@dataclass
class ShortcutCheck:
    """Held-out balanced accuracy of intensity-statistics baselines."""

    channel_names: list[str]
    chance: float
    all_features: float  # every statistic of every channel
    per_channel: dict[str, float]  # every statistic of one channel
    per_statistic: dict[str, dict[str, float]]  # channel -> statistic -> accuracy
    cnn_balanced_accuracy: float | None = None
    flagged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def best_statistic(self, channel: str) -> tuple[str, float]:
        stats = self.per_statistic[channel]
        name = max(stats, key=stats.get)
        return name, stats[name]

    def to_dict(self) -> dict[str, Any]:
        return {"channel_names": list(self.channel_names), "chance": self.chance,
                "all_features_balanced_accuracy": self.all_features,
                "per_channel_balanced_accuracy": dict(self.per_channel),
                "per_statistic_balanced_accuracy": {k: dict(v) for k, v in
                                                    self.per_statistic.items()},
                "cnn_balanced_accuracy": self.cnn_balanced_accuracy,
                "flagged": list(self.flagged), "warnings": list(self.warnings),
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> ShortcutCheck:
        return cls(channel_names=list(d["channel_names"]), chance=float(d["chance"]),
                   all_features=float(d["all_features_balanced_accuracy"]),
                   per_channel=dict(d["per_channel_balanced_accuracy"]),
                   per_statistic={k: dict(v) for k, v in
                                  d["per_statistic_balanced_accuracy"].items()},
                   cnn_balanced_accuracy=d.get("cnn_balanced_accuracy"),
                   flagged=list(d.get("flagged", [])), warnings=list(d.get("warnings", [])),
                   seconds=float(d.get("seconds", 0.0)))

    def assess(self, cnn_balanced_accuracy: float | None = None) -> None:
        """Set ``flagged`` and ``warnings``: channels whose brightness alone separates the
        classes well above chance, or about as well as the CNN."""
        self.cnn_balanced_accuracy = cnn_balanced_accuracy
        self.flagged, self.warnings = [], []
        high = self.chance + WELL_ABOVE * (1 - self.chance)
        floor = self.chance + 0.5 * (1 - self.chance)  # "close to the CNN" needs this too
        for ch in self.channel_names:
            stat, acc = self.best_statistic(ch)
            close = (cnn_balanced_accuracy is not None and acc >= floor
                     and acc >= cnn_balanced_accuracy - CLOSE_TO_CNN)
            if acc >= high or close:
                self.flagged.append(ch)
                cnn = ("" if cnn_balanced_accuracy is None else
                       f"; the CNN: {cnn_balanced_accuracy:.2f}")
                self.warnings.append(
                    f"The brightness of {ch} alone separates the classes on held-out images "
                    f"(balanced accuracy {acc:.2f} from its {stat.replace('_', ' ')}, chance "
                    f"{self.chance:.2f}{cnn}). If {ch} is the marker whose intensity your "
                    "phenotype changes, that is expected; otherwise it looks like a stain, "
                    "exposure or batch effect the CNN can use instead of the biology. "
                    "Remedy: normalise per field (each field of view scaled on its own), "
                    "image each class in more wells (and plates), hold out whole wells, "
                    "and retrain.")


def _fit_masked_logreg(x_tr: torch.Tensor, y_tr: torch.Tensor, masks: torch.Tensor,
                       n_classes: int, l2: float = 1e-3, iters: int = 60) -> torch.Tensor:
    """Fit one class-weighted logistic regression per row of ``masks`` (M, F) at once;
    returns the weights (M, F + 1, K) (last row: bias)."""
    m, f = masks.shape
    xb = torch.cat([x_tr, torch.ones(x_tr.shape[0], 1)], 1)
    mask = torch.cat([masks, torch.ones(m, 1)], 1)[..., None]
    w = torch.zeros(m, f + 1, n_classes, requires_grad=True)
    counts = torch.bincount(y_tr, minlength=n_classes).float()
    cw = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)),
                     torch.zeros_like(counts))
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.einsum("nf,mfk->nmk", xb, w * mask)  # (N, M, K)
        loss = F.cross_entropy(logits.permute(0, 2, 1), y_tr[:, None].expand(-1, m),
                               weight=cw, reduction="mean") * m
        loss = loss + l2 * (w[:, :-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w * mask).detach()


def shortcut_check(images: np.ndarray, labels: np.ndarray, train_index: np.ndarray,
                   val_index: np.ndarray, channel_names: list[str],
                   object_masks: np.ndarray | None = None,
                   cnn_balanced_accuracy: float | None = None) -> ShortcutCheck:
    """Fit intensity-statistics baselines on ``train_index`` and score them on
    ``val_index`` (held-out balanced accuracy); see the module docstring."""
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    feats = intensity_features(images, object_masks)  # (N, C, S)
    n, c, s = feats.shape
    x = feats.reshape(n, c * s)
    mu, sd = x[train_index].mean(0), x[train_index].std(0)
    x = (x - mu) / np.where(sd > 1e-12, sd, 1.0)
    masks = [np.ones(c * s)]
    for ci in range(c):
        m = np.zeros((c, s))
        m[ci] = 1
        masks.append(m.ravel())
    for ci in range(c):
        for si in range(s):
            m = np.zeros((c, s))
            m[ci, si] = 1
            masks.append(m.ravel())
    torch_masks = torch.tensor(np.stack(masks), dtype=torch.float32)
    with torch.enable_grad():
        w = _fit_masked_logreg(torch.tensor(x[train_index], dtype=torch.float32),
                               torch.from_numpy(labels[train_index]), torch_masks, n_classes)
    xv = torch.tensor(np.c_[x[val_index], np.ones(len(val_index))], dtype=torch.float32)
    pred = torch.einsum("nf,mfk->nmk", xv, w).argmax(-1).numpy()  # (Nv, M)
    yv = labels[val_index]
    acc = [balanced_accuracy(yv, pred[:, j], n_classes) for j in range(pred.shape[1])]
    present = np.unique(labels).size
    result = ShortcutCheck(
        channel_names=list(channel_names), chance=1.0 / max(present, 1),
        all_features=acc[0],
        per_channel={ch: acc[1 + i] for i, ch in enumerate(channel_names)},
        per_statistic={ch: {st: acc[1 + c + i * s + j] for j, st in enumerate(STATISTICS)}
                       for i, ch in enumerate(channel_names)})
    result.assess(cnn_balanced_accuracy)
    result.seconds = time.perf_counter() - t0
    return result


def format_shortcut(check: ShortcutCheck) -> str:
    """Text table: per channel, balanced accuracy from its intensity statistics."""
    width = max(8, *(len(n) for n in check.channel_names))
    cnn = ("" if check.cnn_balanced_accuracy is None
           else f", CNN {check.cnn_balanced_accuracy:.3f}")
    lines = [f"shortcut check: intensity statistics only, same split (chance "
             f"{check.chance:.3f}; all channels {check.all_features:.3f}{cnn})",
             f"{'channel':<{width}}  all stats  best single statistic"]
    for ch in check.channel_names:
        stat, acc = check.best_statistic(ch)
        flag = "  <- brightness alone separates the classes" if ch in check.flagged else ""
        lines.append(f"{ch:<{width}}  {check.per_channel[ch]:9.3f}  {acc:.3f} ({stat}){flag}")
    return "\n".join(lines)
