"""OME-Zarr (OME-NGFF 0.4) images and HCS plates, read with zarr alone (no bioio).

:func:`read_ngff_image` reads one NGFF image group (``multiscales``; the full-resolution
dataset) as the same :class:`~napari_attribution.io.readers.ImageData` as the TIFF
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError

#: NGFF axis names as this package's axis letters
_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
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


def read_ngff_image(path: str | Path, channel_names=None, *, lazy: bool = False,
                    max_bytes: int | str | None = None):
    """One NGFF image group as :class:`ImageData` (full resolution, length-1 axes dropped).

    The declared size is checked against the limit before any pixel is read; with
    ``lazy=True`` the pixels stay on disk as a Dask array read chunk by chunk.
    """
    from .readers import ImageData, _check_dtype, max_image_bytes, too_large

    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: {path}")
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
    zarr = _require_zarr()
    try:
        arr = zarr.open_array(str(path / rel), mode="r")
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
    shape = tuple(int(s) for s in arr.shape)
    declared = math.prod(shape) * np.dtype(arr.dtype).itemsize
    limit = max_image_bytes(max_bytes)
    if declared > limit and not lazy:
        raise too_large(path, shape, arr.dtype, limit)
    if lazy:
        import dask.array as da

        data = da.from_zarr(arr)
    else:
        data = np.asarray(arr[...])
    _check_dtype(data, path)
    keep = [i for i, a in enumerate(letters) if shape[i] > 1 or a in "YX"]
    raw = data.reshape(tuple(shape[i] for i in keep))
    raw_axes = "".join(letters[i] for i in keep)
    n_c = shape[letters.index("C")] if "C" in letters else 1
    omero = _attrs(path).get("omero") or {}
    labels = [str(ch.get("label", "")) for ch in omero.get("channels") or []
              if isinstance(ch, dict)]
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
                     path=path, extra={"lazy": bool(lazy), "reader": "ngff"})


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
    field order), with channel names from the first field's ``omero`` labels."""
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
        well_dir = path / wpath
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
            field_dir = well_dir / fpath
            if not fpath or not is_ngff_image(field_dir):
                raise InputError(f"{field_dir}: field {fpath!r} of well {wpath} is not an "
                                 "OME-Zarr image")
            if names is None:
                names = tuple(read_ngff_image(field_dir, lazy=True).channel_names)
            out.append(NgffField(well, fpath, field_dir, names))
    return out
