"""What every image reader returns and the size and pixel-type rules they share.

:class:`ImageData` is one image as read from disk (TIFF, OME-Zarr or a bioio format);
:func:`check_declared_size` is the one size rule applied before any pixel is read and
:func:`check_dtype` the one pixel-type rule. A leaf module: the readers import it, it
imports none of them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError

SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32,
                    np.float32, np.float64)
DEFAULT_MAX_BYTES = 4 * 1024**3
LAZY_ABOVE_BYTES = 256 * 1024**2  # with lazy=True, larger images stay on disk
MAX_BYTES_ENV = "NAPARI_ATTRIBUTION_MAX_IMAGE_BYTES"


@dataclass
class ImageData:
    """One image as read from disk.

    ``raw`` keeps the stored layout (length-1 axes dropped, ``raw_axes`` names them);
    :attr:`data` is the same pixels with the channel axis first, then any other
    non-spatial axes in stored order, then Y, X.
    """

    raw: np.ndarray
    raw_axes: str
    channel_names: list[str]
    pixel_size: tuple[float, float] | None = None  # (y, x) micrometres
    z_spacing: float | None = None
    description: str | None = None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def axes(self) -> str:
        """Axes of :attr:`data`: ``C`` first, ``YX`` last."""
        rest = [a for a in self.raw_axes if a not in "CYX"]
        return "C" + "".join(rest) + "YX"

    @property
    def data(self) -> np.ndarray:
        axes = self.raw_axes
        arr = self.raw
        if "C" not in axes:
            arr, axes = arr[None], "C" + axes
        order = [axes.index(a) for a in self.axes]
        return np.transpose(arr, order)

    @property
    def n_channels(self) -> int:
        return int(self.raw.shape[self.raw_axes.index("C")]) if "C" in self.raw_axes else 1

    def as_chw(self, reduce: str | int = "max") -> np.ndarray:
        """(C, H, W): extra axes (Z, T, ...) reduced by ``"max"``, ``"mean"`` or an index."""
        arr = self.data
        while arr.ndim > 3:
            if reduce == "max":
                arr = arr.max(axis=1)
            elif reduce == "mean":
                arr = arr.mean(axis=1)
            elif isinstance(reduce, int | np.integer):
                if not 0 <= reduce < arr.shape[1]:
                    raise InputError(f"{self.path}: index {reduce} outside axis of length "
                                     f"{arr.shape[1]} ({self.axes})")
                arr = arr[:, int(reduce)]
            else:
                raise InputError(f"unknown reduction {reduce!r}; use 'max', 'mean' or an index")
        return arr


def check_dtype(arr: np.ndarray, path: Path) -> None:
    if arr.dtype.type not in SUPPORTED_DTYPES:
        raise InputError(f"{path}: pixel type {arr.dtype} is not supported (use 8/16/32-bit "
                         "integers or 32/64-bit floats)")


def max_image_bytes(max_bytes: int | str | None = None) -> int:
    """The size limit in bytes: ``max_bytes``, else the environment variable
    ``NAPARI_ATTRIBUTION_MAX_IMAGE_BYTES``, else 4 GiB. Accepts ``"8G"``, ``"512M"``."""
    value: int | str | None = max_bytes if max_bytes is not None else os.environ.get(
        MAX_BYTES_ENV)
    if value is None or value == "":
        return DEFAULT_MAX_BYTES
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        number = int(value)
    else:
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}.get(text[-1:], 1)
        try:
            number = int(float(text[:-1] if scale > 1 else text) * scale)
        except ValueError:
            raise InputError(f"image size limit {value!r} ({MAX_BYTES_ENV}) is not a "
                             "number of bytes like 8G or 500000000") from None
    if number <= 0:
        raise InputError(f"image size limit must be positive; got {value!r}")
    return number


def check_declared_size(path, shape: tuple, dtype, max_bytes: int | str | None = None,
                        axes: str = "", *, lazy: bool = False) -> bool:
    """The one size rule of every reader (TIFF, OME-Zarr, bioio), applied to the size an
    image *declares* before any pixel is read: True when it is to be read lazily (``lazy``
    and over :data:`LAZY_ABOVE_BYTES` or the limit), False to read it into memory; an
    image over :func:`max_image_bytes` that is not read lazily raises :func:`too_large`."""
    limit = max_image_bytes(max_bytes)
    declared = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    if lazy and declared > min(limit, LAZY_ABOVE_BYTES):
        return True
    if declared > limit:
        raise too_large(path, tuple(int(n) for n in shape), dtype, limit, axes)
    return False


def too_large(path, shape: tuple, dtype, limit: int, axes: str = "") -> InputError:
    """The error for an image that declares more than ``limit`` bytes of pixels."""
    declared = math.prod(shape) * np.dtype(dtype).itemsize
    return InputError(
        f"{path} declares {' x '.join(map(str, shape))}{f' ({axes})' if axes else ''} "
        f"{np.dtype(dtype)} pixels ({fmt_bytes(declared)}), more than the "
        f"{fmt_bytes(limit)} limit; raise it with {MAX_BYTES_ENV}=8G (or max_bytes=), "
        "or read it lazily (lazy=True, as the napari reader does)")


def fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover
