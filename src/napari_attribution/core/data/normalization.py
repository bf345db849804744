"""Per-channel percentile normalisation: per field of view, per crop or per dataset.

Pixels are mapped so that the ``low`` percentile becomes 0 and the ``high`` percentile 1
(no clipping). Modes (:data:`MODES`):

* ``per_field``: percentiles of each field of view, per channel. Plate crops are cut from
  fields normalised this way (the default for plates); at inference the bundle applies it
  to each image given, so give whole fields (``batch`` and ``explain`` on field images do).
* ``per_crop``: percentiles of each training image (crop) and, at inference, of each
  image given. Stretches every crop, erasing brightness differences between crops.
* ``per_dataset``: one set of percentiles fitted on the training images (stored).
* ``none``: raw intensities.

The old names ``per_image`` (per crop in training, per field in ``Plate.sample``) and
``per_plate`` (= ``per_dataset``) are still accepted with a deprecation warning.
The normaliser is stored in model bundles so inference uses the same.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..runtime.errors import InputError

MODES = ("per_field", "per_crop", "per_dataset", "none")
#: What old names meant: ``per_image`` normalised each image it was given (a crop in
#: training, a field in ``Plate.sample``), ``per_plate`` fitted one set on the plate.
_OLD = {"per_image": {"crop": "per_crop", "field": "per_field"},
        "per_plate": {"crop": "per_dataset", "field": "per_dataset"}}


def canonical_mode(name: str, context: str = "crop", warn: bool = True) -> str:
    """A normalisation mode by its current name; old names map with a deprecation warning.

    ``context`` says what ``per_image`` meant where the name comes from: ``"crop"``
    (training, bundles) or ``"field"`` (``Plate.sample``).
    """
    name = str(name).strip().lower().replace("-", "_")
    if name in MODES:
        return name
    if name in _OLD:
        new = _OLD[name][context]
        if warn:
            warnings.warn(f"normalisation {name!r} is deprecated and ambiguous; use {new!r} "
                          f"(choices: {', '.join(MODES)})", DeprecationWarning, stacklevel=3)
        return new
    raise InputError(f"unknown normalisation {name!r}; choose one of {', '.join(MODES)}")


@dataclass
class PercentileNormalizer:
    """Maps each channel's [low, high] percentile range to [0, 1]."""

    mode: str = "per_dataset"
    low: float = 1.0
    high: float = 99.8
    lo: list[float] | None = None
    hi: list[float] | None = None

    def __post_init__(self) -> None:
        self.mode = canonical_mode(self.mode)
        if not 0 <= self.low < self.high <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100; got "
                             f"{self.low}, {self.high}")
        if self.lo is not None or self.hi is not None:
            self.lo, self.hi = check_range(self.lo, self.hi)

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
        # a constant channel: a range just wide enough to keep lo < hi (maps it to 0)
        hi = np.where(hi > lo, hi, lo + np.maximum(np.abs(lo) * 1e-6, 1e-6))
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
        elif self.mode in ("per_field", "per_crop"):
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
        mode = canonical_mode(d.get("mode", "per_dataset"), warn=False)  # old bundles
        return cls(mode=mode, low=d.get("low", 1.0), high=d.get("high", 99.8),
                   lo=d.get("lo"), hi=d.get("hi"))


def check_range(lo, hi) -> tuple[list[float], list[float]]:
    """Per-channel ``lo``/``hi`` as float lists, refused unless both are lists of finite
    numbers of one length with ``lo < hi`` in every channel (``lo >= hi`` would flip or
    blow up the inputs)."""
    try:
        a = np.asarray(lo, np.float64)
        b = np.asarray(hi, np.float64)
    except (TypeError, ValueError):
        raise InputError(f"the normalisation range is not numeric (lo={lo!r}, hi={hi!r})"
                         ) from None
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise InputError(f"the normalisation range needs one lo and one hi per channel; got "
                         f"{np.shape(lo)} and {np.shape(hi)} values")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("the normalisation range holds NaN or infinite values")
    bad = np.flatnonzero(a >= b)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"the normalisation range is empty or reversed in channel {i} "
                         f"(lo={a[i]:g} >= hi={b[i]:g})")
    return a.tolist(), b.tolist()


def declared_normalization(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """What was already applied to a dataset's images upstream, from
    ``metadata["normalization"]`` (a mode name or a dict with ``mode``); None = not said."""
    raw = metadata.get("normalization")
    if raw is None:
        return None
    d = {"mode": raw} if isinstance(raw, str) else dict(raw)
    d["mode"] = canonical_mode(d.get("mode", "none"), context="field", warn=False)
    return d


def training_normalizer(metadata: dict[str, Any], mode: str, images: np.ndarray,
                        train_idx: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8),
                        seed: int = 0) -> tuple[PercentileNormalizer, np.ndarray]:
    """(normaliser to store in the bundle, training-ready images).

    ``mode`` ``"auto"`` keeps the normalisation the data declare as already applied
    (``metadata["normalization"]``, e.g. ``per_field`` for plate crops) and otherwise
    fits ``per_dataset`` on the training images. An explicit mode on raw data is
    applied here; one that contradicts an applied normalisation is an error.
    """
    mode = "auto" if mode == "auto" else canonical_mode(mode)
    declared = declared_normalization(metadata)
    applied = None if declared is None or declared["mode"] == "none" else declared
    if applied is not None:
        if mode not in ("auto", "none", applied["mode"]):
            raise InputError(f"the images were already normalised {applied['mode']}; "
                             f"training normalisation {mode!r} would be applied on top. "
                             f"Use {applied['mode']!r} (or 'auto'), or start from raw images")
        if applied["mode"] == "per_dataset" and not (applied.get("lo") and applied.get("hi")):
            raise InputError("the images were normalised per_dataset upstream, but the "
                             "fitted percentiles (lo, hi per channel) are not given, so raw "
                             "images could not be prepared the same way at inference; give "
                             "raw images (normalisation 'none') or per_field / per_crop ones")
        low, high = applied.get("low", percentiles[0]), applied.get("high", percentiles[1])
        norm = PercentileNormalizer(applied["mode"], low, high, applied.get("lo"),
                                    applied.get("hi"))
        return norm, np.asarray(images, np.float32)
    norm = PercentileNormalizer("per_dataset" if mode == "auto" else mode, *percentiles)
    norm.fit(images[train_idx], seed=seed)
    return norm, norm(images)


def prepare_inputs(normalizer: PercentileNormalizer, data: Any) -> np.ndarray:
    """Model inputs from raw images, or from a dataset that says how it was normalised.

    ``data`` is an array of raw images (normalised here), or an object with ``images``
    and either ``metadata["normalization"]`` (an ImageSet) or ``normalization`` (plate
    ``FieldCrops``): images already normalised the model's way are used as they are
    (plate crops are cut from normalised fields and cannot be re-normalised per field),
    raw ones are normalised, and a different normalisation is an error.
    """
    if not hasattr(data, "images"):
        return normalizer(np.asarray(data))
    meta = getattr(data, "metadata", None)
    meta = meta if isinstance(meta, dict) else {"normalization": getattr(data, "normalization",
                                                                        None)}
    declared = declared_normalization(meta)
    if declared is None or declared["mode"] == "none":
        return normalizer(np.asarray(data.images))
    if declared["mode"] != normalizer.mode:
        raise InputError(f"these images were normalised {declared['mode']}, but the model "
                         f"expects {normalizer.mode}; load them raw (normalization 'none') "
                         f"or {normalizer.mode}")
    return np.asarray(data.images, np.float32)
