"""The OME-Zarr result store of a batch run: atomic per-image writes and a run fingerprint.

Layout (Zarr format 2, OME-NGFF 0.4 multiscales metadata on every map group)::

    result.zarr/
      .zattrs               napari_attribution: format, fingerprint, run provenance,
                            channel/class/method names, image list, complete flag
      probabilities         (N, n_classes) float32, one chunk per image
      targets               (N, n_methods) int32, the class each map explains
      seconds               (N,) float32, compute time per image
      channel_share         (N, n_methods, C) float32, each channel's share of a
                            per-channel map's total (NaN for single-channel maps)
      done                  (N,) uint8, written last: 1 = every output of image i is stored
      maps/<method>/0       (N, H, W) or (N, C, H, W) float32, one chunk per image

Image ``i`` of every array is record ``i`` of the run, and maps have the images' height
and width, so they overlay the plate images. Each chunk holds exactly one image and Zarr's
local store writes a chunk by rename, so an image's outputs are complete exactly when its
``done`` chunk reads 1; a crash leaves at most unmarked images, which a rerun recomputes.
Only the process driving the run writes attributes; workers write chunks only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from .records import ImageRecord

FORMAT = "napari-attribution-batch"
FORMAT_VERSION = 1
ATTR = "napari_attribution"


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


def _multiscales(name: str, axes: list[dict[str, str]], pixel: float = 1.0
                 ) -> list[dict[str, Any]]:
    """NGFF multiscales of one array; ``pixel`` is the size of a map pixel in pixels of
    the plate's images (the downsampling factor)."""
    scale = [float(pixel) if a.get("type") == "space" else 1.0 for a in axes]
    return [{
        "version": "0.4", "name": name, "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": scale}]}],
        "type": "none",
    }]


def map_axes(per_channel: bool) -> list[dict[str, str]]:
    """NGFF axes of a map array: the image index, (channel), y, x."""
    axes = [{"name": "image"}]
    if per_channel:
        axes.append({"name": "c", "type": "channel"})
    return axes + [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


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

    @classmethod
    def create(cls, path: str | Path, *, payload: dict[str, Any],
               records: Sequence[ImageRecord], channel_names: Sequence[str],
               class_names: Sequence[str], provenance: dict[str, Any]) -> BatchStore:
        """Create an empty store for ``records`` (every image not done yet)."""
        zarr = require_zarr()
        path = Path(path)
        n = len(records)
        h, w = payload["image_shape"]
        methods = list(payload["methods"])
        per_channel = bool(payload["per_channel"])
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
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
        maps = group.require_group("maps")
        c = len(channel_names)
        for method in methods:
            g = maps.require_group(method)
            shape = (n, c, h, w) if per_channel else (n, h, w)
            chunks = (1, c, h, w) if per_channel else (1, h, w)
            g.create_array("0", shape=shape, chunks=chunks, dtype="float32",
                           fill_value=np.nan)
            attrs: dict[str, Any] = {
                "multiscales": _multiscales(method, map_axes(per_channel),
                                            payload.get("downsample", 1)),
                ATTR: {"method": method, "params": payload["methods"][method],
                       "per_channel": per_channel, "channel_names": list(channel_names),
                       "bundle_sha256": payload["bundle_sha256"]},
            }
            if per_channel:
                attrs["omero"] = {"channels": [{"label": f"{method} {name}", "active": True}
                                               for name in channel_names]}
            g.attrs.update(attrs)
        group.attrs[ATTR] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint(payload), "payload_summary": {
                k: v for k, v in payload.items() if k != "images"},
            "channel_names": list(channel_names), "class_names": list(class_names),
            "methods": methods, "per_channel": per_channel,
            "image_shape": [h, w], "downsample": int(payload.get("downsample", 1)),
            "images": [r.to_dict() for r in records],
            "provenance": provenance, "complete": False,
        }
        return cls(path, group)

    @classmethod
    def open_for_run(cls, path: str | Path, *, payload: dict[str, Any],
                     records: Sequence[ImageRecord], channel_names: Sequence[str],
                     class_names: Sequence[str], provenance: dict[str, Any],
                     overwrite: bool = False) -> BatchStore:
        """Resume the store at ``path`` if it belongs to this run, else create it.

        A store from a different run (other model, methods, parameters or images) is an
        :class:`InputError` unless ``overwrite``; a path holding anything other than a
        batch store is never deleted.
        """
        path = Path(path)
        fp = fingerprint(payload)
        kw = dict(payload=payload, records=records, channel_names=channel_names,
                  class_names=class_names, provenance=provenance)
        if not path.exists():
            return cls.create(path, **kw)
        if not cls.is_store(path):
            if path.is_dir() and not any(path.iterdir()):
                return cls.create(path, **kw)
            raise InputError(f"output {path} exists and is not a napari-attribution batch "
                             "store; choose another output path")
        store = cls.open(path, mode="r+")
        if store.meta.get("fingerprint") == fp:
            return store
        if overwrite:
            shutil.rmtree(path)
            return cls.create(path, **kw)
        why = store.describe_difference(payload)
        raise InputError(f"output {path} holds results of a different run ({why}); "
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
        """The zarr array of ``method``'s maps (N, [C,] H, W)."""
        if method not in self.methods:
            raise InputError(f"no maps for method {method!r} in {self.path}; it has "
                             f"{self.methods or 'predictions only'}")
        return self._array(f"maps/{method}/0")

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
                    targets: dict[str, int], seconds: float) -> None:
        """Store every output of image ``index``, then mark it done (always last)."""
        missing = set(self.methods) - set(maps)
        if missing:
            raise ValueError(f"maps missing for methods {sorted(missing)}")
        for method, arr in maps.items():
            self._array(f"maps/{method}/0")[index] = np.asarray(arr, dtype=np.float32)
        self._array("probabilities")[index] = np.asarray(probabilities, dtype=np.float32)
        row = np.full(max(1, len(self.methods)), -1, dtype=np.int32)
        for j, method in enumerate(self.methods):
            row[j] = int(targets[method])
        self._array("targets")[index] = row
        share = self._array("channel_share")
        shares = np.full(share.shape[1:], np.nan, dtype=np.float32)
        for j, method in enumerate(self.methods):
            arr = np.asarray(maps[method], dtype=np.float64)
            if arr.ndim == 3:  # (C, H, W): each channel's share of the map's total
                mass = np.abs(arr).reshape(arr.shape[0], -1).sum(1)
                shares[j] = mass / mass.sum() if mass.sum() > 0 else np.nan
        share[index] = shares
        self._array("seconds")[index] = np.float32(seconds)
        self._array("done")[index] = 1

    def mark_complete(self, summary: dict[str, Any]) -> None:
        """Record that every image is done (driver only)."""
        meta = self.meta
        meta["complete"] = True
        meta["summary"] = summary
        self.group.attrs[ATTR] = meta
