"""Post-hoc channel importance for any classifier (no mixing layer needed).

Two ways to take one input channel away from a trained model on held-out images,
each scored as the rise in class-balanced loss and the drop in balanced accuracy,
with a 95 % interval from a stratified bootstrap over the images:

* ``feature_ablation``: Captum's ``FeatureAblation`` with one feature group per
  channel; the channel is replaced by its mean over the images.
* ``permutation``: the channel's pixels are shuffled within each image (the image
  keeps its intensity histogram in that channel, loses its spatial layout), averaged
  over ``n_repeats`` shuffles.

Neither reads the model's weights, so neither is circular for DCMIX: a channel with a
near-zero mixing weight is not forced to a near-zero effect by construction of the
check (the permutation keeps each image's brightness, the ablation removes it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..runtime.errors import InputError
from ..study.classification import class_balanced_mean, interval, stratified_bootstrap

METHODS = ("permutation", "feature_ablation")


@dataclass
class PosthocImportance:
    """Per-channel effect of taking the channel away, absolute (never renormalised)."""

    method: str
    channel_names: list[str]
    loss_increase: np.ndarray  # (C,) rise of the class-balanced cross-entropy
    loss_interval: np.ndarray  # (C, 2) 95 % bootstrap interval
    balanced_accuracy_drop: np.ndarray  # (C,)
    drop_interval: np.ndarray  # (C, 2)
    baseline_balanced_accuracy: float
    baseline_loss: float
    n_images: int
    n_repeats: int = 1
    seconds: float = 0.0

    def ranking(self) -> list[str]:
        """Channels from largest to smallest loss rise."""
        return [self.channel_names[i] for i in np.argsort(-self.loss_increase, kind="stable")]

    def rows(self) -> list[dict]:
        return [{"channel": n,
                 "loss_increase": float(self.loss_increase[i]),
                 "loss_increase_95": [float(v) for v in self.loss_interval[i]],
                 "balanced_accuracy_drop": float(self.balanced_accuracy_drop[i]),
                 "balanced_accuracy_drop_95": [float(v) for v in self.drop_interval[i]]}
                for i, n in enumerate(self.channel_names)]

    def to_dict(self) -> dict:
        return {"method": self.method, "channel_names": list(self.channel_names),
                "loss_increase": self.loss_increase.tolist(),
                "loss_interval": self.loss_interval.tolist(),
                "balanced_accuracy_drop": self.balanced_accuracy_drop.tolist(),
                "drop_interval": self.drop_interval.tolist(),
                "baseline_balanced_accuracy": self.baseline_balanced_accuracy,
                "baseline_loss": self.baseline_loss, "n_images": self.n_images,
                "n_repeats": self.n_repeats, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> PosthocImportance:
        arr = {k: np.asarray(d[k], dtype=float) for k in
               ("loss_increase", "loss_interval", "balanced_accuracy_drop", "drop_interval")}
        return cls(method=d["method"], channel_names=list(d["channel_names"]),
                   baseline_balanced_accuracy=float(d["baseline_balanced_accuracy"]),
                   baseline_loss=float(d["baseline_loss"]), n_images=int(d["n_images"]),
                   n_repeats=int(d.get("n_repeats", 1)),
                   seconds=float(d.get("seconds", 0.0)), **arr)


@torch.no_grad()
def per_image_outcomes(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       batch_size: int = 128, transform=None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image cross-entropy and correctness (N,) of ``model`` on ``x``, optionally
    after ``transform(batch, start_index)`` perturbs each batch."""
    losses, correct = [], []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        if transform is not None:
            xb = transform(xb, i)
        logits = model(xb).float()
        losses.append(F.cross_entropy(logits, yb, reduction="none").cpu())
        correct.append((logits.argmax(1) == yb).cpu())
    return torch.cat(losses).numpy(), torch.cat(correct).numpy().astype(np.float64)


def effect_summary(labels: np.ndarray, base_loss: np.ndarray, base_correct: np.ndarray,
                   losses: np.ndarray, correct: np.ndarray, n_boot: int = 500, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """Class-balanced loss rise and balanced-accuracy drop per perturbation (rows of
    ``losses``/``correct``, (C, N)) with 95 % intervals from a stratified bootstrap."""
    w = stratified_bootstrap(labels, n_boot, seed)
    c = losses.shape[0]
    out = {"loss_increase": np.zeros(c), "loss_interval": np.zeros((c, 2)),
           "balanced_accuracy_drop": np.zeros(c), "drop_interval": np.zeros((c, 2))}
    for ci in range(c):
        d_loss, d_acc = losses[ci] - base_loss, base_correct - correct[ci]
        out["loss_increase"][ci] = class_balanced_mean(d_loss, labels)
        out["loss_interval"][ci] = interval(class_balanced_mean(d_loss, labels, w))
        out["balanced_accuracy_drop"][ci] = class_balanced_mean(d_acc, labels)
        out["drop_interval"][ci] = interval(class_balanced_mean(d_acc, labels, w))
    return out


def _permute_within(xb: torch.Tensor, channel: int, gen: torch.Generator) -> torch.Tensor:
    """Shuffle the pixels of one channel inside each image."""
    n, _, h, w = xb.shape
    order = torch.argsort(torch.rand(n, h * w, generator=gen), dim=1).to(xb.device)
    out = xb.clone()
    out[:, channel] = torch.gather(xb[:, channel].reshape(n, -1), 1, order).view(n, h, w)
    return out


def _captum_ablation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(C, N) per-image loss and correctness with each channel replaced by its mean,
    through Captum's FeatureAblation (one feature group per channel)."""
    from captum.attr import FeatureAblation

    c = x.shape[1]
    mask = torch.arange(c, device=x.device).view(1, c, 1, 1)
    baselines = x.mean(dim=(0, 2, 3)).view(1, c, 1, 1)

    def outcomes(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = model(xb).float()
        return torch.stack([F.cross_entropy(logits, yb, reduction="none"),
                            (logits.argmax(1) == yb).float()], dim=1)

    ablator = FeatureAblation(outcomes)
    loss_rise, acc_change = [], []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            # attribution = f(x) - f(x with the channel ablated), per image and channel
            for target, store in ((0, loss_rise), (1, acc_change)):
                attr = ablator.attribute(xb, baselines=baselines, target=target,
                                         additional_forward_args=(yb,), feature_mask=mask,
                                         perturbations_per_eval=c)
                store.append(attr[:, :, 0, 0].T.cpu())
    base_loss, base_correct = per_image_outcomes(model, x, y, batch_size)
    losses = base_loss[None] - torch.cat(loss_rise, 1).numpy()
    correct = base_correct[None] - torch.cat(acc_change, 1).numpy()
    return losses, correct


@torch.no_grad()
def posthoc_channel_importance(model: nn.Module, images: torch.Tensor | np.ndarray,
                               labels: torch.Tensor | np.ndarray, channel_names: list[str],
                               method: str = "permutation", n_repeats: int = 3,
                               batch_size: int = 128, n_boot: int = 500, seed: int = 0
                               ) -> PosthocImportance:
    """Channel importance of any classifier on (already normalised) held-out images.

    ``model`` maps (N, C, H, W) to class logits. See the module docstring for the two
    methods; ``n_repeats`` shuffles per channel for ``permutation``.
    """
    if method not in METHODS:
        raise InputError(f"unknown post-hoc method {method!r}; choose one of {METHODS}")
    t0 = time.perf_counter()
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images,
                        dtype=torch.float32).to(device)
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels,
                        dtype=torch.long).to(device)
    if x.ndim != 4 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(f"need images (N, C, H, W) and N labels; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if len(channel_names) != x.shape[1]:
        raise InputError(f"{len(channel_names)} channel names for {x.shape[1]} channels")
    base_loss, base_correct = per_image_outcomes(model, x, y, batch_size)
    c = x.shape[1]
    if method == "feature_ablation":
        losses, correct = _captum_ablation(model, x, y, batch_size)
        n_repeats = 1
    else:
        gen = torch.Generator().manual_seed(seed)
        losses, correct = np.zeros((c, x.shape[0])), np.zeros((c, x.shape[0]))
        for ci in range(c):
            for _ in range(n_repeats):
                l_, c_ = per_image_outcomes(
                    model, x, y, batch_size,
                    lambda xb, _i, ci=ci: _permute_within(xb, ci, gen))
                losses[ci] += l_ / n_repeats
                correct[ci] += c_ / n_repeats
    yn = y.cpu().numpy()
    summary = effect_summary(yn, base_loss, base_correct, losses, correct, n_boot, seed)
    return PosthocImportance(
        method=method, channel_names=list(channel_names),
        baseline_balanced_accuracy=float(class_balanced_mean(base_correct, yn)),
        baseline_loss=float(class_balanced_mean(base_loss, yn)), n_images=int(x.shape[0]),
        n_repeats=n_repeats, seconds=time.perf_counter() - t0, **summary)


def format_posthoc(results: list[PosthocImportance]) -> str:
    """Text table: per channel, loss rise and balanced-accuracy drop [95 % interval]
    for each method."""
    if not results:
        return ""
    names = results[0].channel_names
    width = max(8, *(len(n) for n in names))
    head = f"{'channel':<{width}}" + "".join(
        f"  {r.method + ': loss rise [95%]':<34}{'bal. acc drop [95%]':<26}" for r in results)
    lines = [head]
    for i, n in enumerate(names):
        cells = ""
        for r in results:
            lo, hi = r.loss_interval[i]
            dlo, dhi = r.drop_interval[i]
            cells += (f"  {f'{r.loss_increase[i]:+.3f} [{lo:+.3f}, {hi:+.3f}]':<34}"
                      f"{f'{r.balanced_accuracy_drop[i]:+.3f} [{dlo:+.3f}, {dhi:+.3f}]':<26}")
        lines.append(f"{n:<{width}}" + cells)
    return "\n".join(lines)
