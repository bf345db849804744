"""Channel-map sanity: does each channel a user gives look like the trained channel of
that name?

A model trained on DNA + GFP reads whatever it is handed under each name. Fed the DNA
stain as GFP it still answers, often confidently. At training time
:func:`channel_reference` records, per channel, a few statistics that do not depend on
exposure or gain (each image is scaled by its own 1st and 99.5th percentiles first):
the mean, median, spread and bright fraction of the scaled intensities, their skewness,
the edge density (mean gradient over spread) and the spatial autocorrelation at 1, 2 and
4 px (texture and object size). At predict / explain time :func:`check_channel_map`
computes the same statistics for each given channel and its distance to every trained
channel's reference (in units of the statistics' spread between training images); a
``channel-map-suspect`` caution says so when the channels fit the references clearly
better in another order (best assignment at less than ``ratio`` times the given order's
total distance). On BBBC013, nuclear GFP (positive wells) genuinely looks like DNA; the
check then stays quiet rather than cry wolf, and catches the swap on negative and
mixed fields and on crops.

Pure numpy; a few hundred images are enough (a random subset is used beyond
``max_images``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..study.findings import Finding, make, register_code

CHANNEL_MAP_SUSPECT = register_code(
    "channel-map-suspect", "caution",
    "a channel looks like another trained channel rather than the one it is given as: "
    "check the channel order / mapping")

FEATURES = ("mean", "median", "std", "bright", "skew", "edges", "ac1", "ac2", "ac4")
#: suspect when another channel order fits the references at less than this fraction
#: of the given order's total distance ...
RATIO = 0.7
#: ... and saves at least this much (spread units): near-identical channels stay quiet
MIN_IMPROVEMENT = 0.5


def _image_features(a: np.ndarray) -> np.ndarray | None:
    """The statistics of one (H, W) channel image, or None when it is flat."""
    a = np.asarray(a, np.float64)
    lo, hi = np.percentile(a, (1.0, 99.5))
    if not np.isfinite(hi - lo) or hi - lo <= 1e-12:
        return None
    z = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    sd = z.std()
    if sd <= 1e-9:
        return None
    c = z - z.mean()
    skew = float((c ** 3).mean() / sd ** 3)
    gy, gx = np.abs(np.diff(z, axis=0)).mean(), np.abs(np.diff(z, axis=1)).mean()
    ac = []
    for k in (1, 2, 4):
        if min(z.shape) <= k:
            ac.append(0.0)
            continue
        num = (c[k:] * c[:-k]).mean() + (c[:, k:] * c[:, :-k]).mean()
        ac.append(float(num / (2 * sd ** 2)))
    return np.array([z.mean(), np.median(z), sd, (z > 0.5).mean(), skew,
                     (gy + gx) / (2 * sd), *ac])


def channel_features(images: np.ndarray, max_images: int = 256, seed: int = 0
                     ) -> np.ndarray:
    """Per image and channel statistics (N', C, len(FEATURES)); NaN where flat."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    idx = np.arange(len(x))
    if len(idx) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_images, replace=False))
    out = np.full((len(idx), x.shape[1], len(FEATURES)), np.nan)
    for k, i in enumerate(idx):
        for c in range(x.shape[1]):
            f = _image_features(x[i, c])
            if f is not None:
                out[k, c] = f
    return out


def channel_reference(images: np.ndarray, channel_names: list[str],
                      max_images: int = 256) -> dict[str, Any] | None:
    """The per-channel reference statistics of training images (N, C, H, W), JSON-ready:
    ``{"features", "channels": {name: medians}, "spread": per-feature spread}``; None
    when no channel has contrast."""
    f = channel_features(images, max_images)
    if np.isnan(f).all():
        return None
    with np.errstate(all="ignore"):
        med = np.nanmedian(f, 0)                                     # (C, F)
        # spread between images, pooled over channels (robust: 1.4826 MAD)
        mad = np.nanmedian(np.abs(f - med[None]), 0) * 1.4826        # (C, F)
        spread = np.nanmean(mad, 0)
    spread = np.where(np.isfinite(spread) & (spread > 1e-3), spread, 1e-3)
    return {"features": list(FEATURES), "n_images": int(f.shape[0]),
            "channels": {str(n): [None if not np.isfinite(v) else round(float(v), 5)
                                  for v in med[c]] for c, n in enumerate(channel_names)},
            "spread": [round(float(s), 5) for s in spread]}


def channel_distances(reference: dict[str, Any], images: np.ndarray,
                      channel_names: list[str]) -> np.ndarray | None:
    """Distances (C given, C trained) of each given channel's statistics (median over
    the images) to each trained channel's reference, in spread units; None when the
    reference does not fit (other features or channels)."""
    if list(reference.get("features") or []) != list(FEATURES):
        return None
    refs = reference.get("channels") or {}
    if any(n not in refs for n in channel_names):
        return None
    ref = np.array([[np.nan if v is None else v for v in refs[n]] for n in channel_names],
                   np.float64)
    spread = np.asarray(reference["spread"], np.float64)
    with np.errstate(all="ignore"):
        given = np.nanmedian(channel_features(images), 0)           # (C, F)
        diff = (given[:, None, :] - ref[None, :, :]) / spread
        return np.sqrt(np.nanmean(diff ** 2, -1))


def check_channel_map(reference: dict[str, Any] | None, images: np.ndarray,
                      channel_names: list[str], ratio: float = RATIO,
                      min_improvement: float = MIN_IMPROVEMENT) -> list[Finding]:
    """``channel-map-suspect`` cautions when the given channels of ``images`` (raw or
    normalised, (N, C, H, W) in the model's channel order) match the trained channels'
    references clearly better in another order: the best assignment (least total
    distance) differs from the one given, costs less than ``ratio`` times it and saves at
    least ``min_improvement`` spread units. One caution per channel that would move."""
    if not reference:
        return []
    names = list(channel_names)
    d = channel_distances(reference, images, names)
    if d is None or not np.isfinite(d).all():
        return []
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(d)
    best = float(d[rows, cols].sum())
    given = float(np.trace(d))
    if (cols == rows).all() or best >= ratio * given or given - best < min_improvement:
        return []
    out = []
    for i, j in zip(rows, cols, strict=True):
        if i != j:
            out.append(make(
                CHANNEL_MAP_SUSPECT,
                f"the channel given as {names[i]!r} looks like the trained {names[j]!r} "
                f"channel (distance {d[i, j]:.1f}) more than like {names[i]!r} (distance "
                f"{d[i, i]:.1f}); the channels fit the model much better in another order "
                f"(total distance {best:.1f} instead of {given:.1f}). Check the channel "
                f"mapping: the model reads this channel as {names[i]!r}",
                channel=names[i], looks_like=names[j], distance_own=round(float(d[i, i]), 3),
                distance_other=round(float(d[i, j]), 3), total_given=round(given, 3),
                total_best=round(best, 3)))
    return out
