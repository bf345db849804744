"""More microscopy formats through bioio (optional): CZI, ND2, LIF, OME-Zarr.

``pip install 'napari-attribution[formats]'`` installs bioio with its CZI, ND2, LIF and
OME-Zarr plugins. :func:`read_image_bioio` turns what bioio reads into the same
:class:`~napari_attribution.io.image_data.ImageData` as the TIFF reader, with the same rules:
a file with several scenes is refused unless one is chosen, bad physical sizes are
ignored with a warning, and the declared size is checked against the limit before any
pixel is read (``lazy=True`` keeps large images on disk as Dask arrays). TIFF files stay
with the TIFF reader; :func:`read_image` sends these suffixes here.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError
from .image_formats import bioio_formats, format_of

#: suffixes read through bioio (from :data:`.image_formats.FORMATS`)
BIOIO_SUFFIXES = tuple(s for f in bioio_formats() for s in f.suffixes)
#: the bioio plugin package per suffix
PLUGINS = {s: f.bioio_plugin for f in bioio_formats() for s in f.suffixes}


def is_bioio_path(path: str | Path) -> bool:
    """True for the suffixes read through bioio (``.czi``, ``.nd2``, ``.lif``, ``.zarr``)."""
    fmt = format_of(path)
    return fmt is not None and fmt.bioio_plugin is not None


def bioio_available() -> bool:
    try:
        import bioio  # noqa: F401
    except ImportError:
        return False
    return True


def _size(value: Any, what: str, path: Path) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        warnings.warn(f"{path}: physical size {what} {value!r} is not a positive number; "
                      "pixel size ignored", stacklevel=4)
        return None
    return v


def read_image_bioio(path: str | Path, channel_names=None, *, scene: int | str | None = None,
                     lazy: bool = False, max_bytes: int | str | None = None):
    """Read one image through bioio as :class:`ImageData` (axes from ``TCZYX``, length-1
    axes dropped). ``scene`` picks one of several scenes (refused otherwise)."""
    from .image_data import ImageData, check_declared_size

    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    plugin = PLUGINS.get(path.suffix.lower(), "a bioio plugin")
    try:
        from bioio import BioImage
    except ImportError:
        raise InputError(f"reading {path.suffix} files needs bioio: pip install "
                         "'napari-attribution[formats]'") from None
    try:
        img = BioImage(path)
        scenes = list(img.scenes)
    except Exception as err:  # noqa: BLE001 - bioio and its plugins raise many kinds
        if type(err).__name__ == "UnsupportedFileFormatError":
            raise InputError(f"cannot read {path}: no bioio plugin for it (pip install "
                             f"{plugin}, or 'napari-attribution[formats]')") from None
        raise InputError(f"cannot read {path} ({type(err).__name__}: {err})") from None
    if scene is None and len(scenes) > 1:
        raise InputError(f"{path} holds {len(scenes)} scenes ({', '.join(scenes[:6])}"
                         f"{' ...' if len(scenes) > 6 else ''}); refusing to read only the "
                         "first: choose one with scene=N")
    try:
        if scene is not None:
            img.set_scene(scene)
        dims = img.dims
        order = "TCZYX"
        shape = tuple(int(getattr(dims, a)) for a in order)
        dtype = np.dtype(img.dtype)
        check_declared_size(path, shape, dtype, max_bytes, order, lazy=lazy)
        is_lazy = bool(lazy)
        data = img.get_image_dask_data(order)
        if not is_lazy:
            data = np.asarray(data.compute())
        names = [str(n) for n in (img.channel_names or [])]
        sizes = img.physical_pixel_sizes
    except InputError:
        raise
    except (IndexError, ValueError, KeyError) as err:
        raise InputError(f"{path}: scene {scene!r} cannot be read ({err})") from None
    except Exception as err:  # noqa: BLE001 - a damaged file inside a plugin
        raise InputError(f"cannot read {path} ({type(err).__name__}: {err})") from None
    keep = [i for i, a in enumerate(order) if shape[i] > 1 or a in "YX"]
    raw = data.reshape(tuple(shape[i] for i in keep))
    axes = "".join(order[i] for i in keep)
    n_c = shape[1]
    if channel_names is not None:
        if len(channel_names) != n_c:
            raise InputError(f"{path}: {len(channel_names)} channel names for {n_c} channels")
        names = [str(n) for n in channel_names]
    elif len(names) != n_c or len(set(names)) != n_c:
        names = [f"ch{i}" for i in range(n_c)]
    py, px = _size(sizes.Y, "Y", path), _size(sizes.X, "X", path)
    return ImageData(raw=raw, raw_axes=axes, channel_names=names,
                     pixel_size=(py, px) if py and px else None,
                     z_spacing=_size(sizes.Z, "Z", path), path=path,
                     extra={"lazy": is_lazy, "reader": "bioio",
                            "scene": img.current_scene})
