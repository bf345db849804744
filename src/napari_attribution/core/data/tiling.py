"""Overlapping tiles for fields of view larger than a model's input, and their blending."""

from __future__ import annotations

import numpy as np

from ..runtime.errors import InputError


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with ``overlap``."""
    if tile < 1:
        raise InputError(f"tile size must be positive; got {tile}")
    if not 0 <= overlap < tile:
        raise InputError(f"tile overlap must be in [0, tile size); got {overlap} for {tile}")
    if length < tile:
        raise InputError(f"image side of {length} px is smaller than the tile size {tile}")
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """All (y, x) tile origins for an image of ``height`` x ``width``."""
    return [(y, x) for y in tile_starts(height, tile, overlap)
            for x in tile_starts(width, tile, overlap)]


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) weights: 1 inside, linear ramps over the overlap (never exactly 0)."""
    ramp = np.ones(tile, np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        ramp[:overlap] = r
        ramp[-overlap:] = r[::-1]
    return np.outer(ramp, ramp)


class TileBlender:
    """Accumulates per-tile maps into one full-size map with a weighted average.

    Memory is one full-size map plus its weight image, whatever the number of tiles.
    """

    def __init__(self, shape: tuple[int, ...], tile: int, overlap: int) -> None:
        self.acc = np.zeros(shape, np.float32)
        self.weight = np.zeros(shape[-2:], np.float32)
        self.window = blend_window(tile, overlap)
        self.tile = tile

    def add(self, tile_map: np.ndarray, y: int, x: int) -> None:
        t = self.tile
        self.acc[..., y:y + t, x:x + t] += tile_map * self.window
        self.weight[y:y + t, x:x + t] += self.window

    def result(self) -> np.ndarray:
        return self.acc / np.maximum(self.weight, 1e-12)
