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
COLORMAPS = {"dna": "blue", "dapi": "blue", "hoechst": "blue", "nuclei": "blue",
             "gfp": "green", "fitc": "green", "actin": "red", "rfp": "red",
             "mcherry": "red", "cy5": "magenta", "brightfield": "gray"}
CYCLE = ["green", "magenta", "cyan", "yellow", "red", "blue", "gray"]


def _is_tiff(path: str) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` for TIFF files (a list = one file per channel), and for
    one CZI/ND2/LIF file when bioio is installed (the ``formats`` extra)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if len(paths) == 1 and str(paths[0]).lower().endswith((".czi", ".nd2", ".lif")):
        from .io.formats import bioio_available

        return read_layers if bioio_available() else None
    if not paths or not all(_is_tiff(str(p)) for p in paths):
        return None
    return read_layers


def colormap_for(name: str, index: int) -> str:
    """A colormap named by what the channel shows, else from a fixed cycle."""
    key = name.lower()
    for word, cmap in COLORMAPS.items():
        if word in key:
            return cmap
    return CYCLE[index % len(CYCLE)]


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
        from .io.writers import read_attribution_tiff

        arr, info = read_attribution_tiff(img.path)
        from .layer_style import heatmap_style

        return [(arr, {"name": f"{base_name or 'attribution'}", **heatmap_style(arr),
                       "metadata": {**meta, "axes": info["axes"], "attribution": info},
                       "scale": [1.0] * (arr.ndim - 2) + list(info["pixel_size"] or [1, 1])},
                 "image")]
    layers = []
    for c, name in enumerate(img.channel_names):
        layers.append((data[c], {
            "name": f"{base_name}{name}" if base_name else name,
            "colormap": colormap_for(name, c) if len(img.channel_names) > 1 else "gray",
            "blending": "additive", "scale": scale,
            "metadata": {**meta, "channel": name, "channel_index": c},
        }, "image"))
    return layers


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read a TIFF/OME-TIFF (or a list of single-channel files) into layer data."""
    if isinstance(path, str | Path):
        return image_layers(read_image(path, lazy=True))  # large images stay on disk
    paths = list(path)
    if len(paths) == 1:
        return image_layers(read_image(paths[0], lazy=True))
    return image_layers(read_channel_files(paths))
