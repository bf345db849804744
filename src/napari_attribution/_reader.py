"""npe2 reader: a multichannel TIFF / OME-TIFF (or one file per channel) -> one layer per
channel, named after the channel, with a colormap, additive blending and the pixel size
as scale. Attribution files written by this package open as one heat-map layer with
their provenance in the layer metadata."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io.readers import TIFF_SUFFIXES, ImageData, read_channel_files, read_image

LayerData = tuple[Any, dict, str]


def _is_tiff(path: str) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` for TIFF files (a list = one file per channel)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(_is_tiff(str(p)) for p in paths):
        return None
    return read_layers


def colormap_for(name: str, index: int) -> str:
    """A colormap named by what the channel shows, else from a distinct cycle."""
    from .layer_style import stain_colormap

    return stain_colormap(name, index)


def image_layers(img: ImageData, base_name: str = "") -> list[LayerData]:
    """One napari image layer per channel of ``img``."""
    from .io.writers import FORMAT

    data = img.data  # (C, [other axes,] Y, X)
    scale = [1.0] * (data.ndim - 1)
    if img.pixel_size is not None:
        scale[-2:] = list(img.pixel_size)
    if img.z_spacing is not None and "Z" in img.axes:
        scale[img.axes.index("Z") - 1] = img.z_spacing
    meta = {"source": str(img.path) if img.path else None, "axes": img.axes[1:],
            "pixel_size_um": img.pixel_size}
    if img.description and FORMAT in img.description:
        return [_attribution_layer(img, meta, base_name)]
    layers = []
    for c, name in enumerate(img.channel_names):
        layers.append((data[c], {
            "name": f"{base_name}{name}" if base_name else name,
            "colormap": colormap_for(name, c) if len(img.channel_names) > 1 else "gray",
            "blending": "additive", "scale": scale,
            "metadata": {**meta, "channel": name, "channel_index": c},
        }, "image"))
    return layers


def _attribution_layer(img: ImageData, meta: dict, base_name: str) -> LayerData:
    """A map written by this package, back as it was shown: name, shape (a one-slice map
    stays on its slice), scale, translate and provenance (so it can be exported again)."""
    import numpy as np

    from .io.writers import read_attribution_tiff
    from .layer_style import heatmap_style

    arr, info = read_attribution_tiff(img.path)
    prov = info.get("provenance") or {}
    layer = prov.get("layer") if isinstance(prov.get("layer"), dict) else {}
    scale = [1.0] * (arr.ndim - 2) + list(info["pixel_size"] or [1, 1])
    translate = None
    shape = layer.get("shape")
    if shape and int(np.prod(shape)) == arr.size:
        arr = arr.reshape(shape)
        scale = layer.get("scale") or [1.0] * arr.ndim
        translate = layer.get("translate")
    name = layer.get("name") or prov.get("layer_name") or base_name or "attribution"
    kw: dict[str, Any] = {"name": name, **heatmap_style(arr), "scale": scale,
                          "metadata": {**meta, "axes": info["axes"], "attribution": info,
                                       "napari_attribution": {
                                           "kind": "attribution", "provenance": prov,
                                           "channel": layer.get("channel"),
                                           "key": layer.get("key")}}}
    if translate is not None and len(translate) == arr.ndim:
        kw["translate"] = translate
    if len(scale) != arr.ndim:
        kw["scale"] = [1.0] * arr.ndim
    return (arr, kw, "image")


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read a TIFF/OME-TIFF (or a list of single-channel files) into layer data."""
    if isinstance(path, str | Path):
        return image_layers(read_image(path))
    paths = list(path)
    if len(paths) == 1:
        return image_layers(read_image(paths[0]))
    return image_layers(read_channel_files(paths))
