"""Per-object training data: square crops centred on object positions (points).

A stand-in until plate-level per-object crops land in ``io.plate``: the GUI labels
objects with a napari Points layer whose ``class`` feature names each object's class.
Pure numpy.
"""

from __future__ import annotations

import numpy as np

from ..runtime.errors import InputError


def crops_around_points(images: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """Crops (K, C, size, size) of ``images`` (N, C, H, W) centred on ``points`` (K, 3)
    given as (image index, y, x); points near an edge are shifted inside the image."""
    imgs = np.asarray(images)
    pts = np.asarray(points, float)
    if imgs.ndim != 4:
        raise InputError(f"images must be (N, C, H, W); got shape {imgs.shape}")
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError("points must be (image index, y, x) rows; got shape "
                         f"{pts.shape}")
    n, c, h, w = imgs.shape
    if size > min(h, w):
        raise InputError(f"crop size {size} is larger than the images ({h}x{w})")
    out = np.empty((len(pts), c, size, size), imgs.dtype)
    for k, (i, y, x) in enumerate(pts):
        i = int(round(i))
        if not 0 <= i < n:
            raise InputError(f"point {k} lies on image {i}, outside the {n} image(s)")
        y0 = int(np.clip(round(y) - size // 2, 0, h - size))
        x0 = int(np.clip(round(x) - size // 2, 0, w - size))
        out[k] = imgs[i, :, y0:y0 + size, x0:x0 + size]
    return out


def labels_from_classes(values) -> tuple[np.ndarray, list[str]]:
    """Integer labels and sorted class names from per-object class values."""
    names = sorted({str(v) for v in values})
    if len(names) < 2:
        raise InputError(f"objects need at least two classes; got {names}")
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[str(v)] for v in values], np.int64), names
