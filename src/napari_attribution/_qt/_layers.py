"""Choosing image layers as multichannel input, and placing results back over them.

Two ways to give channels: several image layers of one shape (one layer per channel,
as napari opens a multichannel file with ``channel_axis``), or one layer with a channel
axis (found from OME axes or a small leading dimension when set to "auto"). Leading axes
(a stack, Z, T, plate positions) become the image index ``N``.

Channels reach a model by NAME (:func:`match_channels`), never by layer order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QWidget,
)

from ..core.runtime.errors import InputError

AUTO_AXIS, NO_AXIS = -2, -1
MAX_CHANNELS = 8  # a leading axis this short is taken for channels by "auto"
_DUPLICATE = re.compile(r"\s*\[\d+\]$")  # napari's " [1]" for a repeated layer name


@dataclass
class Selection:
    """The input of one run, frozen at its start: layers, images and where they came from."""

    layers: list[Any]  # the layers used (one per channel: in the channels' order)
    images: np.ndarray  # (N, C, H, W) raw
    stack_shape: tuple[int, ...]  # leading (non-channel, non-spatial) axes
    channel_names: list[str]
    channel_axis: int | None = None
    index: tuple[int, ...] | None = None  # the slice when only the current image is used
    scale: tuple[float, ...] = ()
    translate: tuple[float, ...] = ()
    metadata: dict = field(default_factory=dict)
    downsample: int = 1  # how much the layers are already shrunk from raw pixels

    @property
    def source_name(self) -> str:
        if len(self.layers) == 1:
            return self.layers[0].name
        return "+".join(layer.name for layer in self.layers[:3]) + (
            "…" if len(self.layers) > 3 else "")

    def placement(self, extra_leading: int = 0, shrink: int = 1) -> dict:
        """``scale``/``translate`` for a result of shape (*stack, H, W) (or a slice of it);
        ``shrink``: the result's pixels are that many input pixels wide (centred on the
        block they average)."""
        scale = list(self.scale)
        translate = list(self.translate)
        if self.index is not None:
            for i, j in enumerate(self.index):
                translate[i] = translate[i] + j * scale[i]
        if shrink > 1:
            for i in (-2, -1):
                translate[i] = translate[i] + (shrink - 1) / 2 * scale[i]
                scale[i] = scale[i] * shrink
        return {"scale": [1.0] * extra_leading + scale,
                "translate": [0.0] * extra_leading + translate}

    def result_shape(self, maps: np.ndarray) -> np.ndarray:
        """Reshape (N, [C,] H, W) maps to the stack's leading axes (1s for one slice)."""
        lead = (1,) * len(self.stack_shape) if self.index is not None else self.stack_shape
        return maps.reshape(*lead, *maps.shape[1:])

    def flat_index(self) -> int | None:
        """The image number of the slice used (None: all images)."""
        if self.index is None:
            return None
        return int(np.ravel_multi_index(self.index, self.stack_shape))


def base_name(name: str) -> str:
    """A layer or channel name without napari's ``[n]`` suffix for repeated names."""
    return _DUPLICATE.sub("", str(name)).strip()


def layer_channel(layer) -> str:
    """The channel a one-channel layer holds: the reader's channel name while the layer's
    name still shows it (``Channel1 (01-A-01)``), else the layer's name as the user set
    it (renaming a layer renames its channel), without the ``(well)`` the reader added
    and napari's ``[n]``."""
    name = base_name(layer.name)
    meta = layer.metadata.get("channel")
    if meta and str(meta) in name:
        return str(meta)
    key = layer.metadata.get("image_id")
    if key and name.endswith(f"({key})"):
        name = name[: -len(f"({key})")].strip()
    return name


def match_channels(have: list[str], want: list[str],
                   mapping: dict[str, str] | None = None) -> list[int]:
    """Indices into ``have`` (the input's channel names) for each name in ``want`` (the
    model's), by name (case-insensitive, napari's ``[n]`` suffix ignored). ``mapping``
    maps a model channel to an input channel name where they differ. Missing or
    ambiguous names raise :class:`InputError` naming them."""
    mapping = {k.strip().lower(): v.strip() for k, v in (mapping or {}).items()}
    keys = [base_name(h).lower() for h in have]
    out, missing, ambiguous = [], [], []
    for name in want:
        target = mapping.get(name.lower(), name)
        hits = [i for i, k in enumerate(keys) if k == base_name(target).lower()]
        exact = [i for i in hits if have[i] == target]
        if len(hits) > 1 and len(exact) == 1:
            hits = exact
        if not hits:
            missing.append(name)
        elif len(hits) > 1:
            ambiguous.append(f"{name} ({', '.join(have[i] for i in hits)})")
        else:
            out.append(hits[0])
    if missing or ambiguous:
        parts = []
        if missing:
            parts.append(f"the model's channel(s) {', '.join(missing)} are not among the "
                         f"input's ({', '.join(have)})")
        if ambiguous:
            parts.append(f"several input channels match {'; '.join(ambiguous)}")
        raise InputError("; ".join(parts) + ". Tick layers named like the model's channels, "
                         "or give a channel map such as "
                         f"\"{want[0]}={have[0] if have else 'layer'}\".")
    return out


def parse_mapping(text: str) -> dict[str, str]:
    """``"GFP=green, DNA=blue"`` -> ``{"GFP": "green", "DNA": "blue"}``."""
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise InputError(f"channel map entries look like MODEL=INPUT; got {part.strip()!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def image_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb
            and "napari_attribution" not in ly.metadata]  # not our own result layers


def layer_group(layer) -> tuple:
    """Layers of one multichannel image share this: shape and source file/well."""
    md = layer.metadata
    return (tuple(layer.data.shape), str(md.get("image_id") or md.get("source") or ""),
            str(md.get("well") if isinstance(md.get("well"), str) else ""))


def guess_channel_axis(layer) -> int | None:
    """The channel axis of a single multichannel layer: OME ``C`` in the layer's
    metadata, else the first leading axis no longer than ``MAX_CHANNELS``; None if
    the layer is one channel."""
    if layer.ndim < 3:
        return None
    axes = layer.metadata.get("axes")
    if isinstance(axes, str) and len(axes) == layer.ndim:
        return axes.index("C") if "C" in axes[:-2] else None
    names = layer.metadata.get("channel_names")
    for i, n in enumerate(layer.data.shape[:-2]):
        if names is not None and len(names) == n:
            return i
    for i, n in enumerate(layer.data.shape[:-2]):
        if 1 < n <= MAX_CHANNELS:
            return i
    return None


class ChannelPicker(QWidget):
    """Checkable list of image layers (one per channel) plus an optional channel axis
    and an optional map from the model's channel names to the input's."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.setToolTip("Tick the image layers to use, one layer per channel; or tick "
                             "one layer that holds the channels on one axis.")
        self.axis = QSpinBox()
        self.axis.setRange(AUTO_AXIS, 8)
        self.axis.setValue(AUTO_AXIS)
        self.axis.setSpecialValueText("auto")
        self.axis.setToolTip("Axis of a single ticked layer that holds the channels; auto: "
                             "OME axes, else a leading axis of at most 8; -1: none")
        self.mapping = QLineEdit()
        self.mapping.setPlaceholderText("by name; or MODEL=LAYER, …")
        self.mapping.setToolTip("Channels reach the model by name. Where the layer names "
                                "differ from the model's channel names, map them here, "
                                "e.g. GFP=ch0, DNA=ch1")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Image layers", self.list)
        form.addRow("Channel axis", self.axis)
        form.addRow("Channel map", self.mapping)
        import weakref

        self._named: weakref.WeakSet = weakref.WeakSet()  # renaming these refreshes
        for ev in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, ev).connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Rebuild the list: ticks are kept, and a layer that arrives in the group of a
        ticked layer (the next channel file of the same image) is ticked too."""
        items = [self.list.item(i) for i in range(self.list.count())]
        # ticks follow the layer, not its name (a renamed layer stays ticked)
        checked = {it.data(Qt.ItemDataRole.UserRole) for it in items
                   if it.checkState() == Qt.CheckState.Checked}
        known = {it.data(Qt.ItemDataRole.UserRole) for it in items}
        first = self.list.count() == 0 or not checked
        default = set(self._default_group()) if first else set()
        layers = image_layers(self.viewer)
        groups = {layer_group(ly) for ly in layers if id(ly) in checked}
        self.list.clear()
        for layer in layers:
            if layer not in self._named:
                self._named.add(layer)
                layer.events.name.connect(self.refresh)
            item = QListWidgetItem(layer.name)
            item.setData(Qt.ItemDataRole.UserRole, id(layer))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = id(layer) in checked or layer.name in default or (
                id(layer) not in known and layer_group(layer) in groups)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.list.addItem(item)

    def _default_group(self) -> list[str]:
        """The active layer's group (or the first layer's): never every layer."""
        layers = image_layers(self.viewer)
        if not layers:
            return []
        active = self.viewer.layers.selection.active
        anchor = active if active in layers else layers[0]
        key = layer_group(anchor)
        return [ly.name for ly in layers if layer_group(ly) == key]

    def checked_names(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, names: list[str]) -> None:
        """Tick exactly the layers called ``names`` (others unticked)."""
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names
                               else Qt.CheckState.Unchecked)

    def select_for_model(self, channel_names: list[str]) -> None:
        """Tick the layers whose channels are the model's, each found once: among the
        ticked layers' group first, else among all layers."""
        ticked = set(self.checked_names())
        everything = image_layers(self.viewer)
        groups = [[ly for ly in everything if layer_group(ly) in
                   {layer_group(t) for t in everything if t.name in ticked}], everything]
        for layers in groups:
            names = [layer_channel(ly) for ly in layers]
            try:
                idx = match_channels(names, list(channel_names))
            except InputError:
                continue
            self.set_checked([layers[i].name for i in idx])
            return

    def layers(self) -> list:
        names = self.checked_names()
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    def channel_map(self) -> dict[str, str]:
        return parse_mapping(self.mapping.text())

    def selection(self, current_only: bool = False,
                  model_channels: list[str] | None = None) -> Selection:
        """Gather the ticked layers as (N, C, H, W); ``current_only``: the slice on screen.

        With ``model_channels`` the channels are put in the model's order by name.
        """
        layers = self.layers()
        if not layers:
            raise InputError("tick at least one image layer as input")
        axis = self.axis.value()
        if axis == AUTO_AXIS:
            axis = guess_channel_axis(layers[0]) if len(layers) == 1 else None
            axis = NO_AXIS if axis is None else axis
        if axis >= 0:
            if len(layers) != 1:
                raise InputError("with a channel axis, tick exactly one layer")
            layer = layers[0]
            if layer.ndim < 3 or axis >= layer.ndim - 2:
                raise InputError(f"layer {layer.name!r} has {layer.ndim} axes; the channel "
                                 f"axis must be one of the first {max(layer.ndim - 2, 0)}")
            data = np.moveaxis(np.asarray(full_data(layer)), axis, -3)
            n_ch = data.shape[-3]
            names = layer.metadata.get("channel_names")
            if not names or len(names) != n_ch:
                names = [f"{layer.name}[{i}]" for i in range(n_ch)]
            keep = [i for i in range(layer.ndim) if i != axis]
            scale = tuple(float(layer.scale[i]) for i in keep)
            translate = tuple(float(layer.translate[i]) for i in keep)
            world_pos = _data_position(layer, self.viewer)
            pos = [world_pos[i] for i in keep]
        else:
            shapes = {tuple(ly.data.shape) for ly in layers}
            if len(shapes) != 1:
                raise InputError(
                    "the ticked layers differ in shape ("
                    + ", ".join(f"{ly.name}: {'x'.join(map(str, ly.data.shape))}"
                                for ly in layers)
                    + "); tick the layers of one image, one layer per channel, or use "
                    "'Combine layers' to make one multichannel image")
            layer = layers[0]
            data = np.stack([np.asarray(full_data(ly)) for ly in layers], axis=-3)
            names = [layer_channel(ly) for ly in layers]
            scale = tuple(float(s) for s in layer.scale)
            translate = tuple(float(t) for t in layer.translate)
            pos = list(_data_position(layer, self.viewer))
        names = [str(n) for n in names]
        if model_channels is not None:
            if len(names) == 1 and len(model_channels) > 1 and layer.ndim >= 3:
                raise InputError(
                    f"the input is one channel ({names[0]}) but the model needs "
                    f"{len(model_channels)} ({', '.join(model_channels)}); if "
                    f"{layer.name!r} holds the channels on one axis, set 'Channel axis'")
            order = match_channels(names, list(model_channels), self.channel_map())
            data = data[..., order, :, :]
            names = [names[i] for i in order]
            if axis < 0:  # one layer per channel: the layers used, in the model's order
                layers = [layers[i] for i in order]
        stack_shape = tuple(data.shape[:-3])
        index = None
        if current_only and stack_shape:
            index = tuple(int(np.clip(round(p), 0, n - 1))
                          for p, n in zip(pos[:len(stack_shape)], stack_shape, strict=True))
            data = data[index][None]
        images = data.reshape(-1, *data.shape[-3:])
        meta = dict(layer.metadata)
        try:
            ds = max(1, int(meta.get("downsample", 1) or 1))
        except (TypeError, ValueError):
            ds = 1
        return Selection(layers=layers, images=images, stack_shape=stack_shape,
                         channel_names=names,
                         channel_axis=axis if axis >= 0 else None, index=index,
                         scale=scale, translate=translate, metadata=meta, downsample=ds)


def full_data(layer) -> Any:
    """A layer's pixels at full resolution: level 0 of a multiscale layer (the reader
    makes large lazy images multiscale; ``np.asarray`` of one gives its coarsest level)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def combine_layers(viewer, layers: list) -> Any:
    """Add one multichannel layer (C, …, Y, X) made of ``layers`` (one per channel, one
    shape); its metadata holds the channel names (napari shows it as one image)."""
    if len(layers) < 2:
        raise InputError("tick at least two layers of one shape to combine")
    shapes = {tuple(ly.data.shape) for ly in layers}
    if len(shapes) != 1:
        raise InputError("layers to combine must have one shape; got "
                         + ", ".join(f"{ly.name}: {ly.data.shape}" for ly in layers))
    names = [layer_channel(ly) for ly in layers]
    data = np.stack([np.asarray(full_data(ly)) for ly in layers], axis=0)
    first = layers[0]
    meta = {k: v for k, v in first.metadata.items() if k not in ("channel", "channel_index")}
    meta.update({"channel_names": names, "axes": "C" + "".join(
        "ZYX"[-first.ndim:] if first.ndim <= 3 else "Q" * (first.ndim - 2) + "YX")})
    return viewer.add_image(data, name=" + ".join(names), metadata=meta,
                            scale=[1.0, *first.scale], translate=[0.0, *first.translate],
                            colormap="gray")


def _data_position(layer, viewer) -> tuple[float, ...]:
    """The viewer's current position in ``layer``'s data coordinates."""
    try:
        return tuple(float(p) for p in layer.world_to_data(viewer.dims.point))
    except (ValueError, IndexError, TypeError):
        return tuple(0.0 for _ in range(layer.ndim))
