"""Maps readable over multichannel images: while a result map is shown, the image
channels under it are muted (lower opacity), and restored as they were once no map
over them is visible (hidden or removed)."""

from __future__ import annotations

import weakref
from typing import Any

#: a muted channel keeps this share of its opacity
MUTED_SHARE = 0.45

_MUTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ChannelMuter:
    """Per viewer: which map layers mute which channel layers, and the opacities to
    restore. A channel is restored when every map muting it is hidden or removed; an
    opacity the user changed meanwhile is left as the user set it."""

    def __init__(self, viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self._maps: dict[int, tuple[Any, list]] = {}   # map id -> (map, channel layers)
        self._saved: dict[int, tuple[Any, float, float]] = {}  # id -> (layer, was, muted)
        viewer.layers.events.removed.connect(self._on_removed)

    def mute(self, map_layer, channels: list) -> None:
        """Mute ``channels`` while ``map_layer`` is visible."""
        if id(map_layer) not in self._maps:
            map_layer.events.visible.connect(self._refresh)
        self._maps[id(map_layer)] = (map_layer, list(channels))
        self._refresh()

    def muted(self) -> list:
        """The channel layers muted now."""
        return [ly for ly, _, _ in self._saved.values()]

    def _refresh(self, *_: Any) -> None:
        wanted: dict[int, Any] = {}
        for layer, chans in self._maps.values():
            if layer.visible:
                wanted.update({id(ly): ly for ly in chans})
        for key, ly in wanted.items():
            if key not in self._saved:
                was = float(ly.opacity)
                self._saved[key] = (ly, was, was * MUTED_SHARE)
                ly.opacity = was * MUTED_SHARE
        for key, (ly, was, muted) in list(self._saved.items()):
            if key not in wanted:
                if abs(float(ly.opacity) - muted) < 1e-6:  # the user left it muted
                    ly.opacity = was
                del self._saved[key]

    def _on_removed(self, event) -> None:
        layer = event.value
        self._maps.pop(id(layer), None)
        self._saved.pop(id(layer), None)
        for key, (m, chans) in list(self._maps.items()):
            self._maps[key] = (m, [ly for ly in chans if ly is not layer])
        self._refresh()


def muter_for(viewer) -> ChannelMuter:
    """The viewer's :class:`ChannelMuter`."""
    m = _MUTERS.get(viewer)
    if m is None:
        m = _MUTERS[viewer] = ChannelMuter(viewer)
    return m


def mute_channels(viewer, map_layer, channels: list) -> None:
    """Mute the image ``channels`` under ``map_layer`` while it is shown."""
    muter_for(viewer).mute(map_layer, list(channels))
