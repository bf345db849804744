"""Reading multichannel microscopy images (TIFF, OME-TIFF, one file per channel).

Supported layouts: channel-first ``CYX``, ``ZCYX``, ``TCYX`` (and the like), channel-last
``YXC`` (RGB-style samples), plain multi-page TIFFs whose pages are channels, and one
2-D file per channel. Channel names and pixel size come from the OME-XML when present
(ImageJ resolution tags otherwise). Every failure raises
:class:`~napari_attribution.core.errors.InputError` naming the file.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError

SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32,
                    np.float32, np.float64)
TIFF_SUFFIXES = (".tif", ".tiff")
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6,
               "\\u00B5m": 1.0}


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


def _check_dtype(arr: np.ndarray, path: Path) -> None:
    if arr.dtype.type not in SUPPORTED_DTYPES:
        raise InputError(f"{path}: pixel type {arr.dtype} is not supported (use 8/16/32-bit "
                         "integers or 32/64-bit floats)")


def _ome_info(xml: str) -> dict[str, Any]:
    """Channel names, pixel size, description of the first OME image."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    q = (lambda t: f"{{{ns}}}{t}") if ns else (lambda t: t)
    image = root.find(q("Image"))
    if image is None:
        return {}
    info: dict[str, Any] = {}
    desc = image.find(q("Description"))
    if desc is not None and desc.text:
        info["description"] = desc.text
    pixels = image.find(q("Pixels"))
    if pixels is None:
        return info
    names = [ch.get("Name") for ch in pixels.findall(q("Channel"))]
    if names and all(names):
        info["channel_names"] = names
    size = []
    for ax in ("Y", "X"):
        v = pixels.get(f"PhysicalSize{ax}")
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
        if v is None:
            break
        size.append(float(v) * _UNIT_TO_UM.get(unit, 1.0))
    if len(size) == 2:
        info["pixel_size"] = (size[0], size[1])
    z = pixels.get("PhysicalSizeZ")
    if z is not None:
        info["z_spacing"] = float(z) * _UNIT_TO_UM.get(pixels.get("PhysicalSizeZUnit", "µm"),
                                                       1.0)
    return info


def _imagej_pixel_size(tif) -> tuple[float, float] | None:
    meta = tif.imagej_metadata or {}
    page = tif.pages.first
    if meta.get("unit") not in ("micron", "um", "µm", "\\u00B5m"):
        return None
    try:
        xr = page.tags["XResolution"].value
        yr = page.tags["YResolution"].value
        return (yr[1] / yr[0], xr[1] / xr[0])
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None


def _resolve_axes(shape: tuple[int, ...], axes: str, path: Path, user_axes: str | None
                  ) -> tuple[tuple[int, ...], str]:
    """Shape and axes after dropping length-1 axes and naming the channel axis."""
    if user_axes is not None:
        axes = user_axes.upper()
        if len(axes) != len(shape):
            # the user's axes may ignore length-1 axes tifffile reports
            shape = tuple(s for s in shape if s > 1)
            if len(axes) != len(shape):
                raise InputError(f"{path}: axes {user_axes!r} given for an image of shape "
                                 f"{tuple(shape)}")
    else:
        axes = axes.upper().replace("S", "C")
        keep = [i for i, a in enumerate(axes) if shape[i] > 1 or a in "YX"]
        shape = tuple(shape[i] for i in keep)
        axes = "".join(axes[i] for i in keep)
        if "C" not in axes:
            # a plain page stack (tifffile's I/Q) without other metadata: pages are channels
            for generic in ("I", "Q"):
                if generic in axes:
                    axes = axes.replace(generic, "C", 1)
                    break
    if len(set(axes)) != len(axes) or not {"Y", "X"} <= set(axes):
        raise InputError(f"{path}: axes {axes!r} must name Y and X once each (and no axis "
                         "twice)")
    return tuple(shape), axes


def _normalise_axes(arr: np.ndarray, axes: str, path: Path, user_axes: str | None
                    ) -> tuple[np.ndarray, str]:
    shape, axes = _resolve_axes(arr.shape, axes, path, user_axes)
    return arr.reshape(shape), axes


def read_image(path: str | Path, axes: str | None = None,
               channel_names: Sequence[str] | None = None) -> ImageData:
    """Read one TIFF/OME-TIFF. ``axes`` (e.g. ``"YXC"``, ``"ZCYX"``) overrides the
    stored or guessed axes; ``channel_names`` overrides stored names."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give an image file (or read a plate)")
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"{path}: the TIFF holds no images")
            series = tif.series[0]
            stored_axes = series.axes
            expected = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
            _check_truncated(tif, path)
            arr = series.asarray()
            ome = _ome_info(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else {}
            ij_size = None if ome.get("pixel_size") else _imagej_pixel_size(tif)
            if not ome.get("description") and not tif.is_ome:
                desc = tif.pages.first.description
                if desc and desc.lstrip().startswith("{"):
                    ome["description"] = desc
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, struct.error, KeyError,
            IndexError, RuntimeError) as err:
        raise InputError(f"cannot read {path} as TIFF (truncated or not a TIFF?): "
                         f"{err}") from None
    if arr is None or arr.size == 0 or arr.nbytes != expected:
        raise InputError(f"cannot read {path}: image data incomplete (truncated file?)")
    _check_dtype(arr, path)
    arr, axes_ = _normalise_axes(arr, stored_axes, path, axes)
    n_c = int(arr.shape[axes_.index("C")]) if "C" in axes_ else 1
    names = list(channel_names) if channel_names else ome.get("channel_names")
    if names is None or len(names) != n_c:
        if channel_names:
            raise InputError(f"{path}: {len(channel_names)} channel names for {n_c} "
                             "channels")
        names = [f"ch{i}" for i in range(n_c)]
    return ImageData(raw=arr, raw_axes=axes_, channel_names=[str(n) for n in names],
                     pixel_size=ome.get("pixel_size") or ij_size,
                     z_spacing=ome.get("z_spacing"), description=ome.get("description"),
                     path=path)


def _check_truncated(tif, path: Path) -> None:
    """Raise if the strips/tiles of an open TIFF point past the end of the file."""
    size = path.stat().st_size
    for page in tif.pages:
        offsets, counts = page.dataoffsets, page.databytecounts
        if offsets and max(o + c for o, c in zip(offsets, counts, strict=True)) > size:
            raise InputError(f"{path} is truncated: image data runs past the end of the "
                             f"file ({size} bytes)")


def read_channel_files(paths: Sequence[str | Path],
                       channel_names: Sequence[str] | None = None) -> ImageData:
    """One file per channel (each 2-D, or 3-D with the same extra axis) -> one image.

    Channel names default to the file stems; all files must have the same shape.
    """
    if not paths:
        raise InputError("no channel files given")
    if channel_names is not None and len(channel_names) != len(paths):
        raise InputError(f"{len(channel_names)} channel names for {len(paths)} files")
    planes, first = [], None
    for p in paths:
        img = read_image(p)
        if img.n_channels != 1:
            raise InputError(f"{p} holds {img.n_channels} channels; one file per channel "
                             "expects single-channel images")
        if first is None:
            first = img
        elif img.raw.shape != first.raw.shape or img.raw_axes != first.raw_axes:
            raise InputError(f"{p} has shape {img.raw.shape} ({img.raw_axes}) but "
                             f"{first.path} has {first.raw.shape} ({first.raw_axes})")
        planes.append(img.raw)
    assert first is not None
    names = list(channel_names) if channel_names else [_stem(Path(p)) for p in paths]
    return ImageData(raw=np.stack(planes), raw_axes="C" + first.raw_axes,
                     channel_names=[str(n) for n in names], pixel_size=first.pixel_size,
                     z_spacing=first.z_spacing, path=Path(paths[0]))


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suf):
            return name[:-len(suf)]
    return path.stem
