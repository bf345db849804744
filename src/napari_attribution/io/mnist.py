"""Reader for MNIST in its original IDX format (optionally gzip-compressed).

Only numpy and the standard library; reads local files, never the network.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..core.runtime.errors import InputError

_SPLITS = {"test": "t10k", "train": "train"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).exists():
            return root / name
    raise InputError(f"MNIST file {stem}(.gz) not found in {root}")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array of its declared shape."""
    path = Path(path)
    try:
        with _open(path) as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise InputError(f"{path}: unknown IDX data type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path} is truncated (header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[code])
    n = int(np.prod(shape)) if shape else 0
    if len(data) - header < n * dtype.itemsize:
        raise InputError(f"{path} is truncated: expected {n} values of shape {shape}")
    arr = np.frombuffer(data, dtype=dtype, count=n, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else arr.copy()


def load_mnist(root: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST from ``root``: ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    ``split`` is ``"test"`` (``t10k-*``) or ``"train"``; files may be gzip-compressed.
    """
    root = Path(root)
    if split not in _SPLITS:
        raise InputError(f"unknown MNIST split {split!r}; use one of {sorted(_SPLITS)}")
    if not root.is_dir():
        raise InputError(f"MNIST folder {root} does not exist")
    prefix = _SPLITS[split]
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(
            f"MNIST files in {root} do not match: images {images.shape}, labels {labels.shape}"
        )
    return images.astype(np.uint8), labels.astype(np.int64)
