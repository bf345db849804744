"""Deletion and insertion curves on the input a model's probabilities were computed on:
per image, or per tile of a field larger than the model's input."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from ..models.inference import tiling_for
from ..runtime.progress import Progress
from .metrics import perturbation_curves


def tile_curves(model: torch.nn.Module, x: np.ndarray, maps: np.ndarray,
                targets: np.ndarray, input_size: int | None, overlap: int | None = None,
                n_steps: int = 20, device: str | torch.device = "cpu"
                ) -> Generator[Progress, None, dict[str, np.ndarray]]:
    """Deletion and insertion curves (N, S+1) on the input the probabilities were
    computed on: per image, or per tile (pixels ranked by the tile's part of the map)
    averaged over each image's tiles. Yields between chunks so it can be cancelled."""
    n = x.shape[0]
    grid, side, _ = tiling_for(x.shape[-2:], input_size, overlap)
    sh, sw = (side, side) if side else x.shape[-2:]
    items = [(i, yx) for i in range(n) for yx in grid]
    chunk_size = 16
    out: dict[str, np.ndarray] = {}
    done, total = 0, 2 * len(items)
    for mode in ("deletion", "insertion"):
        acc = np.zeros((n, n_steps + 1), np.float64)
        for b0 in range(0, len(items), chunk_size):
            chunk = items[b0:b0 + chunk_size]
            xs = np.stack([x[i, :, y:y + sh, xx:xx + sw] for i, (y, xx) in chunk])
            ms = np.stack([maps[i, ..., y:y + sh, xx:xx + sw] for i, (y, xx) in chunk])
            tg = np.asarray([targets[i] for i, _ in chunk])
            c = perturbation_curves(model, xs, ms, tg, mode=mode, n_steps=n_steps,
                                    device=device)
            np.add.at(acc, [i for i, _ in chunk], c)
            done += len(chunk)
            yield Progress(done, total, f"{mode} curve: {done}/{total} tile(s)")
        out[mode] = (acc / len(grid)).astype(np.float32)
    return out
