"""Checks on user input that turn deep torch errors into clear messages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError


def check_images(
    images: np.ndarray,
    n_channels: int | None = None,
    name: str = "images",
    min_size: int = 1,
) -> np.ndarray:
    """Validate an (N, C, H, W) stack and return it as float32.

    Raises :class:`InputError` for a wrong number of dimensions, an empty stack,
    a channel count other than ``n_channels``, NaN/inf pixels, or an image
    smaller than ``min_size`` pixels on a side.
    """
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise InputError(f"{name} must have shape (N, C, H, W); got shape {arr.shape}")
    if arr.size == 0 or arr.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name} has unsupported dtype {arr.dtype}")
    if n_channels is not None and arr.shape[1] != n_channels:
        raise InputError(
            f"{name} have {arr.shape[1]} channel(s) but the model expects {n_channels}"
        )
    h, w = arr.shape[-2:]
    if min(h, w) < min_size:
        raise InputError(f"{name} are {h}x{w} pixels; at least {min_size}x{min_size} needed")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.unique(np.nonzero(~finite)[0])
        raise InputError(
            f"{name} contain NaN or infinite pixels (image index {bad[:5].tolist()}"
            f"{'…' if bad.size > 5 else ''}); clean or mask them first"
        )
    return arr


def check_not_constant(images: np.ndarray, name: str = "images") -> None:
    """Raise if every image in the stack is constant (nothing to learn or explain)."""
    flat = images.reshape(images.shape[0], -1)
    if np.all(flat.max(axis=1) == flat.min(axis=1)):
        raise InputError(f"{name} are constant (every pixel has the same value)")


def check_labels(labels: Sequence[int] | np.ndarray, n_images: int) -> np.ndarray:
    """Validate integer class labels for ``n_images`` images; at least two classes."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n_images:
        raise InputError(f"expected {n_images} labels, one per image; got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.mod(lab, 1) == 0):
            lab = lab.astype(np.int64)
        else:
            raise InputError(f"labels must be integer class indices; got dtype {lab.dtype}")
    if lab.min() < 0:
        raise InputError("labels must be non-negative class indices")
    if np.unique(lab).size < 2:
        raise InputError(
            f"only one class present in the labels ({int(lab[0])}); a classifier needs "
            "at least two"
        )
    return lab.astype(np.int64)


def check_channel_names(names: Sequence[str] | None, n_channels: int) -> list[str]:
    """Return channel names, generating ``ch0..`` when none are given; length must match."""
    if names is None:
        return [f"ch{i}" for i in range(n_channels)]
    names = [str(n) for n in names]
    if len(names) != n_channels:
        raise InputError(f"{len(names)} channel names given for {n_channels} channels")
    if len(set(names)) != len(names):
        raise InputError(f"channel names must be unique; got {names}")
    return names
