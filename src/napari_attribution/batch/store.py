"""The OME-Zarr result store of a batch run: an NGFF HCS plate of attribution maps, atomic
per-image writes and a run fingerprint.

Layout (Zarr format 2, OME-NGFF 0.4)::

    result.zarr/
      .zattrs               plate: NGFF HCS plate (rows, columns, wells, field count);
                            napari_attribution: format, fingerprint, run provenance,
                            channel/class/method names, image list, field paths,
                            complete flag
      probabilities         (N, n_classes) float32, one chunk per image
      targets               (N, n_methods) int32, the class each map explains
      seconds               (N,) float32, compute time per image
      channel_share         (N, n_methods, C) float32, each channel's share of a
                            per-channel map's total (NaN for single-channel maps)
      done                  (N,) uint8, written last: 1 = every output of image i is stored
      <row>/<col>/          NGFF well (its fields' paths)
      <row>/<col>/<field>/  NGFF image of one field: multiscales with axes (c, y, x),
                            omero channels: label ("pcim", or "pcim GFP" per channel)
                            and display window (set from the maps when the run
                            completes); napari_attribution: image index and id
        0                   (n_maps, H, W) float32, chunks of (n_maps, 2048, 2048) at
                            most: every map of a field up to 2048x2048 in one chunk

Image ``i`` of the root arrays is record ``i`` of the run; its maps are the field image
``fields[i]`` (``A/1/0``: row, column, field). Maps have the images' height and width
(after downsampling, recorded as the NGFF scale), so they overlay the plate images; an
NGFF viewer opens the store as a plate of map images. Each chunk holds exactly one image
and Zarr's local store writes a chunk by rename, so an image's outputs are complete
exactly when its ``done`` chunk reads 1; a crash leaves at most unmarked images, which a
rerun recomputes. Larger fields (processed region by region, see ``batch.regions``) have
their maps in several chunks, written region by region, and are marked done after the
last one. Only the process driving the run writes attributes; workers write chunks only.
The NGFF attributes are ome-zarr-models models (:mod:`.ngff`), never hand-written:
creating a store without the library is an :class:`InputError`, and
:func:`.ngff.validate_store` checks a written store with the library's validators.
(Store format 1 kept all maps of a method in one ``maps/<method>/0`` array of shape
(N, [C,] H, W); it is still read.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError, OutputError
from ..io.atomic import why_failed
from ..layer_style import MAX_SAMPLES
from . import ngff
from .ngff import NGFF_VERSION, map_axes  # noqa: F401  (part of this module's API)
from .records import ImageRecord

FORMAT = "napari-attribution-batch"
#: written first into a store being created, removed once its metadata are complete: a
#: folder holding it is a store this package left half-created (a crash, a full disk)
CREATING = ".napari-attribution-creating"
FORMAT_VERSION = 2
ATTR = "napari_attribution"
MAP_CHUNK = 2048  # largest map chunk side: big fields are written region by region
_WELL = re.compile(r"^\s*([A-Za-z]+)[-_ ]?0*(\d+)\s*$")


def require_zarr():
    """Import zarr, or raise an :class:`InputError` saying how to install it."""
    try:
        import zarr
    except ImportError:
        raise InputError("batch runs need zarr and dask: pip install "
                         "'napari-attribution[batch]'") from None
    return zarr


def fingerprint(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``payload`` (what makes two runs the same)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_payload(bundle_sha256: str, records: Sequence[ImageRecord],
                methods: dict[str, dict[str, Any]], per_channel: bool,
                target: int | None, image_shape: tuple[int, int],
                input_size: int | None = None, downsample: int = 1) -> dict[str, Any]:
    """Everything that determines a run's results: model, methods and parameters, images
    (``image_shape`` is the shape the model sees, after ``downsample``)."""
    return {
        "format_version": FORMAT_VERSION,
        "bundle_sha256": bundle_sha256,
        "methods": {m: dict(sorted(p.items())) for m, p in methods.items()},
        "per_channel": bool(per_channel),
        "target": target,
        "image_shape": list(image_shape),
        "input_size": input_size,
        "downsample": int(downsample),
        "images": [[r.id, r.well, r.site, [Path(p).name for p in r.paths]] for r in records],
    }


def field_paths(records: Sequence[ImageRecord]) -> list[str]:
    """NGFF ``row/column/field`` path of each record: row letters and column number from
    the well (``B07`` -> ``B/7``), fields numbered in record order within each well. Wells
    that are not plate coordinates become row ``X`` with one column each."""
    odd: dict[str, int] = {}
    count: dict[str, int] = {}
    out = []
    for r in records:
        m = _WELL.match(str(r.well))
        if m:
            well = f"{m.group(1).upper()}/{int(m.group(2))}"
        else:
            well = f"X/{odd.setdefault(str(r.well), len(odd) + 1)}"
        out.append(f"{well}/{count.get(well, 0)}")
        count[well] = count.get(well, 0) + 1
    return out


def plate_metadata(paths: Sequence[str], name: str) -> dict[str, Any]:
    """NGFF 0.4 ``plate`` attributes for the wells and fields in ``paths`` (built with
    ome-zarr-models, see :mod:`.ngff`)."""
    return ngff.plate_attrs(paths, name)["plate"]


def map_rows(methods: Sequence[str], channel_names: Sequence[str] | None
             ) -> list[tuple[str, str | None]]:
    """What each plane of a field's map array is: (method, channel) or (method, None)."""
    if channel_names is None:
        return [(m, None) for m in methods]
    return [(m, c) for m in methods for c in channel_names]


class MapView:
    """One method's maps across the store as if one (N, [C,] H, W) array (read/write by
    image index), backed by the per-field NGFF arrays."""

    def __init__(self, store: BatchStore, method: str) -> None:
        self.store = store
        meta = store.meta
        rows = [tuple(r) for r in meta["map_rows"]]
        self.rows = [k for k, (m, _) in enumerate(rows) if m == method]
        self.per_channel = bool(meta["per_channel"])
        self.fields = list(meta["fields"])
        h, w = meta["image_shape"]
        c = len(self.rows)
        self.shape = (len(self.fields), c, h, w) if self.per_channel else \
            (len(self.fields), h, w)
        self.dtype = np.dtype("float32")
        self.ndim = len(self.shape)

    def field(self, index: int) -> Any:
        return self.store._array(f"{self.fields[index]}/0")

    def _one(self, index: int) -> np.ndarray:
        arr = np.asarray(self.field(index).get_orthogonal_selection(
            (self.rows, slice(None), slice(None))))
        return arr if self.per_channel else arr[0]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, int | np.integer):
            return self._one(int(first))[rest] if rest else self._one(int(first))
        idx = range(len(self))[first] if isinstance(first, slice) else list(first)
        out = np.stack([self._one(int(i)) for i in idx]) if len(idx) else \
            np.zeros((0, *self.shape[1:]), self.dtype)
        return out[(slice(None), *rest)] if rest else out

    def __setitem__(self, index: int, value: np.ndarray) -> None:
        arr = self.field(int(index))
        value = np.asarray(value, dtype=np.float32)
        value = value if self.per_channel else value[None]
        arr.set_orthogonal_selection((self.rows, slice(None), slice(None)), value)

    def to_dask(self) -> Any:
        """A lazy (N, [C,] H, W) Dask array over the field arrays."""
        import dask.array as da

        parts = [da.from_zarr(self.field(i))[self.rows] for i in range(len(self))]
        stack = da.stack(parts)
        return stack if self.per_channel else stack[:, 0]


def _clone_field(root: Path, template: str, new: str, attrs: dict[str, Any]) -> None:
    """Create field group ``new`` like ``template`` (same empty array) by copying the
    Zarr v2 metadata files zarr wrote for the template: thousands of fields are created
    in a second, not minutes."""
    zgroup = (root / template / ".zgroup").read_text()
    folder = root
    for part in new.split("/"):
        folder = folder / part
        if not (folder / ".zgroup").exists():
            folder.mkdir(exist_ok=True)
            (folder / ".zgroup").write_text(zgroup)
    (folder / "0").mkdir(exist_ok=True)
    (folder / "0" / ".zarray").write_text((root / template / "0" / ".zarray").read_text())
    (folder / ".zattrs").write_text(json.dumps(attrs))


def strided_sample(arr: Any, step: int) -> np.ndarray:
    """``arr[..., ::step, ::step]`` of a chunked (C, H, W) array read one chunk at a time,
    so that at most one decoded chunk is held besides the sample (a strided read of the
    whole array decodes every chunk it touches at once)."""
    c, h, w = (int(n) for n in arr.shape)
    ch, cw = (int(n) for n in arr.chunks[-2:])
    out = np.empty((c, -(-h // step), -(-w // step)), np.dtype(arr.dtype))
    for y0 in range(0, h, ch):
        ys = -(-y0 // step) * step  # the first sampled row in this band of chunks
        for x0 in range(0, w, cw):
            xs = -(-x0 // step) * step
            if ys < min(y0 + ch, h) and xs < min(x0 + cw, w):
                block = np.asarray(arr[:, ys:y0 + ch:step, xs:x0 + cw:step])
                out[:, ys // step:ys // step + block.shape[1],
                    xs // step:xs // step + block.shape[2]] = block
    return out


def map_mass(methods: Sequence[str], maps: dict[str, np.ndarray]
             ) -> dict[str, np.ndarray | None]:
    """Per method, the sum of absolute values of each channel of a per-channel (C, H, W)
    map (None for a single map): what channel shares are computed from. Sums over the
    regions of a large field add up to the sums over the whole field."""
    out: dict[str, np.ndarray | None] = {}
    for method in methods:
        arr = np.asarray(maps[method], dtype=np.float64)
        out[method] = np.abs(arr).reshape(arr.shape[0], -1).sum(1) if arr.ndim == 3 else None
    return out


class BatchStore:
    """Read and write one batch result store (see the module docstring for the layout)."""

    def __init__(self, path: Path, group: Any = None,
                 methods: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.group = group
        self._methods = None if methods is None else list(methods)
        self._arrays: dict[str, Any] = {}

    @classmethod
    def writer(cls, path: str | Path, methods: Sequence[str]) -> BatchStore:
        """A light handle for workers: opens only the arrays it writes, never the
        (possibly large) root attributes."""
        return cls(Path(path), None, methods)

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            if self.group is not None:
                arr = self.group[name]
            else:
                arr = require_zarr().open_array(str(self.path / name), mode="r+")
            self._arrays[name] = arr
        return arr

    # -- opening ---------------------------------------------------------------------------
    @staticmethod
    def is_store(path: str | Path) -> bool:
        """True if ``path`` holds a batch store written by this package."""
        zarr = require_zarr()
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception:
            return False
        meta = group.attrs.get(ATTR)
        return isinstance(meta, dict) and meta.get("format") == FORMAT

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> BatchStore:
        """Open an existing store (``mode`` "r" or "r+"); :class:`InputError` if it is not one."""
        zarr = require_zarr()
        path = Path(path)
        if not path.exists():
            raise InputError(f"batch result store not found: {path}")
        if not cls.is_store(path):
            raise InputError(f"{path} is not a napari-attribution batch result store")
        store = cls(path, zarr.open_group(str(path), mode=mode))
        version = int(store.meta.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise InputError(f"{path} was written by a newer napari-attribution (store format "
                             f"{version}); please upgrade")
        return store

    @staticmethod
    def is_half_created(path: str | Path) -> bool:
        """True if ``path`` is a store this package began to create and never finished
        (its creation marker is there, its batch metadata are not), or holds no more
        than the empty Zarr group a creation starts with: safe to create afresh."""
        path = Path(path)
        if not path.is_dir() or BatchStore.is_store(path):
            return False
        if (path / CREATING).is_file():
            return True
        names = {p.name for p in path.iterdir()}
        if not names <= {".zgroup", ".zattrs"}:
            return False
        try:
            attrs = json.loads((path / ".zattrs").read_text()) if ".zattrs" in names else {}
        except (OSError, ValueError):
            return False
        return attrs == {}

    @classmethod
    def create(cls, path: str | Path, *, payload: dict[str, Any],
               records: Sequence[ImageRecord], channel_names: Sequence[str],
               class_names: Sequence[str], provenance: dict[str, Any]) -> BatchStore:
        """Create an empty store for ``records`` (every image not done yet).

        A creation marker (:data:`CREATING`) is written first and removed last, so a
        creation cut short (a full disk, a crash) leaves a store that
        :meth:`open_for_run` recognises and starts afresh; a failure to write is an
        :class:`OutputError` saying so."""
        require_zarr()
        ngff.require_models()  # before anything is written: no store without NGFF models
        path = Path(path)
        try:
            return cls._create(path, payload=payload, records=records,
                               channel_names=channel_names, class_names=class_names,
                               provenance=provenance)
        except OSError as err:
            raise OutputError(f"cannot create the result store {path}: {why_failed(err)} "
                              f"([Errno {err.errno}]); the part written is recognised and "
                              "started afresh when you run the same command again") from None

    @classmethod
    def _create(cls, path: Path, *, payload: dict[str, Any],
                records: Sequence[ImageRecord], channel_names: Sequence[str],
                class_names: Sequence[str], provenance: dict[str, Any]) -> BatchStore:
        zarr = require_zarr()
        n = len(records)
        h, w = payload["image_shape"]
        methods = list(payload["methods"])
        per_channel = bool(payload["per_channel"])
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        (path / CREATING).write_text(json.dumps({"format": FORMAT, "pid": os.getpid()}))
        group.create_array("probabilities", shape=(n, len(class_names)),
                           chunks=(1, len(class_names)), dtype="float32", fill_value=np.nan)
        group.create_array("targets", shape=(n, max(1, len(methods))),
                           chunks=(1, max(1, len(methods))), dtype="int32", fill_value=-1)
        group.create_array("seconds", shape=(n,), chunks=(1,), dtype="float32",
                           fill_value=np.nan)
        m = max(1, len(methods))
        group.create_array("channel_share", shape=(n, m, len(channel_names)),
                           chunks=(1, m, len(channel_names)), dtype="float32",
                           fill_value=np.nan)
        group.create_array("done", shape=(n,), chunks=(1,), dtype="uint8", fill_value=0)
        fields = field_paths(records)
        rows = map_rows(methods, list(channel_names) if per_channel else None)
        if methods:
            labels = [m if c is None else f"{m} {c}" for m, c in rows]
            pixel = float(payload.get("downsample", 1))
            image = ngff.image_attrs(labels, pixel)  # the same NGFF block for every field
            wells: dict[str, list[str]] = {}
            for i, (path_i, record) in enumerate(zip(fields, records, strict=True)):
                well, field = path_i.rsplit("/", 1)
                wells.setdefault(well, []).append(field)
                attrs = {**image, ATTR: {"image_index": i, "image_id": record.id}}
                if i == 0:  # the template: made by zarr itself
                    row, col, _ = path_i.split("/")
                    g = group.require_group(row).require_group(col).require_group(field)
                    g.create_array("0", shape=(len(rows), h, w),
                                   chunks=(len(rows), min(h, MAP_CHUNK), min(w, MAP_CHUNK)),
                                   dtype="float32", fill_value=np.nan)
                    g.attrs.update(attrs)
                else:  # every field has the same array: copy zarr's metadata files
                    _clone_field(path, fields[0], path_i, attrs)
            for well, images in wells.items():
                (path / well / ".zattrs").write_text(json.dumps(ngff.well_attrs(images)))
            group.attrs.update(ngff.plate_attrs(fields, path.stem))
        group.attrs[ATTR] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint(payload), "payload_summary": {
                k: v for k, v in payload.items() if k != "images"},
            "channel_names": list(channel_names), "class_names": list(class_names),
            "methods": methods, "per_channel": per_channel,
            "image_shape": [h, w], "downsample": int(payload.get("downsample", 1)),
            "images": [r.to_dict() for r in records],
            "fields": fields, "map_rows": [list(r) for r in rows],
            "maps": {m: {"method": m, "params": payload["methods"][m],
                         "per_channel": per_channel, "channel_names": list(channel_names),
                         "bundle_sha256": payload["bundle_sha256"]} for m in methods},
            "provenance": provenance, "complete": False,
        }
        (path / CREATING).unlink()  # the store is whole from here on
        return cls(path, group)

    @classmethod
    def open_for_run(cls, path: str | Path, *, payload: dict[str, Any],
                     records: Sequence[ImageRecord], channel_names: Sequence[str],
                     class_names: Sequence[str], provenance: dict[str, Any],
                     overwrite: bool = False) -> BatchStore:
        """Resume the store at ``path`` if it belongs to this run, else create it.

        A store from a different run (other model, methods, parameters or images) is an
        :class:`InputError` unless ``overwrite``; a store this package left half-created
        (:meth:`is_half_created`) is started afresh; a path holding anything else is
        never deleted. A symlink to a store is followed (the store itself is used).
        """
        given, path = Path(path), Path(os.path.realpath(path))
        fp = fingerprint(payload)
        kw = dict(payload=payload, records=records, channel_names=channel_names,
                  class_names=class_names, provenance=provenance)
        if not path.exists():
            return cls.create(path, **kw)
        if not cls.is_store(path):
            if path.is_dir() and not any(path.iterdir()):
                return cls.create(path, **kw)
            if cls.is_half_created(path):
                shutil.rmtree(path)
                return cls.create(path, **kw)
            raise InputError(f"output {given} exists and is not a napari-attribution batch "
                             "store; choose another output path")
        store = cls.open(path, mode="r+")
        if store.meta.get("fingerprint") == fp:
            return store
        if overwrite:
            shutil.rmtree(path)
            return cls.create(path, **kw)
        why = store.describe_difference(payload)
        raise InputError(f"output {given} holds results of a different run ({why}); "
                         "refusing to mix them. Use --overwrite "
                         "(overwrite=True) to replace it, or choose another output path")

    # -- reading ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.group.attrs[ATTR])

    @property
    def records(self) -> list[ImageRecord]:
        return [ImageRecord.from_dict(d) for d in self.meta["images"]]

    @property
    def methods(self) -> list[str]:
        if self._methods is None:
            self._methods = list(self.meta["methods"])
        return list(self._methods)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def describe_difference(self, payload: dict[str, Any]) -> str:
        """Which parts of the run differ between this store and ``payload``."""
        old = self.meta.get("payload_summary", {})
        new = {k: v for k, v in payload.items() if k != "images"}
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if not diff:
            diff = ["images"]
        names = {"bundle_sha256": "model bundle", "methods": "methods/parameters",
                 "per_channel": "per-channel maps", "target": "target class",
                 "image_shape": "image size", "input_size": "model input size",
                 "images": "image list"}
        return "different " + ", ".join(names.get(k, k) for k in diff)

    def done_mask(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Boolean mask of images whose outputs are completely written."""
        done = self._array("done")
        if indices is None:
            return np.asarray(done[:]).astype(bool)
        return np.asarray(done.get_coordinate_selection(np.asarray(indices, int))).astype(bool)

    def maps(self, method: str) -> Any:
        """``method``'s maps as one (N, [C,] H, W) array-like (a :class:`MapView` over the
        field images; store format 1: its one zarr array)."""
        if method not in self.methods:
            raise InputError(f"no maps for method {method!r} in {self.path}; it has "
                             f"{self.methods or 'predictions only'}")
        if self.group is not None and int(self.meta.get("format_version", 1)) < 2:
            return self._array(f"maps/{method}/0")
        return MapView(self, method)

    def method_info(self, method: str) -> dict[str, Any]:
        """Method, parameters, per-channel flag and channel names of ``method``'s maps."""
        if int(self.meta.get("format_version", 1)) < 2:
            return dict(self.group[f"maps/{method}"].attrs[ATTR])
        return dict(self.meta["maps"][method])

    def probabilities(self) -> np.ndarray:
        return np.asarray(self._array("probabilities")[:])

    def targets(self) -> np.ndarray:
        return np.asarray(self._array("targets")[:])

    def seconds(self) -> np.ndarray:
        return np.asarray(self._array("seconds")[:])

    def channel_share(self) -> np.ndarray:
        return np.asarray(self._array("channel_share")[:])

    # -- writing ---------------------------------------------------------------------------
    def write_image(self, index: int, probabilities: np.ndarray, maps: dict[str, np.ndarray],
                    targets: dict[str, int], seconds: float, field: str | None = None
                    ) -> None:
        """Store every output of image ``index`` (its maps in the field image ``field``),
        then mark it done (always last)."""
        missing = set(self.methods) - set(maps)
        if missing:
            raise ValueError(f"maps missing for methods {sorted(missing)}")
        if self.methods:
            self.write_map_region(index, maps, 0, 0, field)
        self.mark_image(index, probabilities, targets, seconds, map_mass(self.methods, maps))

    def write_map_region(self, index: int, maps: dict[str, np.ndarray], y: int, x: int,
                         field: str | None = None) -> None:
        """Write the maps of every method for a region of image ``index`` whose top-left
        pixel is (``y``, ``x``); the image is not marked done."""
        if field is None:
            field = self.meta["fields"][index]
        planes = [np.asarray(maps[m], dtype=np.float32) for m in self.methods]
        planes = [p if p.ndim == 3 else p[None] for p in planes]
        h, w = planes[0].shape[-2:]
        self._array(f"{field}/0")[:, y:y + h, x:x + w] = np.concatenate(planes)

    def mark_image(self, index: int, probabilities: np.ndarray, targets: dict[str, int],
                   seconds: float, mass: dict[str, np.ndarray | None]) -> None:
        """Store image ``index``'s probabilities, targets, time and channel shares (from
        ``mass``, each method's per-channel sum of absolute map values, see
        :func:`map_mass`), then mark it done. Its maps must already be written."""
        self._array("probabilities")[index] = np.asarray(probabilities, dtype=np.float32)
        row = np.full(max(1, len(self.methods)), -1, dtype=np.int32)
        for j, method in enumerate(self.methods):
            row[j] = int(targets[method])
        self._array("targets")[index] = row
        share = self._array("channel_share")
        shares = np.full(share.shape[1:], np.nan, dtype=np.float32)
        for j, method in enumerate(self.methods):
            m = mass.get(method)
            if m is not None:  # per-channel maps: each channel's share of the total
                shares[j] = m / m.sum() if m.sum() > 0 else np.nan
        share[index] = shares
        self._array("seconds")[index] = np.float32(seconds)
        self._array("done")[index] = 1

    def _write_windows(self, meta: dict[str, Any]) -> None:
        """Give every field image's ``omero`` channels the display window of its plane,
        taken from the first finished field (so NGFF viewers show the maps with the
        plugin's heat-map contrast). Each field's ``.zattrs`` is replaced by rename."""
        done = np.flatnonzero(self.done_mask())
        if not len(done):
            return
        fields = list(meta["fields"])
        arr = self._array(f"{fields[int(done[0])]}/0")
        # heatmap_style looks at a million values at most: read every step-th pixel, not
        # a whole (possibly 20000²) field
        step = max(1, math.ceil(math.sqrt(arr.shape[-2] * arr.shape[-1] / MAX_SAMPLES)))
        maps = strided_sample(arr, step)
        labels = [m if c is None else f"{m} {c}" for m, c in meta["map_rows"]]
        image = ngff.image_attrs(labels, float(meta.get("downsample", 1)),
                                 [ngff.map_window(plane) for plane in maps])
        for i, (field, record) in enumerate(zip(fields, meta["images"], strict=True)):
            target = self.path / field / ".zattrs"
            tmp = target.with_name(".zattrs.partial")
            tmp.write_text(json.dumps({**image, ATTR: {"image_index": i,
                                                       "image_id": record["id"]}}))
            os.replace(tmp, target)

    def mark_complete(self, summary: dict[str, Any]) -> None:
        """Record that every image is done (driver only); the maps' NGFF display windows
        are set from the first field."""
        meta = self.meta
        if meta.get("methods") and int(meta.get("format_version", 1)) >= 2:
            self._write_windows(meta)
        meta["complete"] = True
        meta["summary"] = summary
        self.group.attrs[ATTR] = meta
