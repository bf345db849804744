"""Metrics for attribution maps.

Pixel level: deletion and insertion AUC (Petsiuk et al. 2018, RISE), pointing game
and relevance mass inside a ground-truth mask, and the model-randomisation sanity
check (Adebayo et al. 2018). Channel level: accuracy when only the top-k channels
are kept.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .classifier import frozen
from .errors import InputError
from .pcim import gaussian_blur


def _check_maps(maps: np.ndarray, images: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    n, c, h, w = images.shape
    if maps.shape not in ((n, h, w), (n, c, h, w)):
        raise InputError(f"maps of shape {maps.shape} do not fit images of shape "
                         f"{images.shape}; expected {(n, h, w)} or {(n, c, h, w)}")
    if not np.isfinite(maps).all():
        raise InputError("attribution maps contain NaN or infinite values")
    return maps


def _rank_positions(maps: np.ndarray, seed: int) -> np.ndarray:
    """Per map, the rank (0 = most relevant) of every element; ties broken at random."""
    flat = maps.reshape(maps.shape[0], -1)
    rng = np.random.default_rng(seed)
    jitter = rng.random(flat.shape) * 1e-6 * (np.abs(flat).max(1, keepdims=True) + 1e-12)
    order = np.argsort(-(flat + jitter), axis=1, kind="stable")
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(flat.shape[1])[None], axis=1)
    return pos


def _auc(curve: np.ndarray) -> np.ndarray:
    """Normalised trapezoid area under curves (..., S+1) sampled on [0, 1]."""
    s = curve.shape[-1] - 1
    return (curve.sum(-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / s


def perturbation_curves(model: torch.nn.Module, images: np.ndarray, maps: np.ndarray,
                        targets: np.ndarray, mode: str = "deletion", n_steps: int = 50,
                        substrate: float = 0.0, blur_sigma: float = 5.0,
                        batch_size: int = 256, device: str = "cpu", seed: int = 0
                        ) -> np.ndarray:
    """Target probability as the most relevant pixels are deleted or inserted: (N, S+1).

    ``deletion`` starts from the image and sets pixels, most relevant first, to
    ``substrate``; ``insertion`` starts from the blurred image (Gaussian,
    ``blur_sigma``) and puts the original pixels back. (N, H, W) maps move whole
    pixels (all channels); (N, C, H, W) maps move single pixel-channels.
    """
    if mode not in ("deletion", "insertion"):
        raise InputError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    x = np.asarray(images, np.float32)
    maps = _check_maps(maps, x)
    n, c, h, w = x.shape
    per_channel = maps.ndim == 4
    pos = torch.as_tensor(_rank_positions(maps, seed), device=device)
    n_el = pos.shape[1]
    n_steps = int(min(n_steps, n_el))
    counts = np.round(np.linspace(0, n_el, n_steps + 1)).astype(np.int64)
    xt = torch.as_tensor(x, device=device)
    if mode == "deletion":
        start, end = xt, torch.full_like(xt, float(substrate))
    else:
        start, end = gaussian_blur(xt, blur_sigma), xt
    tg = torch.as_tensor(np.asarray(targets), device=device).long()
    curves = np.zeros((n, n_steps + 1), np.float32)
    steps_per_chunk = max(1, batch_size // max(1, n))
    with torch.no_grad(), frozen(model) as model:
        for s0 in range(0, n_steps + 1, steps_per_chunk):
            ks = counts[s0:s0 + steps_per_chunk]
            m = torch.stack([(pos < int(k)) for k in ks], 1).float()  # (N, K, n_el)
            m = m.view(n, len(ks), *((c, h, w) if per_channel else (1, h, w)))
            batch = start[:, None] + m * (end - start)[:, None]
            flat = batch.reshape(-1, c, h, w)
            probs = torch.cat([torch.softmax(model(flat[i:i + batch_size]), 1)
                               for i in range(0, flat.shape[0], batch_size)])
            probs = probs.view(n, len(ks), -1)
            curves[:, s0:s0 + len(ks)] = probs.gather(
                2, tg.view(n, 1, 1).expand(n, len(ks), 1))[..., 0].cpu().numpy()
    return curves


def deletion_auc(model, images, maps, targets, **kwargs) -> np.ndarray:
    """Per-image deletion AUC (lower = better): see :func:`perturbation_curves`."""
    return _auc(perturbation_curves(model, images, maps, targets, "deletion", **kwargs))


def insertion_auc(model, images, maps, targets, **kwargs) -> np.ndarray:
    """Per-image insertion AUC (higher = better): see :func:`perturbation_curves`."""
    return _auc(perturbation_curves(model, images, maps, targets, "insertion", **kwargs))


def _pixel_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    return maps.sum(1) if maps.ndim == 4 else maps


def _check_masks(masks: np.ndarray, maps: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks).astype(bool)
    if masks.shape != maps.shape:
        raise InputError(f"masks of shape {masks.shape} do not fit maps of shape {maps.shape}")
    return masks


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """Per image: 1.0 if the map's maximum lies in the mask (dilated by ``tolerance``
    pixels), else 0.0; NaN for an empty mask."""
    pm = _pixel_maps(maps)
    masks = _check_masks(masks, pm)
    if tolerance > 0:
        t = int(tolerance)
        mt = torch.as_tensor(masks[:, None].astype(np.float32))
        masks = torch.nn.functional.max_pool2d(mt, 2 * t + 1, 1, t)[:, 0].numpy() > 0
    out = np.full(pm.shape[0], np.nan, np.float32)
    for i, (m, k) in enumerate(zip(pm, masks, strict=True)):
        if k.any():
            out[i] = float(k.flat[int(np.argmax(m))])
    return out


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: share of the positive attribution that lies inside the mask
    (Arras et al. 2022); NaN for an empty mask or a map without positive values."""
    pm = np.maximum(_pixel_maps(maps), 0)
    masks = _check_masks(masks, pm)
    total = pm.reshape(pm.shape[0], -1).sum(1)
    inside = (pm * masks).reshape(pm.shape[0], -1).sum(1)
    ok = (total > 0) & masks.reshape(masks.shape[0], -1).any(1)
    return np.where(ok, inside / np.where(total > 0, total, 1), np.nan).astype(np.float32)


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    sv = v[order]
    _, first, counts = np.unique(sv, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0
    ranks = np.empty(v.shape[0], np.float64)
    ranks[order] = np.repeat(avg, counts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (ties get average ranks)."""
    ra, rb = _average_ranks(np.ravel(a)), _average_ranks(np.ravel(b))
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def randomize_model(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with every layer's weights re-initialised (Adebayo et al.'s
    full cascading randomisation); normalisation statistics are reset too."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError("the randomisation check needs a regular torch module, not "
                         "TorchScript")
    if not any(hasattr(m, "reset_parameters") for m in model.modules()):
        raise InputError("the randomisation check needs a model built from torch layers "
                         "(exported programs have none to re-initialise)")
    rand = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in rand.modules():
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for m in rand.modules():
        m.training = False
    return rand


def sanity_spearman(maps_trained: np.ndarray, maps_random: np.ndarray,
                    absolute: bool = False) -> np.ndarray:
    """Per-image Spearman between maps of the trained and of the randomised model.

    A method that explains the model, not the image, gives values near 0.
    """
    a, b = _pixel_maps(maps_trained), _pixel_maps(maps_random)
    if a.shape != b.shape:
        raise InputError(f"map shapes differ: {a.shape} vs {b.shape}")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    return np.array([spearman(x, y) for x, y in zip(a, b, strict=True)], np.float32)


def topk_channel_accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                          ranking: list[int], k: int, fill: str = "mean",
                          batch_size: int = 64, device: str = "cpu") -> float:
    """Accuracy when only the ``k`` top-ranked channels are kept; the others are set to
    their dataset mean (``fill='mean'``) or zero."""
    x = np.array(images, np.float32, copy=True)
    c = x.shape[1]
    if sorted(ranking) != list(range(c)):
        raise InputError(f"ranking must be a permutation of the {c} channel indices; "
                         f"got {list(ranking)}")
    if not 1 <= k <= c:
        raise InputError(f"k must be between 1 and {c}; got {k}")
    for ch in ranking[k:]:
        x[:, ch] = x[:, ch].mean() if fill == "mean" else 0.0
    xt = torch.as_tensor(x, device=device)
    y = torch.as_tensor(np.asarray(labels), device=device).long()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(xt[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / x.shape[0]
