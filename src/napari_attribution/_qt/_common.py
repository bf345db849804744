"""Shared pieces of the dock widgets: session state, persisted settings, plot canvas, colours."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from psygnal import Signal
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QWidget,
)

if TYPE_CHECKING:
    import napari

    from ..core.classifier import Classifier
    from ..core.data import ImageSet

ORG, APP = "napari-attribution", "widgets"
DEFAULT_COLOURS = ["#3b6fff", "#2ca02c", "#d62ad6", "#8c8c8c", "#17becf", "#e6c619"]


class Session:
    """What the widgets of one viewer share: the current model and its training data.

    Widgets connect bound methods to ``model_changed`` (psygnal holds them weakly), so
    a session never keeps a closed viewer's widgets alive.
    """

    model_changed = Signal(object)

    def __init__(self) -> None:
        self.bundle: Classifier | None = None
        self.train_result: Any = None
        self.data: ImageSet | None = None
        self.source_layers: list[str] = []

    def set_model(self, model: Any, train_result: Any = None) -> None:
        """Make ``model`` current: a ``Classifier`` or anything ``load_model`` takes (a
        ``TrainResult``, ``ModelBundle``, module); widgets see it as a ``Classifier``."""
        from ..io.models import load_model

        bundle = None if model is None else load_model(model)
        self.bundle = bundle
        self.train_result = train_result
        try:
            self.model_changed.emit(bundle)
        except Exception as err:  # e.g. a widget whose Qt side was already deleted
            import logging

            logging.getLogger(__name__).warning("a widget failed to show the model: %s", err)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: napari.Viewer) -> Session:
    """The session shared by every widget docked in ``viewer``."""
    s = _SESSIONS.get(viewer)
    if s is None:
        s = _SESSIONS[viewer] = Session()
    return s


class Settings:
    """Widget values persisted between sessions (``QSettings``), one group per widget."""

    def __init__(self, group: str) -> None:
        self.group = group

    def _qs(self) -> QSettings:
        return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)

    def get(self, key: str, default: Any = None) -> Any:
        return self._qs().value(f"{self.group}/{key}", default)

    def set(self, key: str, value: Any) -> None:
        qs = self._qs()
        qs.setValue(f"{self.group}/{key}", value)
        qs.sync()

    def bind(self, key: str, w: QWidget) -> None:
        """Restore ``w``'s value from the settings now and save it whenever it changes."""
        saved = self.get(key)
        try:
            if isinstance(w, QSpinBox):
                if saved is not None:
                    w.setValue(int(saved))
                w.valueChanged.connect(lambda v: self.set(key, int(v)))
            elif isinstance(w, QDoubleSpinBox):
                if saved is not None:
                    w.setValue(float(saved))
                w.valueChanged.connect(lambda v: self.set(key, float(v)))
            elif isinstance(w, QCheckBox):
                if saved is not None:
                    w.setChecked(str(saved).lower() in ("true", "1"))
                w.toggled.connect(lambda v: self.set(key, bool(v)))
            elif isinstance(w, QComboBox):
                if saved is not None and w.findText(str(saved)) >= 0:
                    w.setCurrentIndex(w.findText(str(saved)))
                w.currentTextChanged.connect(lambda t: self.set(key, t))
            elif isinstance(w, QLineEdit):
                if saved is not None:
                    w.setText(str(saved))
                w.editingFinished.connect(lambda: self.set(key, w.text()))
        except (TypeError, ValueError):
            pass  # a corrupt saved value: keep the default


class PlotCanvas(QWidget):
    """A small matplotlib figure inside a Qt widget, styled to sit in napari's dark theme."""

    def __init__(self, height: float = 2.4, parent: QWidget | None = None) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from qtpy.QtWidgets import QVBoxLayout

        super().__init__(parent)
        self.figure = Figure(figsize=(3.6, height), dpi=72, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(int(height * 60))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def axes(self, n: int = 1) -> list:
        """Clear the figure and return ``n`` side-by-side axes styled for a dark background."""
        self.figure.clear()
        axes = [self.figure.add_subplot(1, n, i + 1) for i in range(n)]
        for ax in axes:
            ax.set_facecolor("#262930")
            ax.tick_params(colors="#d0d0d0", labelsize=8)
            for side in ax.spines.values():
                side.set_color("#808080")
            ax.title.set_color("#e0e0e0")
            ax.title.set_fontsize(9)
            ax.xaxis.label.set_color("#d0d0d0")
            ax.yaxis.label.set_color("#d0d0d0")
            ax.xaxis.label.set_fontsize(8)
            ax.yaxis.label.set_fontsize(8)
        return axes

    @staticmethod
    def legend(ax, **kwargs) -> None:
        """A legend readable on the dark background; neutral swatches for hatched bars."""
        leg = ax.legend(fontsize=8, facecolor="#262930", edgecolor="#808080",
                        labelcolor="#e0e0e0", **kwargs)
        for patch in leg.get_patches():
            if patch.get_hatch():
                patch.set_edgecolor("#d0d0d0")

    def draw(self) -> None:
        """Schedule a redraw. Fixed margins: ``tight_layout`` would cost a full text
        layout on every live update and stall the GUI thread."""
        n = max(1, len(self.figure.axes))
        self.figure.subplots_adjust(left=0.1 if n == 1 else 0.08, right=0.98, top=0.88,
                                    bottom=0.3, wspace=0.3)
        self.canvas.draw_idle()


def channel_colours(viewer: napari.Viewer, names: list[str]) -> list[str]:
    """napari's colour of the image layer named like each channel (a default otherwise)."""
    from matplotlib.colors import to_hex

    out = []
    for i, name in enumerate(names):
        colour = DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
        if name in viewer.layers:
            layer = viewer.layers[name]
            cmap = getattr(layer, "colormap", None)
            colors = getattr(cmap, "colors", None)
            if colors is not None and len(colors):
                rgba = colors[-1]
                if sum(rgba[:3]) > 0.2:  # a black colormap end would hide the bar
                    colour = to_hex(rgba[:3])
        out.append(colour)
    return out


def device_choices() -> list[str]:
    """``auto`` plus the devices that exist on this machine."""
    from ..core.devices import available_devices

    return ["auto", *available_devices()]
