"""Large fields of view, region by region: never the whole field in memory.

A field whose float32 pixels (after downsampling) exceed :data:`LARGE_FIELD_BYTES`
(or any field, with ``regions=True``) is opened lazily (``io.readers`` gives a Dask
array over the file's chunks) and cut into square regions of ``region_size`` pixels.
Three passes over the regions, each holding one region at a time:

1. **normalisation** (``per_field``/``per_crop`` models only): the field's percentiles
   from a regular subsample of at most :data:`SAMPLE_PIXELS` pixels per channel, so
   every region is normalised with the same field-wide values;
2. **prediction**: the model's class probabilities on each region, averaged weighted by
   region area: the field's probabilities (and its predicted class, the explained
   target unless one is given);
3. **maps**: each region, widened by a margin of ``halo`` pixels on every side (half the
   model's input size, else 32) so that tiles near its edge see their surroundings, is
   explained with the public ``core.attribution.explain`` (tiled by ``input_size`` as
   usual); the region's own pixels of the maps are written to the store at once.

Peak memory is a few region-sized arrays whatever the field size. Results differ from
the in-memory path in ways worth knowing: probabilities are an average over regions (not
one forward pass over the field), percentiles come from a subsample, and maps near
region borders can differ slightly (tiles are laid out per region).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ..core.runtime.allocator import release_freed_memory
from ..core.runtime.errors import InputError

LARGE_FIELD_BYTES = 256 * 1024**2  # float32 pixels of one field, as the readers' lazy limit
DEFAULT_REGION_SIZE = 1024
SAMPLE_PIXELS = 4_000_000


def use_regions(shape: tuple[int, int, int], regions: bool | None) -> bool:
    """Whether a (C, H, W) field (after downsampling) is processed region by region:
    ``regions`` True/False forces it; None decides by size (:data:`LARGE_FIELD_BYTES`)."""
    if regions is not None:
        return bool(regions)
    return math.prod(shape) * 4 > LARGE_FIELD_BYTES


def region_grid(h: int, w: int, size: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping (y0, y1, x0, x1) regions of at most ``size`` covering (h, w)."""
    if size < 1:
        raise InputError(f"region size must be at least 1; got {size}")
    return [(y, min(y + size, h), x, min(x + size, w))
            for y in range(0, h, size) for x in range(0, w, size)]


def _compute(win: Any) -> np.ndarray:
    if hasattr(win, "compute"):
        win = win.compute(scheduler="synchronous")  # never the distributed client
    return np.asarray(win)


def read_window(arr: Any, downsample: int, y0: int, y1: int, x0: int, x1: int
                ) -> np.ndarray:
    """(C, y1-y0, x1-x0) float32 pixels of a window given in downsampled coordinates,
    block-averaged from the raw pixels a band of rows at a time (a Dask array is computed
    here, in this thread), so that a downsampled region never needs its raw pixels whole."""
    f = downsample
    if f == 1:
        return _compute(arr[:, y0:y1, x0:x1]).astype(np.float32, copy=False)
    from ..io.plate import block_mean

    out = np.empty((int(arr.shape[0]), y1 - y0, x1 - x0), np.float32)
    band = max(1, 256 // f)
    for b0 in range(y0, y1, band):
        b1 = min(b0 + band, y1)
        raw = _compute(arr[:, b0 * f:b1 * f, x0 * f:x1 * f]).astype(np.float32, copy=False)
        out[:, b0 - y0:b1 - y0] = block_mean(raw, f)
    return out


def _widen(a0: int, a1: int, length: int, halo: int, minimum: int) -> tuple[int, int]:
    """[a0, a1) widened by ``halo`` each side within [0, length), at least ``minimum``."""
    s, e = max(0, a0 - halo), min(length, a1 + halo)
    if e - s < minimum:
        e = min(length, s + minimum)
        s = max(0, e - minimum)
    return s, e


class RegionNormalizer:
    """The model's preprocessing for one field applied region by region: percentile
    normalisation per field uses the field's percentiles (estimated once from a
    subsample), per-dataset or no normalisation apply as they are."""

    def __init__(self, clf: Any, arr: Any, downsample: int, shape: tuple[int, int],
                 region_size: int) -> None:
        from ..core.data.normalization import PercentileNormalizer

        self.clf = clf
        self.fixed = None
        norm = getattr(clf, "normalizer", None)
        if isinstance(norm, PercentileNormalizer) and norm.mode in ("per_field", "per_crop"):
            lo, hi = field_percentiles(arr, downsample, shape, region_size, norm.low,
                                       norm.high)
            self.fixed = PercentileNormalizer("per_dataset", norm.low, norm.high,
                                              lo.tolist(), hi.tolist())
        # otherwise the model's own preprocessing, region by region (per-dataset
        # percentiles and none are the same; a bioimage.io package's per-sample
        # statistics are then per region)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        if self.fixed is not None:
            return self.fixed(window)
        return np.asarray(self.clf.prepare(window), np.float32)


def field_percentiles(arr: Any, downsample: int, shape: tuple[int, int], region_size: int,
                      low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``low`` and ``high`` percentiles of a field from every s-th pixel in
    y and x (s chosen for at most :data:`SAMPLE_PIXELS` pixels), read region by region."""
    h, w = shape
    s = max(1, math.ceil(math.sqrt(h * w / SAMPLE_PIXELS)))
    parts = []
    for y0, y1, x0, x1 in region_grid(h, w, region_size):
        win = read_window(arr, downsample, y0, y1, x0, x1)
        parts.append(win[:, (-y0) % s::s, (-x0) % s::s].reshape(win.shape[0], -1))
    flat = np.concatenate(parts, axis=1)
    lo, hi = np.percentile(flat, [low, high], axis=1)
    return lo.astype(np.float64), hi.astype(np.float64)


def _probabilities(clf: Any, x: np.ndarray, device: Any,
                   input_size: int | None = None) -> np.ndarray:
    """Class probabilities of one normalised region (C, H, W): one pass, or the mean over
    non-overlapping tiles of ``input_size`` when the region is larger."""
    import torch

    from ..core.models.classifier import frozen

    if input_size is not None and max(x.shape[-2:]) > int(input_size) \
            and min(x.shape[-2:]) >= int(input_size):
        from ..core.models.inference import tile_probabilities
        from ..core.runtime.progress import run_generator

        with frozen(clf.model, device) as net:
            probs, _ = run_generator(tile_probabilities(
                net, np.ascontiguousarray(x[None], np.float32), int(input_size), overlap=0,
                device=device))
        p = probs[0]
    else:
        with frozen(clf.model, device) as net, torch.no_grad():
            logits = net(torch.from_numpy(np.ascontiguousarray(x[None])).to(device)).float()
        p = torch.softmax(logits, 1).cpu().numpy()[0]
    if not np.isfinite(p).all():
        raise InputError("the model gave non-finite class probabilities on a region of "
                         "the field")
    return p.astype(np.float64)


def process_large_field(store: Any, index: int, field: str | None, record: Any, arr: Any,
                        clf: Any, spec: Any, device: str) -> None:
    """Compute and store one large field's outputs region by region (see the module
    docstring); ``arr`` is its raw (C, H, W) pixels, lazy or not. Marks it done last."""
    from ..core.attribution.explain import explain
    from ..core.runtime.progress import run_generator
    from .store import map_mass

    t0 = time.perf_counter()
    f = int(spec.downsample)
    h, w = int(arr.shape[1]) // f, int(arr.shape[2]) // f
    if (h, w) != tuple(spec.image_shape):
        raise InputError(f"image {record.id} is {h}x{w} pixels but the plate's images are "
                         f"{spec.image_shape[0]}x{spec.image_shape[1]}"
                         f"{' after downsampling' if f > 1 else ''}; one run needs "
                         "equal-sized images")
    size = int(spec.region_size)
    grid = region_grid(h, w, size)
    normalise = RegionNormalizer(clf, arr, f, (h, w), size)
    release_freed_memory()
    prob_sum = None
    for y0, y1, x0, x1 in grid:
        x = normalise(read_window(arr, f, y0, y1, x0, x1))
        p = _probabilities(clf, x, device, spec.input_size) * ((y1 - y0) * (x1 - x0))
        prob_sum = p if prob_sum is None else prob_sum + p
    release_freed_memory()
    probs = (prob_sum / (h * w)).astype(np.float32)
    if spec.target is None:
        target = int(probs.argmax())
    else:
        if not 0 <= spec.target < probs.shape[0]:
            raise InputError(f"target class {spec.target} is out of range: the model has "
                             f"{probs.shape[0]} classes")
        target = int(spec.target)
    methods = list(spec.methods)
    mass: dict[str, np.ndarray | None] = {m: None for m in methods}
    if methods:
        tile = int(spec.input_size) if spec.input_size else 0
        halo = tile // 2 if tile else 32
        for y0, y1, x0, x1 in grid:
            ys, ye = _widen(y0, y1, h, halo, tile)
            xs, xe = _widen(x0, x1, w, halo, tile)
            x = normalise(read_window(arr, f, ys, ye, xs, xe))
            maps: dict[str, np.ndarray] = {}
            for method, params in spec.methods.items():
                result = run_generator(explain(
                    clf.model, x[None], targets=[target], method=method,
                    per_channel=spec.per_channel, device=device, batch_size=spec.batch_size,
                    input_size=spec.input_size, **params))
                maps[method] = np.asarray(result.maps[0], np.float32)[
                    ..., y0 - ys:y1 - ys, x0 - xs:x1 - xs]
            store.write_map_region(index, maps, y0, x0, field)
            release_freed_memory()
            for m, v in map_mass(methods, maps).items():
                if v is not None:
                    mass[m] = v if mass[m] is None else mass[m] + v
    store.mark_image(index, probs, {m: target for m in methods},
                     time.perf_counter() - t0, mass)
