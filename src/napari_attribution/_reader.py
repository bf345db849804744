"""npe2 reader: a multichannel TIFF / OME-TIFF (or one file per channel) -> one layer per
channel, named after the channel, with a colormap, additive blending and the pixel size
as scale. Attribution files written by this package open as one heat-map layer with
their provenance in the layer metadata."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io.image_formats import FORMATS, IMAGE_READER, has_suffix
from .io.readers import ImageData, read_channel_files, read_image

LayerData = tuple[Any, dict, str]


#: formats this reader opens through bioio (one file at a time; the ``formats`` extra)
_BIOIO_FILES = tuple(f.name for f in FORMATS.values()
                     if f.napari_command == IMAGE_READER and f.bioio_plugin)


def _is_tiff(path: str) -> bool:
    return has_suffix(path, "tiff")


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` for TIFF files (a list = one file per channel), and for
    one CZI/ND2/LIF file when bioio is installed (the ``formats`` extra)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if len(paths) == 1 and has_suffix(paths[0], *_BIOIO_FILES):
        from .io.formats import bioio_available

        return read_layers if bioio_available() else None
    if not paths or not all(_is_tiff(str(p)) for p in paths):
        return None
    return read_layers


def colormap_for(name: str, index: int) -> str:
    """A colormap named by what the channel shows, else from a distinct cycle."""
    from .layer_style import stain_colormap

    return stain_colormap(name, index)


_CHANNEL_TOKEN = re.compile(r"(?i)(channel|ch|c|w)\d+[a-z0-9]*")
_GENERIC = re.compile(r"(?i)(ch|c|channel)\s*\d+")


def split_channel(stem: str) -> tuple[str, str | None]:
    """(image key, channel name) from a file name: the token naming the channel
    (``Channel1``, ``ch0``, ``w1DAPI``, ``_c2``, or a stain word such as ``DAPI``/``GFP``)
    is the channel; the rest (well, site) is the key shared by the channels of one
    image. ``Channel1-01-A-01`` -> ``("01-A-01", "Channel1")``."""
    from .layer_style import STAIN_COLORMAPS

    stains = {k for keys, _ in STAIN_COLORMAPS for k in keys if len(k) > 2}
    parts = re.split(r"([_\-. ]+)", stem)
    for i in range(0, len(parts), 2):
        tok = parts[i]
        if _CHANNEL_TOKEN.fullmatch(tok) or tok.lower() in stains:
            rest = parts[:max(i - 1, 0)] + parts[i + 1:] if i else parts[i + 2:]
            return "".join(rest).strip("_-. "), tok
    return stem, None


def _named_by_file(img: ImageData, path: str | Path) -> tuple[ImageData, str]:
    """A one-channel file whose channel has no real name gets it from the file name."""
    import dataclasses

    key, channel = split_channel(Path(str(path)).name.split(".")[0])
    generic = len(img.channel_names) == 1 and _GENERIC.fullmatch(img.channel_names[0])
    if channel is not None and generic:
        img = dataclasses.replace(img, channel_names=[channel])
    return img, key


def image_layers(img: ImageData, base_name: str = "", image_key: str = "") -> list[LayerData]:
    """One napari image layer per channel of ``img``; ``image_key`` (well/site from the
    file name) groups the layers of one image and is shown after the channel name."""
    from .io.writers import FORMAT

    data = img.data  # (C, [other axes,] Y, X)
    scale = [1.0] * (data.ndim - 1)
    if img.pixel_size is not None:
        scale[-2:] = list(img.pixel_size)
    if img.z_spacing is not None and "Z" in img.axes:
        scale[img.axes.index("Z") - 1] = img.z_spacing
    meta = {"source": str(img.path) if img.path else None, "axes": img.axes[1:],
            "pixel_size_um": img.pixel_size}
    if image_key:
        meta["image_id"] = image_key
    if img.description and FORMAT in img.description:
        return [_attribution_layer(img, meta, base_name)]
    from .layer_style import stain_colormaps

    layers = []
    colours = stain_colormaps(list(img.channel_names))
    levels = _levels(data.shape[-2:]) if img.extra.get("lazy") else 1
    for c, name in enumerate(img.channel_names):
        label = f"{base_name}{name}" if base_name else name
        extra: dict[str, Any] = {}
        if levels > 1:  # napari loads one coarse level, then what the canvas shows
            extra = {"multiscale": True}
        layers.append((_pyramid(data[c], levels), {**extra,
            "name": f"{label} ({image_key})" if image_key else label,
            "colormap": colours[c],
            "blending": "additive", "scale": scale,
            "metadata": {**meta, "channel": name, "channel_index": c},
        }, "image"))
    return layers


MULTISCALE_ABOVE = 4096  # lazy images with a side over this open as a pyramid
PYRAMID_TOP = 2048  # the coarsest level's larger side is at most this


def _levels(shape: Sequence[int]) -> int:
    """Pyramid levels for a lazy image of ``shape`` (Y, X): halving until the larger side
    is at most :data:`PYRAMID_TOP`; 1 (no pyramid) for sides up to :data:`MULTISCALE_ABOVE`."""
    side = max(int(n) for n in shape)
    if side <= MULTISCALE_ABOVE:
        return 1
    return 1 + math.ceil(math.log2(side / PYRAMID_TOP))


def _pyramid(arr: Any, levels: int) -> Any:
    """``arr`` itself, or a list of lazy views at 1, 1/2, 1/4, ... (every 2**k-th pixel
    in Y and X) for napari's multiscale display: a single-scale layer would load the
    whole 2-D plane as soon as it is shown. Level 0 is the full image."""
    if levels <= 1:
        return arr
    return [arr] + [StridedLevel(arr, 2 ** k) for k in range(1, levels)]


class StridedLevel:
    """Every ``step``-th pixel in Y and X of a lazy (Dask) image, read on request.

    Not a Dask array on purpose: napari keeps the chunks that Dask arrays compute in its
    opportunistic cache (up to a quarter of the RAM), and a coarse level of a Dask view
    computes every full-resolution chunk on the way (1.7 GB kept for a 20000² two-channel
    field). Here each request runs on Dask's synchronous scheduler without callbacks, so
    only the strided pixels stay in memory.
    """

    def __init__(self, base: Any, step: int) -> None:
        self.base, self.step = base, int(step)
        self.shape = tuple(base.shape[:-2]) + tuple(-(-int(n) // self.step)
                                                     for n in base.shape[-2:])
        self.dtype = base.dtype
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        import numpy as np

        view = self.base[..., :: self.step, :: self.step][key]
        if hasattr(view, "compute"):
            view = view.compute(scheduler="synchronous", callbacks=())
        return np.asarray(view)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:

        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


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
    """Read a TIFF/OME-TIFF, or several files: files whose names differ only in a channel
    token (``Channel1-01-A-01.tif``, ``Channel2-01-A-01.tif``) become the channels of
    one image, one image per key (well/site), with the same channel names in each."""
    if isinstance(path, str | Path):
        # large images stay on disk (lazy)
        img, key = _named_by_file(read_image(path, lazy=True), path)
        return image_layers(img, image_key=key if len(img.channel_names) == 1 else "")
    paths = list(path)
    if len(paths) == 1:
        return read_layers(paths[0])
    groups: dict[str, list[tuple[str, str]]] = {}
    for p in paths:
        key, channel = split_channel(Path(str(p)).name.split(".")[0])
        groups.setdefault(key, []).append((str(p), channel or Path(str(p)).stem))
    if any(len(g) < 2 for g in groups.values()):  # no channel pattern: the old way
        return image_layers(read_channel_files(paths))
    out: list[LayerData] = []
    for key, members in groups.items():
        members.sort(key=lambda m: m[1])
        img = read_channel_files([m[0] for m in members], channel_names=[m[1] for m in
                                                                          members])
        out.extend(image_layers(img, image_key=key if len(groups) > 1 else ""))
    return out
