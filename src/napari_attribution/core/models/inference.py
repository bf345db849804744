"""Looking at new images the way the model saw its training images.

A model trained on crops cut from fields shrunk ``downsample`` times must see new fields
shrunk the same way and in tiles of its input size; predictions, attribution maps and
their deletion/insertion curves must all be computed on that one input, or they disagree
(a whole field at full resolution can flip the predicted class). This module holds the
scale (:class:`ModelScale`, read from a bundle's training provenance), the shrinking and
the tile-wise probabilities and curves. Pure numpy/torch.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..data.tiling import tile_grid
from ..runtime.errors import InputError
from ..runtime.progress import Progress


@dataclass(frozen=True)
class ModelScale:
    """How training images were cut: shrink factor from raw pixels and input side.

    ``source`` says where ``input_size`` came from: ``"recorded"`` (the bundle's
    ``data.input_size``, written by training since this release), ``"image_size"``
    (inferred from the training images' recorded size: older bundles) or None (unknown:
    the model is then run on whole images, one global pass)."""

    downsample: int = 1
    input_size: int | None = None
    source: str | None = None

    @classmethod
    def from_provenance(cls, provenance: dict | None) -> ModelScale:
        """Read ``provenance["data"]`` as written by training (``input_size``, else a
        square ``image_size``; ``downsample``); missing values mean raw pixels and whole
        images."""
        data = (provenance or {}).get("data") or {}
        side, source = _side(data.get("input_size")), "recorded"
        if side is None:
            size = data.get("image_size")
            if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
                side = _side(size[0])
            source = "image_size"
        try:
            ds = max(1, int(data.get("downsample", 1) or 1))
        except (TypeError, ValueError):
            ds = 1
        return cls(downsample=ds, input_size=side, source=source if side else None)

    def factor_for(self, layer_downsample: int = 1) -> int:
        """How much more images already shrunk ``layer_downsample`` times must shrink."""
        layer_downsample = max(1, int(layer_downsample))
        if self.downsample % layer_downsample:
            raise InputError(f"the images were shrunk {layer_downsample}x but the model was "
                             f"trained on images shrunk {self.downsample}x; shrink them by "
                             "a factor that divides the model's")
        return self.downsample // layer_downsample

    def describe(self) -> str:
        size = f"{self.input_size} px tiles" if self.input_size else "whole images"
        shrink = f"shrunk {self.downsample}x" if self.downsample > 1 else "raw pixels"
        return f"{shrink}, {size}"


def _side(value) -> int | None:
    """A positive whole number of pixels, or None."""
    if isinstance(value, bool):
        return None
    try:
        side = int(value)
    except (TypeError, ValueError):
        return None
    return side if side > 0 and side == value else None


def shrink(images: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of the last two axes (edges that do not fit
    are dropped), as the plate loader shrinks fields for training."""
    arr = np.asarray(images, np.float32)
    if factor <= 1:
        return arr
    h, w = arr.shape[-2] // factor * factor, arr.shape[-1] // factor * factor
    if h == 0 or w == 0:
        raise InputError(f"images of {arr.shape[-2]}x{arr.shape[-1]} px are too small to "
                         f"shrink {factor}x")
    a = arr[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // factor, factor, w // factor, factor).mean(
        axis=(-3, -1)).astype(np.float32)


def expand(maps: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`shrink` for maps: each pixel repeated over its
    ``factor`` x ``factor`` block, edge rows and columns that shrinking dropped filled
    with their neighbours, so the result is ``shape`` (H, W) in the last two axes."""
    if factor <= 1:
        return maps
    up = np.repeat(np.repeat(maps, factor, axis=-2), factor, axis=-1)
    pad = [(0, 0)] * (up.ndim - 2) + [(0, shape[0] - up.shape[-2]),
                                       (0, shape[1] - up.shape[-1])]
    return np.pad(up, pad, mode="edge")


def tiling_for(shape: tuple[int, int], input_size: int | None,
               overlap: int | None = None) -> tuple[list[tuple[int, int]], int, int]:
    """Tile origins, tile side and overlap for an image of ``shape`` (H, W): the whole
    image as one tile when it is not larger than ``input_size`` (or none is known)."""
    h, w = shape
    if input_size is None or max(h, w) <= input_size:
        return [(0, 0)], 0, 0
    if min(h, w) < input_size:
        raise InputError(f"images are {h}x{w} pixels but the model needs at least "
                         f"{input_size}x{input_size}")
    ov = int(overlap if overlap is not None else input_size // 4)
    return tile_grid(h, w, input_size, ov), input_size, ov


def tile_probabilities(model: torch.nn.Module, x: np.ndarray, input_size: int | None,
                       overlap: int | None = None, batch_size: int = 64,
                       device: str | torch.device = "cpu"
                       ) -> Generator[Progress, None, tuple[np.ndarray, int]]:
    """Class probabilities of normalised images (N, C, H, W): per image, or the mean over
    the tiles :func:`tiling_for` cuts (as :func:`~.attribution.explain` computes them).
    Returns ``(probabilities (N, K), tiles per image)``."""
    n = x.shape[0]
    grid, side, _ = tiling_for(x.shape[-2:], input_size, overlap)
    items = [(i, yx) for i in range(n) for yx in grid]
    sh, sw = (side, side) if side else x.shape[-2:]
    total = np.zeros((n, 0))
    model = model.eval().to(device)
    with torch.no_grad():
        for b0 in range(0, len(items), batch_size):
            chunk = items[b0:b0 + batch_size]
            xb = torch.stack([torch.from_numpy(np.ascontiguousarray(
                x[i, :, y:y + sh, xx:xx + sw])) for i, (y, xx) in chunk]).to(device)
            p = torch.softmax(model(xb).float(), 1).cpu().numpy()
            if total.shape[1] == 0:
                total = np.zeros((n, p.shape[1]), np.float64)
            np.add.at(total, [i for i, _ in chunk], p)
            yield Progress(min(b0 + batch_size, len(items)), len(items), "predicting")
    return (total / len(grid)).astype(np.float32), len(grid)
