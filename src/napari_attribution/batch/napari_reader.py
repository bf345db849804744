"""npe2 reader for batch result stores: plate images and attribution maps as aligned layers.

Opening ``result.zarr`` in napari gives one image layer per plate channel (read lazily
from the files the run recorded, when they are still there) and one heat-map layer per
method (per channel with per-channel maps), all stacked as (image, y, x) so that the
image slider walks the plate with maps and images in register. Layer metadata carries
the run's provenance and the per-image ids, wells and predicted classes.

Only stores this package wrote are claimed (a root ``napari_attribution`` block naming
the store format); any other ``.zarr`` folder, and a well or field inside a store, gets
None, so napari-ome-zarr (which also opens our store as an NGFF plate) can take it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..layer_style import heatmap_style

LayerData = tuple[Any, dict, str]


def _store_meta(path: Path) -> dict[str, Any] | None:
    """The store's ``napari_attribution`` attributes, or None if ``path`` is not a store."""
    from .store import ATTR, FORMAT

    attrs = path / ".zattrs"
    if not attrs.is_file():
        return None
    try:
        meta = json.loads(attrs.read_text()).get(ATTR)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """:func:`read_batch_store` for a batch result store this package wrote, else None
    (napari tries other readers, e.g. napari-ome-zarr)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if _store_meta(Path(path)) is None:
        return None
    try:
        import dask.array  # noqa: F401
        import zarr  # noqa: F401
    except ImportError:
        return None
    return read_batch_store


def _plate_layers(meta: dict[str, Any], shape: tuple[int, int]) -> list[LayerData]:
    import dask
    import dask.array as da

    from .._reader import colormap_for
    from .records import ImageRecord, read_record

    records = [ImageRecord.from_dict(d) for d in meta["images"]]
    if not all(Path(p).exists() for r in records for p in r.paths):  # OME-Zarr: folders
        return []
    names = meta["channel_names"]
    if int(meta.get("downsample", 1)) > 1:  # maps are smaller than the plate's images
        shape = tuple(read_record(records[0]).shape[1:])
    stack = da.stack([da.from_delayed(dask.delayed(read_record)(r),
                                      shape=(len(names), *shape), dtype=np.float32)
                      for r in records])
    return [(stack[:, c], {"name": f"plate {name}", "colormap": colormap_for(name, c),
                           "blending": "additive",
                           "metadata": {"image_ids": [r.id for r in records]}}, "image")
            for c, name in enumerate(names)]


def read_batch_store(path: str | list[str]) -> list[LayerData]:
    """Layers for a batch result store (see the module docstring)."""
    import dask.array as da

    from .store import BatchStore

    if isinstance(path, list):
        path = path[0]
    store = BatchStore.open(path)
    meta = store.meta
    shape = tuple(meta["image_shape"])
    done = store.done_mask()
    probs = store.probabilities()
    classes = meta["class_names"]
    records = store.records
    per_image = {
        "image_ids": [r.id for r in records], "wells": [r.well for r in records],
        "predicted": [classes[int(np.argmax(p))] if d else None
                      for p, d in zip(probs, done, strict=True)],
        "done": done.tolist(),
    }
    layers = _plate_layers(meta, shape)
    for _, kwargs, _ in layers:
        kwargs["metadata"].update(per_image)
    for method in store.methods:
        view = store.maps(method)
        arr = view.to_dask() if hasattr(view, "to_dask") else da.from_zarr(view)
        info = {"attribution": {**store.method_info(method),
                                "provenance": meta["provenance"]}, **per_image}
        # contrast from the first field of view (every s-th pixel of a large one): the
        # plate is never read whole here
        first = arr[0]
        s = max(1, int(np.ceil(np.sqrt(first.shape[-1] * first.shape[-2] / 4e6))))
        kw = heatmap_style(np.asarray(first[..., ::s, ::s]))
        f = float(meta.get("downsample", 1))  # a map pixel covers f x f image pixels
        kw["scale"] = (1.0, f, f)
        kw["translate"] = (0.0, (f - 1) / 2, (f - 1) / 2)
        if meta.get("per_channel"):
            for c, name in enumerate(meta["channel_names"]):
                layers.append((arr[:, c], {"name": f"{method} {name}", "metadata": info,
                                           **kw}, "image"))
        else:
            layers.append((arr, {"name": method, "metadata": info, **kw}, "image"))
    if not layers:
        # predictions only and the plate files are gone: show the (image x class) table
        layers.append((da.from_zarr(store.group["probabilities"]),
                       {"name": "class probabilities (image x class)",
                        "metadata": per_image}, "image"))
    return layers
