"""Baseline attribution methods to compare PCIM with.

Pixel level: Saliency, Integrated Gradients, Occlusion and Grad-CAM come from Captum
(thin adapters only); RISE and an extremal-perturbation-style mask optimisation are
written here. Channel level (to compare with DCMIX): channel ablation and
within-channel pixel permutation (PXPermute-style).

Every pixel method is a generator ``fn(model, x, targets, per_channel, cfg)`` over one
batch ``x`` (B, C, H, W) with its settings ``cfg`` (a :class:`.MethodConfig`), that yields
:class:`Progress` and returns maps (B, H, W), or (B, C, H, W) with ``per_channel``.
Larger attribution = more evidence for the target class. They are registered in
:mod:`.methods`.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from ..runtime.errors import InputError
from ..runtime.progress import Progress
from .method_config import MethodConfig, setting
from .pcim import gaussian_blur

MapGenerator = Generator[Progress, None, torch.Tensor]


def _reduce(attr: torch.Tensor, per_channel: bool, how: str = "sum") -> torch.Tensor:
    if per_channel:
        return attr
    if how == "absmax":
        return attr.abs().amax(dim=1)
    return attr.sum(dim=1)


@dataclass
class SaliencyConfig(MethodConfig):
    """Saliency has no settings."""

    title: ClassVar[str] = "saliency"


def saliency(model, x, targets, per_channel: bool, cfg: SaliencyConfig) -> MapGenerator:
    """Absolute input gradient (Simonyan et al.), max over channels (Captum ``Saliency``)."""
    from captum.attr import Saliency

    x = x.detach().requires_grad_(True)  # Captum warns when it has to set this itself
    attr = Saliency(model).attribute(x, target=targets, abs=True)
    yield Progress(1, 1, "saliency")
    return _reduce(attr, per_channel, "absmax").detach()


@dataclass
class IntegratedGradientsConfig(MethodConfig):
    """Integrated Gradients from a constant ``baseline`` or from the blurred image."""

    title: ClassVar[str] = "integrated gradients"
    n_steps: int = setting(50, label="steps", minimum=1, maximum=1000,
                           help="points on the path from the baseline to the image")
    baseline: float | str = setting(0.0, advanced=True,
                                    help="a constant, or 'blur' for the blurred image")
    blur_sigma: float = setting(5.0, label="blur sigma", minimum=0.1, maximum=100.0,
                                advanced=True, help="blur of the 'blur' baseline (px)")
    internal_batch_size: int | None = setting(None, advanced=True, minimum=1,
                                              maximum=4096, label="internal batch",
                                              help="path points per pass (auto: 16 per image)")

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise InputError(f"integrated gradients needs n_steps >= 1; got {self.n_steps}")
        if isinstance(self.baseline, str) and self.baseline != "blur":
            raise InputError(f"IG baseline must be a number or 'blur'; got {self.baseline!r}")


def integrated_gradients(model, x, targets, per_channel: bool,
                         cfg: IntegratedGradientsConfig) -> MapGenerator:
    """Integrated Gradients (Captum), summed over channels, from a constant ``baseline``
    or from ``baseline="blur"`` (the image blurred with ``blur_sigma``: the reference PCIM's
    preservation game fades to, for a matched comparison)."""
    from captum.attr import IntegratedGradients

    ref = gaussian_blur(x, float(cfg.blur_sigma)) if isinstance(cfg.baseline, str) \
        else float(cfg.baseline)
    ibs = cfg.internal_batch_size or max(x.shape[0], 1) * min(cfg.n_steps, 16)
    attr = IntegratedGradients(model).attribute(
        x, baselines=ref, target=targets, n_steps=int(cfg.n_steps), internal_batch_size=ibs)
    yield Progress(1, 1, "integrated gradients")
    return _reduce(attr, per_channel).detach()


@dataclass
class IntegratedGradientsBlurConfig(MethodConfig):
    """Integrated Gradients from the blurred image."""

    title: ClassVar[str] = "integrated gradients (blur)"
    n_steps: int = setting(50, label="steps", minimum=1, maximum=1000,
                           help="points on the path from the blurred image to the image")
    blur_sigma: float = setting(5.0, label="blur sigma", minimum=0.1, maximum=100.0,
                                help="blur of the baseline (px)")


def integrated_gradients_blur(model, x, targets, per_channel: bool,
                              cfg: IntegratedGradientsBlurConfig) -> MapGenerator:
    """Integrated Gradients from the blurred image (see :func:`integrated_gradients`)."""
    full = IntegratedGradientsConfig(n_steps=cfg.n_steps, baseline="blur",
                                     blur_sigma=cfg.blur_sigma)
    return (yield from integrated_gradients(model, x, targets, per_channel, full))


@dataclass
class OcclusionConfig(MethodConfig):
    """Sliding-window occlusion."""

    title: ClassVar[str] = "occlusion"
    window: int | None = setting(None, minimum=2, maximum=4096,
                                 help="window side in px (auto: 1/7 of the image side)")
    stride: int | None = setting(None, minimum=1, maximum=4096, advanced=True,
                                 help="window step in px (auto: half the window)")
    baseline: float = setting(0.0, advanced=True, help="value the window is filled with")
    perturbations_per_eval: int = setting(16, minimum=1, maximum=1024, advanced=True,
                                          label="windows per pass")

    def window_and_stride(self, h: int, w: int) -> tuple[int, int]:
        k = int(self.window or max(2, round(min(h, w) / 7)))
        return k, int(self.stride or max(1, k // 2))


def occlusion(model, x, targets, per_channel: bool, cfg: OcclusionConfig) -> MapGenerator:
    """Sliding-window occlusion (Captum ``Occlusion``); window defaults to 1/7 of the side."""
    from captum.attr import Occlusion

    c, h, w = x.shape[1:]
    k, s = cfg.window_and_stride(h, w)
    if k > min(h, w):
        raise InputError(f"occlusion window {k} is larger than the {h}x{w} image")
    cw = 1 if per_channel else c
    attr = Occlusion(model).attribute(
        x, sliding_window_shapes=(cw, k, k), strides=(cw, s, s), target=targets,
        baselines=float(cfg.baseline), perturbations_per_eval=int(cfg.perturbations_per_eval))
    yield Progress(1, 1, "occlusion")
    return attr.detach() if per_channel else attr.mean(dim=1).detach()


def occlusion_passes(cfg: OcclusionConfig, c: int, h: int, w: int, per_channel: bool = False
                     ) -> int:
    """Forward passes per image: one per window position (per channel with
    ``per_channel``) plus the unoccluded image."""
    k, s = cfg.window_and_stride(h, w)
    ny = max(1, (h - k) // s + 1)
    nx = max(1, (w - k) // s + 1)
    return ny * nx * (c if per_channel else 1) + 1


def last_conv_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last ``nn.Conv2d`` of ``model`` (Grad-CAM's usual layer)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError("gradcam needs a regular torch module (TorchScript models do not "
                         "support the hooks it uses); pick another method")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise InputError("gradcam needs a model with a convolutional layer; none found")
    return convs[-1]


@dataclass
class GradCAMConfig(MethodConfig):
    """Grad-CAM on ``layer`` (API only; default: the model's last conv layer)."""

    title: ClassVar[str] = "gradcam"
    layer: Any = None


def gradcam(model, x, targets, per_channel: bool, cfg: GradCAMConfig) -> MapGenerator:
    """Grad-CAM on the last conv layer (Captum ``LayerGradCam``), upsampled, ReLU-ed."""
    from captum.attr import LayerAttribution, LayerGradCam

    if per_channel:
        raise InputError("gradcam gives one map per image; per-channel maps are not "
                         "available for it")
    layer = cfg.layer or last_conv_layer(model)
    attr = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    attr = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")
    yield Progress(1, 1, "gradcam")
    return attr[:, 0].detach()


def _rise_masks(n: int, shape: tuple[int, ...], cells: int, p: float,
                gen: torch.Generator, device) -> torch.Tensor:
    """RISE masks: random binary grids, bilinearly upsampled and randomly shifted."""
    c, h, w = shape
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    grid = (torch.rand(n, c, cells + 1, cells + 1, generator=gen) < p).float()
    up = F.interpolate(grid, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear",
                       align_corners=False)
    dy = torch.randint(0, ch, (n,), generator=gen)
    dx = torch.randint(0, cw, (n,), generator=gen)
    out = torch.stack([up[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return out.to(device)


@dataclass
class RISEConfig(MethodConfig):
    """RISE: random masks weighted by the target probability."""

    title: ClassVar[str] = "RISE"
    n_masks: int = setting(1000, label="masks", minimum=1, maximum=100000,
                           help="random masks (one forward pass each per image)")
    cells: int = setting(7, minimum=1, maximum=256, advanced=True,
                         help="mask grid cells across the image")
    p: float = setting(0.5, minimum=0.01, maximum=0.99, advanced=True,
                       label="keep probability")
    chunk: int = setting(250, minimum=1, maximum=10000, advanced=True,
                         label="masks per pass")
    seed: int = setting(0, minimum=0, maximum=2**31 - 1, advanced=True)

    def __post_init__(self) -> None:
        if not 0 < self.p < 1:
            raise InputError(f"RISE keep probability p must be in (0, 1); got {self.p}")
        if self.n_masks < 1 or self.cells < 1 or self.chunk < 1:
            raise InputError("RISE needs n_masks, cells and chunk >= 1")


def rise(model, x, targets, per_channel: bool, cfg: RISEConfig) -> MapGenerator:
    """RISE (Petsiuk et al. 2018): probability-weighted sum of random masks.

    Masks are shared by the images of a batch; each mask costs one forward per image.
    With ``per_channel`` every channel gets its own independent mask.
    """
    b, c, h, w = x.shape
    n_masks, p = int(cfg.n_masks), float(cfg.p)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    mc = c if per_channel else 1
    sal = torch.zeros(b, mc, h, w, device=x.device)
    done = 0
    with torch.no_grad():
        while done < n_masks:
            m = _rise_masks(min(cfg.chunk, n_masks - done), (mc, h, w), cfg.cells, p, gen,
                            x.device)
            k = m.shape[0]
            # Images x masks in one batch; probabilities of each image's target.
            xm = (x[:, None] * m[None]).reshape(b * k, c, h, w)
            prob = torch.softmax(model(xm), 1).reshape(b, k, -1)
            pt = prob.gather(2, targets.view(b, 1, 1).expand(b, k, 1))[..., 0]
            sal += torch.einsum("bk,kchw->bchw", pt, m)
            done += k
            yield Progress(done, n_masks, f"RISE {done}/{n_masks} masks")
    sal /= n_masks * p
    return sal if per_channel else sal[:, 0]


@dataclass
class ExtremalMaskConfig(MethodConfig):
    """A smooth keep/delete mask of a target area, optimised by gradient descent."""

    title: ClassVar[str] = "extremal mask"
    area: float = setting(0.2, minimum=0.01, maximum=0.99,
                          help="fraction of the image the mask keeps")
    steps: int = setting(60, minimum=1, maximum=1000, help="optimisation steps")
    lr: float = setting(0.1, minimum=1e-4, maximum=10.0, advanced=True,
                        label="learning rate")
    downsample: int = setting(4, minimum=1, maximum=64, advanced=True,
                              help="mask resolution: 1/downsample of the image")
    area_weight: float = setting(10.0, minimum=0.0, maximum=1000.0, advanced=True)
    blur_sigma: float = setting(5.0, minimum=0.1, maximum=100.0, advanced=True)

    def __post_init__(self) -> None:
        if not 0 < self.area < 1:
            raise InputError(f"extremal_mask area must be in (0, 1); got {self.area}")
        if self.steps < 1 or self.downsample < 1:
            raise InputError("extremal_mask needs steps and downsample >= 1")


def extremal_mask(model, x, targets, per_channel: bool, cfg: ExtremalMaskConfig
                  ) -> MapGenerator:
    """Extremal-perturbation-style mask (Fong et al. 2019), simplified.

    A smooth mask m in [0, 1] (sigmoid of logits at 1/``downsample`` resolution)
    keeps pixels and blurs the rest; it maximises the target's probability on the
    kept image and minimises it on the complement, with a penalty pulling the sorted
    mask towards an ``area`` fraction of ones.
    """
    b, c, h, w = x.shape
    mc = c if per_channel else 1
    x = x.detach()
    blurred = gaussian_blur(x, cfg.blur_sigma)
    lh, lw = max(1, math.ceil(h / cfg.downsample)), max(1, math.ceil(w / cfg.downsample))
    logits = torch.zeros(b, mc, lh, lw, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    n = mc * h * w
    ref = torch.zeros(n, device=x.device)
    ref[n - int(round(cfg.area * n)):] = 1.0
    m = None
    for step in range(cfg.steps):
        m = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear",
                                        align_corners=False))
        keep = blurred + m * (x - blurred)
        drop = x + m * (blurred - x)
        logp = torch.log_softmax(model(torch.cat([keep, drop])), 1)
        lp = logp.gather(1, torch.cat([targets, targets]).view(-1, 1))[:, 0]
        area_pen = ((torch.sort(m.flatten(1), dim=1).values - ref) ** 2).mean(1)
        loss = (-lp[:b] + lp[b:] + cfg.area_weight * area_pen).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield Progress(step + 1, cfg.steps, f"extremal mask step {step + 1}/{cfg.steps}")
    out = m.detach()
    return out if per_channel else out[:, 0]


# ---------------------------------------------------------------- channel level


def _accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            pred = model(images[i:i + batch_size]).argmax(1)
            correct += int((pred == labels[i:i + batch_size]).sum())
    return correct / max(1, images.shape[0])


def channel_ablation(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                     fill: str = "mean", batch_size: int = 64, device: str = "cpu"
                     ) -> np.ndarray:
    """Accuracy drop when each channel is replaced by its dataset mean (or zeros): (C,)."""
    if fill not in ("mean", "zero"):
        raise InputError(f"fill must be 'mean' or 'zero'; got {fill!r}")
    x = torch.as_tensor(np.asarray(images, np.float32), device=device)
    y = torch.as_tensor(np.asarray(labels), device=device).long()
    base = _accuracy(model, x, y, batch_size)
    drops = []
    for c in range(x.shape[1]):
        xa = x.clone()
        xa[:, c] = x[:, c].mean() if fill == "mean" else 0.0
        drops.append(base - _accuracy(model, xa, y, batch_size))
    return np.asarray(drops, np.float32)


def channel_permutation(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                        n_repeats: int = 3, seed: int = 0, batch_size: int = 64,
                        device: str = "cpu") -> np.ndarray:
    """PXPermute-style importance: balanced-accuracy drop when a channel's pixels are
    shuffled within each image (intensity histogram kept, spatial structure destroyed):
    (C,). The loss rise and bootstrap intervals: :mod:`.posthoc`."""
    from ..channels.posthoc import posthoc_channel_importance

    x = np.asarray(images, np.float32)
    names = [f"c{i}" for i in range(x.shape[1])]
    imp = posthoc_channel_importance(model.to(device), x, labels, names, "permutation",
                                     n_repeats=n_repeats, batch_size=batch_size, seed=seed,
                                     n_boot=1)
    return imp.balanced_accuracy_drop.astype(np.float32)
