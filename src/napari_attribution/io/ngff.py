"""OME-Zarr (OME-NGFF 0.4) images and HCS plates, read with zarr alone (no bioio).

:func:`read_ngff_image` reads one NGFF image group (``multiscales``; the full-resolution
dataset) as the same :class:`~napari_attribution.io.image_data.ImageData` as the TIFF
reader, lazily (a Dask array) when ``lazy=True``; channel names come from the ``omero``
labels, the pixel size from the dataset's scale. :func:`read_ngff_plate` lists the
fields of an NGFF HCS plate (``plate`` -> ``row/col`` wells -> fields) with their well,
field and channel names, for ``napari-attribution batch``. Metadata are read from the
groups' attributes as the 0.4 specification lays them out; anything missing or
inconsistent is an :class:`~napari_attribution.core.runtime.errors.InputError` naming the path.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError

#: NGFF axis names as this package's axis letters
_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
#: set to 1 to read OME-Zarr images with missing chunks as the fill value (with a warning)
FILL_MISSING_ENV = "NAPARI_ATTRIBUTION_ALLOW_MISSING_CHUNKS"
_UNIT_TO_UM = {None: 1.0, "micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3,
               "meter": 1e6}


def _attrs(path: Path) -> dict[str, Any]:
    """Group attributes: Zarr v2 ``.zattrs`` or v3 ``zarr.json`` (``ome`` key unwrapped)."""
    v2, v3 = path / ".zattrs", path / "zarr.json"
    try:
        if v2.is_file():
            return dict(json.loads(v2.read_text()))
        if v3.is_file():
            attrs = dict(json.loads(v3.read_text()).get("attributes") or {})
            return {**attrs, **attrs.get("ome", {})} if isinstance(attrs.get("ome"),
                                                                      dict) else attrs
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read its Zarr attributes ({err})") from None
    return {}


def is_ngff_image(path: str | Path) -> bool:
    """True for a folder holding an NGFF image group (``multiscales`` attributes)."""
    path = Path(path)
    return path.is_dir() and "multiscales" in _attrs(path)


def is_ngff_plate(path: str | Path) -> bool:
    """True for a folder holding an NGFF HCS plate (``plate`` attributes)."""
    path = Path(path)
    return path.is_dir() and isinstance(_attrs(path).get("plate"), dict)


def _require_zarr():
    try:
        import zarr
    except ImportError:
        raise InputError("reading OME-Zarr needs zarr and dask: pip install "
                         "'napari-attribution[batch]'") from None
    return zarr


class MissingChunksWarning(UserWarning):
    """An OME-Zarr array read with missing chunks filled (``fill_missing=True``)."""


def allow_missing_chunks(fill_missing: bool | None = None) -> bool:
    """Whether missing Zarr chunks may be read as the fill value: ``fill_missing``, else
    the environment variable ``NAPARI_ATTRIBUTION_ALLOW_MISSING_CHUNKS`` (``1``/``true``),
    else False (an image with missing chunks is refused)."""
    if fill_missing is not None:
        return bool(fill_missing)
    return os.environ.get(FILL_MISSING_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` for a path named in NGFF metadata, refused (:class:`InputError`)
    unless it stays inside ``root``: no absolute path, no ``..``, no link leading out."""
    text = str(rel)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if (not text or text.startswith(("/", "\\")) or PureWindowsPath(text).drive
            or ".." in parts):
        raise InputError(f"{root}: {what} {text!r} in the OME-Zarr metadata points outside "
                         "the store (absolute or '..' paths are refused)")
    target = root / text
    try:
        escapes = not target.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        escapes = True
    if escapes:
        raise InputError(f"{root}: {what} {text!r} in the OME-Zarr metadata leads outside "
                         "the store (through a link); refused")
    return target


def missing_chunks(arr: Any, folder: Path) -> tuple[int, int]:
    """(missing, expected): chunks (shards for sharded Zarr v3) of the Zarr array stored in
    ``folder`` that are absent on disk, which zarr would read as the fill value. Counted
    from one listing of the folder (each file name decoded as a chunk key), without
    reading a chunk; the cost follows the files on disk, not the declared size."""
    unit = tuple(int(n) for n in (getattr(arr, "shards", None) or arr.chunks))
    grid = tuple(max(1, -(-int(s) // c)) for s, c in zip(arr.shape, unit, strict=True))
    meta = arr.metadata
    encoding = getattr(meta, "chunk_key_encoding", None)
    if encoding is not None:  # Zarr v3: "c/0/1/2" (default) or "0.1.2" (v2 encoding)
        sep = encoding.separator
        prefix = "c" + sep if encoding.name == "default" else ""
    else:  # Zarr v2: "0.1.2" or "0/1/2"
        sep, prefix = getattr(meta, "dimension_separator", None) or ".", ""

    def decode(key: str) -> tuple[int, ...]:
        if not key.startswith(prefix):
            raise ValueError(key)
        return tuple(int(k) for k in key[len(prefix):].split(sep))
    present: set[tuple[int, ...]] = set()
    for dirpath, _dirs, files in os.walk(folder):
        rel = Path(dirpath).relative_to(folder).as_posix()
        for name in files:
            key = name if rel == "." else f"{rel}/{name}"
            try:
                coords = tuple(decode(key))
            except (ValueError, IndexError, TypeError):
                continue  # metadata files and anything that is not a chunk
            if (len(coords) == len(grid)
                    and all(0 <= c < g for c, g in zip(coords, grid, strict=True))
                    and meta.encode_chunk_key(coords) == key):
                present.add(coords)
    expected = math.prod(grid)
    return expected - len(present), expected


def check_chunks(arr: Any, folder: Path, where: Path, rel: str,
                 fill_missing: bool | None = None) -> int:
    """Refuse an array with missing chunks (:class:`InputError` naming the array and how
    many), or, when ``fill_missing`` allows it, warn (:class:`MissingChunksWarning`)
    and return the number of missing chunks."""
    missing, expected = missing_chunks(arr, folder)
    if not missing:
        return 0
    fill = getattr(arr, "fill_value", None)
    what = (f"{where}: {missing} of the {expected} chunks of array {rel!r} are missing "
            "(a copy or upload cut short?)")
    if not allow_missing_chunks(fill_missing):
        raise InputError(f"{what}; refusing to read them as the fill value ({fill}). If the "
                         "image was written without its empty chunks, read it with "
                         "fill_missing=True (--allow-missing-chunks, or "
                         f"{FILL_MISSING_ENV}=1)")
    warnings.warn(f"{what}; they are read as the fill value ({fill}) because missing chunks "
                  "were allowed", MissingChunksWarning, stacklevel=3)
    return missing


def _open_dataset(path: Path) -> tuple[Any, dict, dict, list[str], str, str]:
    """The full-resolution array of the NGFF image group at ``path`` (opened, not read):
    (array, multiscale, dataset, axis names, axis letters, dataset path)."""
    ms = _attrs(path).get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise InputError(f"{path} is not an OME-Zarr image (no multiscales metadata)")
    m = ms[0]
    try:
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in m.get("axes") or []]
        dataset = m["datasets"][0]
        rel = str(dataset["path"])
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{path}: its multiscales metadata name no dataset") from None
    folder = inside(path, rel, "dataset path")
    zarr = _require_zarr()
    try:
        arr = zarr.open_array(str(folder), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many kinds for a bad array
        raise InputError(f"{path}: cannot open dataset {rel!r} ({type(err).__name__}: "
                         f"{err})") from None
    if not axes:  # NGFF 0.3 and older: always tczyx, the trailing ones present
        axes = list("tczyx"[-arr.ndim:])
    if len(axes) != arr.ndim:
        raise InputError(f"{path}: {len(axes)} axes in the metadata for a {arr.ndim}-D "
                         "dataset")
    letters = "".join(_AXES.get(a.lower(), "Q") for a in axes)
    if not {"Y", "X"} <= set(letters) or len(set(letters)) != len(letters):
        raise InputError(f"{path}: axes {axes} must name y and x once each")
    return arr, m, dataset, axes, letters, rel


def read_ngff_image(path: str | Path, channel_names=None, *, lazy: bool = False,
                    max_bytes: int | str | None = None, fill_missing: bool | None = None):
    """One NGFF image group as :class:`ImageData` (full resolution, length-1 axes dropped).

    Before any pixel is read, the declared size is checked against the readers' one
    limit (:func:`~napari_attribution.io.image_data.check_declared_size`), the dataset path
    must stay inside the group, and every chunk must be on disk: missing chunks are an
    :class:`InputError` unless ``fill_missing`` (or ``NAPARI_ATTRIBUTION_ALLOW_MISSING_
    CHUNKS=1``) allows them, then a :class:`MissingChunksWarning`. With ``lazy=True``
    a large image stays on disk as a Dask array read chunk by chunk.
    """
    from .image_data import ImageData, check_declared_size, check_dtype

    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: {path}")
    arr, m, dataset, axes, letters, rel = _open_dataset(path)
    shape = tuple(int(s) for s in arr.shape)
    check_declared_size(path, shape, arr.dtype, max_bytes, lazy=lazy)
    is_lazy = bool(lazy)  # chunked on disk already: lazy reads cost nothing extra
    check_dtype(np.empty(0, arr.dtype), path)
    n_missing = check_chunks(arr, path / rel, path, rel, fill_missing)
    if is_lazy:
        import dask.array as da

        data = da.from_zarr(arr)
    else:
        data = np.asarray(arr[...])
    keep = [i for i, a in enumerate(letters) if shape[i] > 1 or a in "YX"]
    raw = data.reshape(tuple(shape[i] for i in keep))
    raw_axes = "".join(letters[i] for i in keep)
    n_c = shape[letters.index("C")] if "C" in letters else 1
    labels = _labels(path)
    if channel_names is not None:
        if len(channel_names) != n_c:
            raise InputError(f"{path}: {len(channel_names)} channel names for {n_c} "
                             "channels")
        names = [str(n) for n in channel_names]
    elif len(labels) == n_c and all(labels) and len(set(labels)) == n_c:
        names = labels
    else:
        names = [f"ch{i}" for i in range(n_c)]
    return ImageData(raw=raw, raw_axes=raw_axes, channel_names=names,
                     pixel_size=_pixel_size(dataset, m.get("axes") or [], axes),
                     path=path, extra={"lazy": is_lazy, "reader": "ngff",
                                       "missing_chunks": n_missing})


def _labels(path: Path) -> list[str]:
    """The ``omero`` channel labels of an image group (may be empty)."""
    omero = _attrs(path).get("omero") or {}
    if not isinstance(omero, dict):
        return []
    return [str(ch.get("label", "")) for ch in omero.get("channels") or []
            if isinstance(ch, dict)]


def _pixel_size(dataset: dict, axis_meta: list, names: list[str]
                ) -> tuple[float, float] | None:
    """(y, x) micrometres from the dataset's scale transformation, if usable."""
    for t in dataset.get("coordinateTransformations") or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            scale = t.get("scale") or []
            if len(scale) != len(names):
                return None
            out = []
            for ax in ("y", "x"):
                i = [n.lower() for n in names].index(ax)
                unit = axis_meta[i].get("unit") if isinstance(axis_meta[i], dict) else None
                factor = _UNIT_TO_UM.get(unit)
                try:
                    v = float(scale[i]) * factor if factor is not None else math.nan
                except (TypeError, ValueError):
                    v = math.nan
                if not (math.isfinite(v) and v > 0):
                    return None
                out.append(v)
            return out[0], out[1]
    return None


@dataclass(frozen=True)
class NgffField:
    """One field of an NGFF HCS plate: well (``A01``), field index, image group path."""

    well: str
    field: str
    path: Path
    channel_names: tuple[str, ...]


def read_ngff_plate(path: str | Path) -> list[NgffField]:
    """Every field of the NGFF HCS plate at ``path`` in plate order (rows, columns, then
    field order), with channel names from the first field's ``omero`` labels.

    Every well and field path must stay inside the plate; no pixel is read. (Fields with
    chunks missing on disk are found by :func:`image_holes`, which batch runs call for
    every image before any work: ``batch.records.check_records``.)"""
    from .plate.plate_map import normalise_well

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"OME-Zarr plate not found: {path}")
    plate = _attrs(path).get("plate")
    if not isinstance(plate, dict):
        raise InputError(f"{path} is not an OME-Zarr HCS plate (no plate metadata)")
    wells = plate.get("wells")
    if not isinstance(wells, list) or not wells:
        raise InputError(f"{path}: the plate metadata list no wells")
    out: list[NgffField] = []
    names: tuple[str, ...] | None = None
    for w in wells:
        wpath = str(w.get("path", "")) if isinstance(w, dict) else ""
        parts = wpath.split("/")
        if len(parts) != 2 or not all(parts):
            raise InputError(f"{path}: well path {wpath!r} is not row/column")
        well_dir = inside(path, wpath, "well path")
        images = (_attrs(well_dir).get("well") or {}).get("images")
        if not isinstance(images, list) or not images:
            raise InputError(f"{well_dir}: the well lists no field images (missing or "
                             "damaged well metadata)")
        try:
            well = normalise_well(parts[0], parts[1])
        except InputError:
            well = f"{parts[0]}{parts[1]}"
        for im in images:
            fpath = str(im.get("path", "")) if isinstance(im, dict) else ""
            if not fpath:
                raise InputError(f"{well_dir}: a field of well {wpath} has no path")
            field_dir = inside(path, f"{wpath}/{fpath}", "field path")
            if not is_ngff_image(field_dir):
                raise InputError(f"{field_dir}: field {fpath!r} of well {wpath} is not an "
                                 "OME-Zarr image")
            if names is None:
                arr, _m, _d, _axes, letters, _rel = _open_dataset(field_dir)
                n_c = int(arr.shape[letters.index("C")]) if "C" in letters else 1
                labels = _labels(field_dir)
                names = tuple(labels) if (len(labels) == n_c and all(labels)
                                          and len(set(labels)) == n_c) else \
                    tuple(f"ch{i}" for i in range(n_c))
            out.append(NgffField(well, fpath, field_dir, names))
    return out


def image_holes(path: str | Path) -> tuple[int, int]:
    """(missing, expected) chunks of the full-resolution array of an NGFF image group,
    from its metadata and one listing of its folder (no pixel read)."""
    path = Path(path)
    arr, _m, _d, _axes, _letters, rel = _open_dataset(path)
    return missing_chunks(arr, path / rel)


def report_holes(what: str, holes: list[tuple[str, int, int]],
                 fill_missing: bool | None = None) -> None:
    """One :class:`InputError` listing the images with missing chunks (name, missing,
    expected), or one :class:`MissingChunksWarning` when ``fill_missing`` (or the
    environment) allows them; nothing when ``holes`` is empty."""
    if not holes:
        return
    shown = ", ".join(f"{name} ({m} of {n} chunks)" for name, m, n in holes[:5])
    text = (f"{len(holes)} {what} have missing chunks "
            f"({sum(m for _, m, _ in holes)} in all): {shown}"
            f"{' ...' if len(holes) > 5 else ''}")
    if not allow_missing_chunks(fill_missing):
        raise InputError(f"{text}; refusing to read them as the fill value. If they were "
                         "written without their empty chunks, allow them with "
                         f"--allow-missing-chunks ({FILL_MISSING_ENV}=1)")
    warnings.warn(f"{text}; they are read as the fill value because missing chunks were "
                  "allowed", MissingChunksWarning, stacklevel=3)
