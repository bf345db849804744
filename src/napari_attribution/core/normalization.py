"""Per-channel percentile normalisation, per image or with statistics fitted on a dataset.

Pixels are mapped so that the ``low`` percentile becomes 0 and the ``high`` percentile 1
(no clipping). The fitted form is stored in model bundles so inference uses the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

MODES = ("per_dataset", "per_image", "none")


@dataclass
class PercentileNormalizer:
    """Maps each channel's [low, high] percentile range to [0, 1]."""

    mode: str = "per_dataset"
    low: float = 1.0
    high: float = 99.8
    lo: list[float] | None = None
    hi: list[float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown normalisation {self.mode!r}; choose one of {MODES}")
        if not 0 <= self.low < self.high <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100; got "
                             f"{self.low}, {self.high}")

    @property
    def fitted(self) -> bool:
        return self.mode != "per_dataset" or self.lo is not None

    def fit(self, images: np.ndarray, max_pixels: int = 2_000_000, seed: int = 0
            ) -> PercentileNormalizer:
        """Fit per-channel percentiles on (N, C, H, W) images (subsampled for speed)."""
        if self.mode != "per_dataset":
            return self
        c = images.shape[1]
        flat = np.moveaxis(images, 1, 0).reshape(c, -1)
        if flat.shape[1] > max_pixels:
            rng = np.random.default_rng(seed)
            flat = flat[:, rng.choice(flat.shape[1], max_pixels, replace=False)]
        lo, hi = np.percentile(flat, [self.low, self.high], axis=1)
        self.lo, self.hi = lo.astype(float).tolist(), hi.astype(float).tolist()
        return self

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Normalise (N, C, H, W) or (C, H, W) float images; returns float32."""
        x = np.asarray(images, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if self.mode == "none":
            out = x
        elif self.mode == "per_image":
            lo, hi = np.percentile(x, [self.low, self.high], axis=(2, 3), keepdims=True)
            out = (x - lo) / np.maximum(hi - lo, 1e-6)
        else:
            if self.lo is None or self.hi is None:
                raise InputError("per-dataset normalisation used before it was fitted")
            if len(self.lo) != x.shape[1]:
                raise InputError(f"normaliser was fitted on {len(self.lo)} channels; images "
                                 f"have {x.shape[1]}")
            lo = np.asarray(self.lo, np.float32)[None, :, None, None]
            hi = np.asarray(self.hi, np.float32)[None, :, None, None]
            out = (x - lo) / np.maximum(hi - lo, 1e-6)
        out = out.astype(np.float32, copy=False)
        return out[0] if single else out

    def to_dict(self) -> dict:
        return {"mode": self.mode, "low": self.low, "high": self.high,
                "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, d: dict) -> PercentileNormalizer:
        return cls(mode=d.get("mode", "per_dataset"), low=d.get("low", 1.0),
                   high=d.get("high", 99.8), lo=d.get("lo"), hi=d.get("hi"))
