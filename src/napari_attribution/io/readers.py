"""Reading multichannel microscopy images (TIFF, OME-TIFF, one file per channel).

:func:`read_image` is the one entry point for every format: TIFF here, OME-Zarr image
groups with zarr (:mod:`.ngff`), CZI/ND2/LIF through bioio (:mod:`.formats`).

Supported layouts: channel-first ``CYX``, ``ZCYX``, ``TCYX`` (and the like), channel-last
``YXC`` (RGB-style samples), plain multi-page TIFFs whose pages are channels, and one
2-D file per channel. Channel names and pixel size come from the OME-XML when present
(ImageJ resolution tags otherwise). Every failure raises
:class:`~napari_attribution.core.runtime.errors.InputError` naming the file.

The reader never guesses: a file whose pages do not match its OME metadata (planes
missing, pages of other shapes), a damaged page chain, or several images of different
shapes is refused with a message rather than read in part; bad physical sizes (0, NaN,
negative) are ignored with a warning; an image whose declared size exceeds the limit
(:func:`max_image_bytes`, default 4 GiB, ``NAPARI_ATTRIBUTION_MAX_IMAGE_BYTES`` or
``max_bytes=``) is refused before anything is allocated, or read lazily as a Dask array
when the caller passes ``lazy=True``.
"""

from __future__ import annotations

import logging
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError
from .image_data import (  # noqa: F401 - ImageData and the size rule are the readers' API too
    MAX_BYTES_ENV,
    ImageData,
    check_declared_size,
    check_dtype,
    fmt_bytes,
    max_image_bytes,
    too_large,
)
from .image_formats import format_of, suffixes

#: suffixes of the TIFF reader (from :data:`.image_formats.FORMATS`)
TIFF_SUFFIXES = suffixes("tiff")
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6,
               "\\u00B5m": 1.0}


def _physical_size(value: str | None, unit: str | None, what: str, where: str
                   ) -> float | None:
    """A physical size in micrometres, or None (with a warning) when it is unusable."""
    if value is None:
        return None
    factor = _UNIT_TO_UM.get(unit or "µm")
    try:
        size = float(value)
    except ValueError:
        size = math.nan
    if factor is None:
        warnings.warn(f"{where}: unknown unit {unit!r} for {what}; pixel size ignored",
                      stacklevel=4)
        return None
    if not (math.isfinite(size) and size > 0):
        warnings.warn(f"{where}: {what} {value!r} is not a positive number; pixel size "
                      "ignored (layers get scale 1)", stacklevel=4)
        return None
    return size * factor


def _ome_planes(xml: str) -> tuple[int, int, int] | None:
    """(planes declared, SizeY, SizeX) of the first OME image, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    q = (lambda t: f"{{{ns}}}{t}") if ns else (lambda t: t)
    image = root.find(q("Image"))
    pixels = None if image is None else image.find(q("Pixels"))
    if pixels is None:
        return None
    try:
        sizes = {k: int(pixels.get(f"Size{k}", "1")) for k in "CZTYX"}
    except ValueError:
        return None
    channels = pixels.findall(q("Channel"))
    spp = 1
    if channels:
        try:
            spp = max(1, int(channels[0].get("SamplesPerPixel", "1")))
        except ValueError:
            spp = 1
    return sizes["C"] * sizes["Z"] * sizes["T"] // spp, sizes["Y"], sizes["X"]


def _ome_info(xml: str, where: str = "") -> dict[str, Any]:
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
    size = [_physical_size(pixels.get(f"PhysicalSize{ax}"),
                           pixels.get(f"PhysicalSize{ax}Unit"), f"PhysicalSize{ax}", where)
            for ax in ("Y", "X")]
    if size[0] is not None and size[1] is not None:
        info["pixel_size"] = (size[0], size[1])
    z = _physical_size(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit"),
                       "PhysicalSizeZ", where)
    if z is not None:
        info["z_spacing"] = z
    return info


def _imagej_pixel_size(tif) -> tuple[float, float] | None:
    meta = tif.imagej_metadata or {}
    page = tif.pages.first
    if meta.get("unit") not in ("micron", "um", "µm", "\\u00B5m"):
        return None
    try:
        xr = page.tags["XResolution"].value
        yr = page.tags["YResolution"].value
        size = (yr[1] / yr[0], xr[1] / xr[0])
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in size):
        warnings.warn(f"{tif.filehandle.path}: ImageJ resolution gives pixel size {size}; "
                      "ignored", stacklevel=3)
        return None
    return size


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


class _TiffLog(logging.Handler):
    """Collects what tifffile logs while a file is open: tifffile reports damaged page
    chains and OME metadata that does not fit the pages as log records, then reads on
    (zero-filling missing planes), so the records are the only trace of a bad file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _TiffLog:
        logger = logging.getLogger("tifffile")
        self._propagate = logger.propagate
        logger.addHandler(self)
        logger.propagate = False  # reported as a clear error instead
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("tifffile")
        logger.removeHandler(self)
        logger.propagate = self._propagate

    def check(self, path: Path) -> None:
        """Raise for logged damage or OME metadata that does not match the pages."""
        for rec in self.records:
            msg = rec.getMessage()
            if rec.levelno >= logging.ERROR:
                raise InputError(f"{path} is damaged (truncated or corrupt TIFF): "
                                 f"{_strip_repr(msg)}")
            if "OME series" in msg:
                raise InputError(f"{path}: the OME metadata does not match the pages in the "
                                 f"file ({_strip_repr(msg)}); refusing to guess which "
                                 "planes are which")


def _strip_repr(msg: str) -> str:
    """tifffile's log message without its leading ``<tifffile.X ...>`` object repr."""
    return msg.split("> ", 1)[1] if msg.startswith("<") and "> " in msg else msg


def _pick_series(tif, series: int | None, path: Path):
    all_series = tif.series
    if series is not None:
        if not 0 <= int(series) < len(all_series):
            raise InputError(f"{path} holds {len(all_series)} image(s); series {series} "
                             "does not exist")
        return int(series), all_series[int(series)]
    if len(all_series) > 1:
        shapes = ", ".join(f"{tuple(s.shape)} {s.axes}" for s in all_series[:6])
        raise InputError(f"{path} holds {len(all_series)} images of different shapes or "
                         f"kinds ({shapes}{' ...' if len(all_series) > 6 else ''}); "
                         "refusing to read only the first: choose one with series=N, or "
                         "save one image per file")
    return 0, all_series[0]


def _check_ome_planes(tif, series, path: Path) -> None:
    """OME SizeC x SizeZ x SizeT planes of SizeY x SizeX must all be in the file."""
    if any(p is None for p in series.pages):
        missing = sum(p is None for p in series.pages)
        raise InputError(f"{path}: {missing} of the {len(series.pages)} planes its metadata "
                         "declares are missing from the file (cut short?)")
    if not (tif.is_ome and tif.ome_metadata) or len(tif.series) != 1:
        return
    declared = _ome_planes(tif.ome_metadata)
    if declared is None:
        return
    planes, size_y, size_x = declared
    shape = dict(zip(series.axes, series.shape, strict=True))
    if (shape.get("Y"), shape.get("X")) != (size_y, size_x):
        raise InputError(f"{path}: OME metadata declares {size_y}x{size_x} pixels but the "
                         f"pages are {shape.get('Y')}x{shape.get('X')}")
    if len(tif.pages) < planes:
        raise InputError(f"{path}: OME metadata declares {planes} planes (SizeC x SizeZ x "
                         f"SizeT) but the file holds {len(tif.pages)} page(s)")


def _series_axes(series) -> str:
    """The series' axes, or, where tifffile's guess contradicts its own pages (it can for
    length-1 axes: ``XYX`` for shape (1, 1, 1)), generic ``Q`` axes then the page axes."""
    axes, page_axes = series.axes, series.keyframe.axes
    shape, page_shape = tuple(series.shape), tuple(series.keyframe.shape)
    valid = len(set(axes)) == len(axes) and axes.endswith(page_axes)
    if valid or len(shape) < len(page_shape) or shape[len(shape) - len(page_shape):] \
            != page_shape:
        return axes
    return "Q" * (len(shape) - len(page_shape)) + page_axes


def _lazy_array(path: Path, index: int):
    """The series as a Dask array read chunk by chunk through tifffile's Zarr store."""
    try:
        import dask.array as da
        import tifffile
        import zarr
    except ImportError:
        raise InputError(f"{path} is larger than the size limit and reading it lazily needs "
                         "dask and zarr: pip install 'napari-attribution[batch]'") from None
    store = tifffile.imread(path, aszarr=True, series=index)
    z = zarr.open(store, mode="r")
    if not hasattr(z, "shape"):  # a pyramid: level 0 is the full resolution
        z = z["0"]
    return da.from_zarr(z)


def read_image(path: str | Path, axes: str | None = None,
               channel_names: Sequence[str] | None = None, *, series: int | None = None,
               lazy: bool = False, max_bytes: int | str | None = None,
               fill_missing: bool | None = None) -> ImageData:
    """Read one TIFF/OME-TIFF (or OME-Zarr image group, or a bioio format). ``axes``
    (e.g. ``"YXC"``, ``"ZCYX"``) overrides the stored or guessed axes;
    ``channel_names`` overrides stored names; ``series`` picks one image of a file
    holding several (refused otherwise).

    Images whose declared size exceeds :func:`max_image_bytes` (``max_bytes``) are
    refused before reading (:func:`check_declared_size`, one rule for every format).
    With ``lazy=True`` (napari, batch) images over 256 MiB are returned as a Dask array
    (``raw``, ``extra["lazy"]``) read chunk by chunk on demand, whatever their size.
    An OME-Zarr image with chunks missing on disk is refused unless ``fill_missing``
    (or ``NAPARI_ATTRIBUTION_ALLOW_MISSING_CHUNKS=1``) allows reading them as the fill
    value, with an ``io.ngff.MissingChunksWarning``.
    """
    import tifffile

    from .ngff import is_ngff_image, read_ngff_image

    path = Path(path)
    if is_ngff_image(path):  # OME-Zarr image group: read with zarr, same rules
        if axes is not None or series is not None:
            raise InputError(f"{path}: axes= and series= apply to TIFF files; OME-Zarr "
                             "images name their axes")
        return read_ngff_image(path, channel_names, lazy=lazy, max_bytes=max_bytes,
                               fill_missing=fill_missing)
    fmt = format_of(path)
    if fmt is not None and fmt.name != "tiff":  # CZI, ND2, LIF, OME-Zarr: bioio, same rules
        if axes is not None or series is not None:
            raise InputError(f"{path}: axes= and series= apply to TIFF files; bioio reads "
                             "the axes from the file (scenes: io.formats.read_image_bioio)")
        return fmt.load_reader()(path, channel_names, lazy=lazy, max_bytes=max_bytes)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give an image file (or read a plate)")
    limit = max_image_bytes(max_bytes)
    is_lazy = False
    try:
        with _TiffLog() as log, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"{path}: the TIFF holds no images")
            index, chosen = _pick_series(tif, series, path)
            log.check(path)
            _check_ome_planes(tif, chosen, path)
            stored_axes = _series_axes(chosen)
            shape = tuple(int(n) for n in chosen.shape)
            if not shape or min(shape) == 0:
                raise InputError(f"{path}: the image has no pixels (shape {shape})")
            expected = math.prod(shape) * np.dtype(chosen.dtype).itemsize
            _check_truncated(tif, path)
            is_lazy = check_declared_size(path, shape, chosen.dtype, limit, lazy=lazy)
            arr = _lazy_array(path, index) if is_lazy else chosen.asarray()
            log.check(path)
            where = str(path)
            ome = (_ome_info(tif.ome_metadata, where) if tif.is_ome and tif.ome_metadata
                   else {})
            ij_size = None if ome.get("pixel_size") else _imagej_pixel_size(tif)
            if not ome.get("description") and not tif.is_ome:
                desc = tif.pages.first.description
                if desc and desc.lstrip().startswith("{"):
                    ome["description"] = desc
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: not enough memory for {fmt_bytes(expected)} of pixels; "
                         f"lower {MAX_BYTES_ENV} or open it lazily") from None
    except Exception as err:  # noqa: BLE001 - any failure inside tifffile is a bad file
        raise InputError(f"cannot read {path} as TIFF (damaged or not a TIFF?): "
                         f"{type(err).__name__}: {err}") from None
    if arr is None or arr.size == 0 or (not is_lazy and arr.nbytes != expected):
        raise InputError(f"cannot read {path}: image data incomplete (truncated file?)")
    check_dtype(arr, path)
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
                     path=path, extra={"lazy": is_lazy, "series": index})


def read_array(path: str | Path, axes: str | None = None, reduce: str | int = "max", *,
               series: int | None = None, lazy: bool = False,
               max_bytes: int | str | None = None):
    """(C, H, W) pixels of one image file, extra axes (Z, T) reduced by ``reduce``.

    The one call for code that needs one field as an array (plates, batch): all of
    :func:`read_image`'s checks apply; with ``lazy=True`` an image over the size limit
    comes back as a Dask array instead of being refused.
    """
    return read_image(path, axes=axes, series=series, lazy=lazy,
                      max_bytes=max_bytes).as_chw(reduce)


def _check_truncated(tif, path: Path) -> None:
    """Raise if the strips/tiles of an open TIFF point past the end of the file."""
    size = path.stat().st_size
    for page in tif.pages:
        offsets, counts = page.dataoffsets, page.databytecounts
        if offsets and max(o + c for o, c in zip(offsets, counts, strict=True)) > size:
            raise InputError(f"{path} is truncated: image data runs past the end of the "
                             f"file ({size} bytes)")
        key = getattr(page, "keyframe", None) or page
        nbytes = int(getattr(key, "nbytes", 0))
        # uncompressed strips hold exactly the pixels (a pad byte per strip at most):
        # anything else is a damaged file, e.g. compressed data whose tag was lost
        if (offsets and nbytes and int(key.compression) == 1 and not key.is_tiled
                and not nbytes <= sum(counts) <= nbytes + len(counts)):
            raise InputError(f"{path} is damaged: its uncompressed strips hold "
                             f"{sum(counts)} bytes for {nbytes} bytes of pixels")


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
    for suf in (*(f".ome{s}" for s in TIFF_SUFFIXES), *TIFF_SUFFIXES):
        if name.lower().endswith(suf):
            return name[:-len(suf)]
    return path.stem
