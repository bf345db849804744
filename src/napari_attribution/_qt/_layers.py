"""Choosing image layers as multichannel input, and placing results back over them.

Two ways to give channels: several image layers of one shape (one layer per channel,
as napari opens a multichannel file with ``channel_axis``), or one layer with a channel
axis. Leading axes (a stack, Z, T, plate positions) become the image index ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QWidget,
)

from ..core.errors import InputError


@dataclass
class Selection:
    """The input of one run, frozen at its start: layers, images and where they came from."""

    layers: list[Any]
    images: np.ndarray  # (N, C, H, W) raw
    stack_shape: tuple[int, ...]  # leading (non-channel, non-spatial) axes
    channel_names: list[str]
    channel_axis: int | None = None
    index: tuple[int, ...] | None = None  # the slice when only the current image is used
    scale: tuple[float, ...] = ()
    translate: tuple[float, ...] = ()
    metadata: dict = field(default_factory=dict)

    @property
    def source_name(self) -> str:
        if len(self.layers) == 1:
            return self.layers[0].name
        return "+".join(layer.name for layer in self.layers[:3]) + (
            "…" if len(self.layers) > 3 else "")

    def placement(self, extra_leading: int = 0) -> dict:
        """``scale``/``translate`` for a result of shape (*stack, H, W) (or a slice of it)."""
        scale = list(self.scale)
        translate = list(self.translate)
        if self.index is not None:
            for i, j in enumerate(self.index):
                translate[i] = translate[i] + j * scale[i]
        return {"scale": [1.0] * extra_leading + scale,
                "translate": [0.0] * extra_leading + translate}

    def result_shape(self, maps: np.ndarray) -> np.ndarray:
        """Reshape (N, H, W) maps to the stack's leading axes (or 1s for a single slice)."""
        lead = (1,) * len(self.stack_shape) if self.index is not None else self.stack_shape
        return maps.reshape(*lead, *maps.shape[-2:])


def image_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb
            and "napari_attribution" not in ly.metadata]  # not our own result layers


class ChannelPicker(QWidget):
    """Checkable list of image layers (one per channel) plus an optional channel axis."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.setToolTip("Tick the image layers to use, one layer per channel; or tick "
                             "one layer and give its channel axis.")
        self.axis = QSpinBox()
        self.axis.setRange(-1, 8)
        self.axis.setValue(-1)
        self.axis.setSpecialValueText("one layer per channel")
        self.axis.setToolTip("Axis of the ticked layer that holds the channels")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Image layers", self.list)
        form.addRow("Channel axis", self.axis)
        for ev in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, ev).connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        checked = set(self.checked_names())
        first = self.list.count() == 0
        self.list.clear()
        for layer in image_layers(self.viewer):
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = layer.name in checked or (first and not checked)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.list.addItem(item)

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
        """Tick the layers named like the model's channels when they are all present."""
        present = [n for n in channel_names if n in self.viewer.layers]
        if len(present) == len(channel_names) and present:
            self.set_checked(present)
            self.axis.setValue(-1)

    def layers(self) -> list:
        names = self.checked_names()
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    def selection(self, current_only: bool = False) -> Selection:
        """Gather the ticked layers as (N, C, H, W); ``current_only``: the slice on screen."""
        layers = self.layers()
        if not layers:
            raise InputError("tick at least one image layer as input")
        axis = self.axis.value()
        if axis >= 0:
            if len(layers) != 1:
                raise InputError("with a channel axis, tick exactly one layer")
            layer = layers[0]
            if layer.ndim < 3 or axis >= layer.ndim - 2:
                raise InputError(f"layer {layer.name!r} has {layer.ndim} axes; the channel "
                                 f"axis must be one of the first {max(layer.ndim - 2, 0)}")
            data = np.moveaxis(np.asarray(layer.data), axis, -3)
            n_ch = data.shape[-3]
            names = layer.metadata.get("channel_names") or [f"{layer.name}[{i}]"
                                                            for i in range(n_ch)]
            keep = [i for i in range(layer.ndim) if i != axis]
            scale = tuple(float(layer.scale[i]) for i in keep)
            translate = tuple(float(layer.translate[i]) for i in keep)
            world_pos = _data_position(layer, self.viewer)
            pos = [world_pos[i] for i in keep]
        else:
            shapes = {tuple(ly.data.shape) for ly in layers}
            if len(shapes) != 1:
                raise InputError("the ticked layers differ in shape "
                                 f"({', '.join(f'{ly.name}: {ly.data.shape}' for ly in layers)})"
                                 "; tick layers of one shape, one per channel")
            layer = layers[0]
            data = np.stack([np.asarray(ly.data) for ly in layers], axis=-3)
            names = [ly.name for ly in layers]
            scale = tuple(float(s) for s in layer.scale)
            translate = tuple(float(t) for t in layer.translate)
            pos = list(_data_position(layer, self.viewer))
        stack_shape = tuple(data.shape[:-3])
        index = None
        if current_only and stack_shape:
            index = tuple(int(np.clip(round(p), 0, n - 1))
                          for p, n in zip(pos[:len(stack_shape)], stack_shape, strict=True))
            data = data[index][None]
        images = data.reshape(-1, *data.shape[-3:])
        return Selection(layers=layers, images=images, stack_shape=stack_shape,
                         channel_names=[str(n) for n in names],
                         channel_axis=axis if axis >= 0 else None, index=index,
                         scale=scale, translate=translate,
                         metadata=dict(layers[0].metadata))


def _data_position(layer, viewer) -> tuple[float, ...]:
    """The viewer's current position in ``layer``'s data coordinates."""
    try:
        return tuple(float(p) for p in layer.world_to_data(viewer.dims.point))
    except (ValueError, IndexError, TypeError):
        return tuple(0.0 for _ in range(layer.ndim))
