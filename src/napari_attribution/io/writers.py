"""Writing results: attribution maps and DCMIX weights to OME-TIFF, channel importance to CSV.

OME-TIFF files carry channel names and pixel size in the OME-XML (Fiji and napari show
them) and the full provenance as JSON in the OME ``Image/Description`` element, so
:func:`read_attribution_tiff` gives back exactly what was written.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError
from .atomic import atomic_path, atomic_write, atomic_write_text, check_output

FORMAT = "napari-attribution-result"
FORMAT_VERSION = 1


def _default_axes(ndim: int, shape: tuple[int, ...], channel_names: Sequence[str] | None
                  ) -> str:
    if ndim == 2:
        return "YX"
    if ndim == 3:
        # (C, H, W) when channel names say so, otherwise one map per image (N, H, W)
        if channel_names is not None and len(channel_names) == shape[0]:
            return "CYX"
        return "QYX"
    if ndim == 4:
        return "QCYX"
    raise InputError(f"attribution maps must have 2 to 4 dimensions ((N,)(C,)H,W); got "
                     f"shape {shape}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _base_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    from .. import __version__

    prov = dict(provenance or {})
    prov.setdefault("package_version", __version__)
    prov.setdefault("written", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return prov


def attribution_tiff_path(path: str | Path) -> Path:
    """The file :func:`write_attribution_tiff` writes for ``path`` (``.ome.tif`` added
    when missing); a folder or device is returned unchanged, for the output check."""
    path = Path(path)
    if path.exists() and not path.is_file():
        return path
    if not path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        stem = path.name[:-len(path.suffix)] if path.suffix.lower() in (".tif", ".tiff") \
            else path.name
        path = path.with_name(stem + ".ome.tif")
    return path


def write_attribution_tiff(
    path: str | Path,
    maps: np.ndarray,
    channel_names: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    pixel_size: float | tuple[float, float] | None = None,
    axes: str | None = None,
    name: str = "attribution",
    overwrite: bool = True,
) -> Path:
    """Write attribution maps as an OME-TIFF; returns the path written.

    ``maps`` is (H, W), (N, H, W) (one map per image, OME axis ``Q``), (C, H, W) (when
    ``channel_names`` has C entries) or (N, C, H, W); ``axes`` overrides the guess.
    ``provenance`` (method, parameters, target, model hash, ...) is stored as JSON;
    package version and time are added. ``pixel_size`` is in micrometres, (y, x) or one
    number. The suffix ``.ome.tif`` is added when missing. The file is written atomically
    (:mod:`.atomic`); an existing one is refused unless ``overwrite``.
    """
    import tifffile

    arr = np.asarray(maps)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"attribution maps must be numeric; got dtype {arr.dtype}")
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    axes = (axes or _default_axes(arr.ndim, arr.shape, channel_names)).upper()
    if len(axes) != arr.ndim:
        raise InputError(f"axes {axes!r} do not match maps of shape {arr.shape}")
    names = None if channel_names is None else [str(c) for c in channel_names]
    if names is not None:
        if "C" not in axes:
            raise InputError(f"channel names given but maps of shape {arr.shape} (axes "
                             f"{axes}) have no channel axis")
        if len(names) != arr.shape[axes.index("C")]:
            raise InputError(f"{len(names)} channel names for {arr.shape[axes.index('C')]} "
                             "channels")
    path = attribution_tiff_path(path)

    description = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "axes": axes,
        "shape": list(arr.shape), "channel_names": names,
        "pixel_size": None if pixel_size is None else list(np.broadcast_to(
            np.asarray(pixel_size, dtype=float), (2,)).tolist()),
        "provenance": _base_provenance(provenance),
    }
    meta: dict[str, Any] = {"axes": axes, "Name": name,
                            "Description": json.dumps(description, default=_json_default)}
    if names is not None:
        meta["Channel"] = {"Name": names}
    if pixel_size is not None:
        py, px = description["pixel_size"]
        meta.update(PhysicalSizeY=py, PhysicalSizeX=px, PhysicalSizeYUnit="µm",
                    PhysicalSizeXUnit="µm")
    return atomic_write(path, lambda tmp: tifffile.imwrite(
        tmp, arr, ome=True, metadata=meta, photometric="minisblack"), overwrite,
        "attribution maps")


def read_attribution_tiff(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a file written by :func:`write_attribution_tiff`: (array, metadata).

    The metadata dict holds ``axes``, ``channel_names``, ``pixel_size`` and
    ``provenance``. Any other OME-TIFF is read too (its provenance is then empty).
    """
    from .readers import read_image

    img = read_image(path)
    desc: dict[str, Any] = {}
    if img.description:
        try:
            parsed = json.loads(img.description)
            if isinstance(parsed, dict) and parsed.get("format") == FORMAT:
                desc = parsed
        except ValueError:
            desc = {}
    data = img.raw
    if desc.get("shape") and int(np.prod(desc["shape"])) == data.size:
        data = data.reshape(desc["shape"])  # restore length-1 axes the reader dropped
    meta = {
        "axes": desc.get("axes", img.raw_axes),
        "channel_names": desc.get("channel_names", img.channel_names if "C" in img.raw_axes
                                  else None),
        "pixel_size": desc.get("pixel_size", None if img.pixel_size is None
                               else list(img.pixel_size)),
        "provenance": desc.get("provenance", {}),
        "path": str(Path(path)),
    }
    return data, meta


def write_channel_weights_tiff(
    path: str | Path,
    importance,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write DCMIX mixing weights (K heads x C channels) as a tiny OME-TIFF.

    Shape (K, C, 1, 1), axes ``QCYX``: one named plane per channel whose single pixel is
    that channel's weight in each head; the overall importance and ablation figures go
    into the provenance.
    """
    weights = np.asarray(importance.weights, dtype=np.float32)[:, :, None, None]
    prov = dict(provenance or {})
    prov.setdefault("method", "DCMIX")
    prov["channel_importance"] = importance.to_dict()
    return write_attribution_tiff(path, weights, importance.channel_names, prov,
                                  axes="QCYX", name="DCMIX channel weights",
                                  overwrite=overwrite)


def _importance_rows(importance) -> list[dict]:
    if hasattr(importance, "rows"):
        return list(importance.rows())
    if isinstance(importance, Mapping):
        return [{"channel": str(k), "importance": float(v)} for k, v in importance.items()]
    rows = list(importance)
    if not rows or not isinstance(rows[0], Mapping):
        raise InputError("channel importance must be a ChannelImportance, a {channel: "
                         "value} mapping or a list of row dicts")
    return [dict(r) for r in rows]


def write_importance_csv(path: str | Path, importance,
                         provenance: Mapping[str, Any] | None = None,
                         overwrite: bool = True) -> Path:
    """Write channel importance as CSV (one row per channel); returns the path.

    ``importance`` is a :class:`~napari_attribution.core.channels.importance.ChannelImportance`
    (its ``rows()``), a ``{channel: value}`` mapping or a list of row dicts. With
    ``provenance`` a sidecar ``<name>.provenance.json`` is written next to it. Both are
    written atomically; existing files are refused unless ``overwrite``.
    """
    rows = _importance_rows(importance)
    if not rows:
        raise InputError("no channel importance rows to write")
    path = Path(path)
    side = path.with_name(path.stem + ".provenance.json")
    check_output(path, overwrite, "channel importance")
    if provenance is not None:
        check_output(side, overwrite, "provenance")
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_path(path, overwrite, "channel importance") as tmp, \
            open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if provenance is not None:
        atomic_write_text(side, json.dumps(_base_provenance(provenance), indent=2,
                                           default=_json_default), overwrite, "provenance")
    return path


def read_importance_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by :func:`write_importance_csv` (numbers parsed as float)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for k, v in row.items():
                try:
                    parsed[k] = float(v)
                except (TypeError, ValueError):
                    parsed[k] = v
            out.append(parsed)
    return out
