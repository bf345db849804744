"""Shared pieces of the dock widgets: persisted settings, plot canvas, colours; the session
(``napari_attribution.session``, no Qt) is re-exported here for the widgets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QSettings, Qt
from qtpy.QtCore import Signal as QtSignal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QLabel,
    QLineEdit,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..session import Session, session_for

if TYPE_CHECKING:
    import napari

ORG, APP = "napari-attribution", "widgets"
FONT_PT = 9  # smallest font in the plots
MIN_WIDTH = 300  # a dock is never narrower (px), nor narrower than its content needs
DEFAULT_COLOURS = ["#3b6fff", "#2ca02c", "#d62ad6", "#8c8c8c", "#17becf", "#e6c619"]

__all__ = ["DockWidget", "PlotCanvas", "Session", "Settings", "channel_colours",
           "device_choices", "session_for"]


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

    def remove(self, key: str) -> None:
        qs = self._qs()
        qs.remove(f"{self.group}/{key}")
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


class DockWidget(QWidget):
    """Base of the dock widgets: content in a scroll area (a dock never grows the window
    past the screen), and a message line below it that keeps the full text of the last
    message or error (notifications get cut).

    Subclasses add their rows to ``self.body`` and call :meth:`finish_layout`.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QWidget()
        self.body = QVBoxLayout(inner)
        self.scroll.setWidget(inner)
        outer.addWidget(self.scroll, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setContentsMargins(6, 2, 6, 4)
        outer.addWidget(self.status)
        # a new model: no earlier run's message stays (widgets' own handlers run after)
        self.session.model_changed.connect(self._clear_status)
        #: the channel layers ticked at the last input change (see :meth:`_input_changed`)
        self._input_key: tuple | None = None

    def finish_layout(self) -> None:
        self.body.addStretch(1)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        if not getattr(self, "_tabs_joined", False):
            self._tabs_joined = True
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self.join_tabs)

    def join_tabs(self) -> bool:
        """Dock this widget as a tab beside another of this plugin's docks in the same
        area (however it was opened: Plugins menu, ``add_dock_widget``, the demo), so
        the docks never stack into slivers. True when it joined one."""
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        win = dock.parentWidget() if dock is not None else None
        if not isinstance(win, QMainWindow) or dock.isFloating() \
                or win.tabifiedDockWidgets(dock):
            return False
        area = win.dockWidgetArea(dock)
        for other in win.findChildren(QDockWidget):
            inner = other.widget()
            if other is dock or inner is None or other.isFloating() \
                    or not other.isVisible() or win.dockWidgetArea(other) != area:
                continue
            if isinstance(inner, DockWidget) or inner.findChild(DockWidget) is not None:
                win.tabifyDockWidget(other, dock)
                dock.raise_()
                return True
        return False

    def _input_changed(self) -> None:
        """Other layers ticked in the widget's channel picker (``self.picker``): the
        last run's messages go (the widget's ``_clear_messages``), at once, so that a
        result arriving later for the earlier input stays."""
        key = tuple(self.picker.checked_names())
        if key != self._input_key:
            if self._input_key is not None:
                self._clear_messages()
            self._input_key = key

    def _clear_status(self, *_: Any) -> None:
        try:
            self.say("")
        except RuntimeError:   # the Qt side is gone
            pass

    def say(self, text: str) -> None:
        """Show ``text`` on the message line (not an error)."""
        self.status.setStyleSheet("")
        self.status.setText(text)

    def fail(self, err: BaseException, what: str = "") -> None:
        """Show ``err`` on the message line (full text) and as a notification."""
        from ._runner import notify_error

        notify_error(err, what, self.status)

    def sizeHint(self):  # noqa: N802 (Qt API)
        hint = super().sizeHint()
        hint.setHeight(min(hint.height(), 600))
        hint.setWidth(max(hint.width(), self.minimumSizeHint().width()))
        return hint

    def minimumSizeHint(self):  # noqa: N802 (Qt API)
        """As wide as the content needs (the scroll area scrolls only vertically), so
        the dock area never cuts a row off at the right edge."""
        hint = super().minimumSizeHint()
        need = (self.scroll.widget().minimumSizeHint().width()
                + self.scroll.verticalScrollBar().sizeHint().width()
                + 2 * self.scroll.frameWidth())
        hint.setWidth(max(hint.width(), need, MIN_WIDTH))
        return hint


class _RenderDone(QObject):
    done = QtSignal(object)


class _Picture(QWidget):
    """Shows a pixmap. Unlike ``QLabel.setPixmap``, a new picture asks for a repaint of
    this widget only, not for a new layout of the dock and the window."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pixmap = None

    def setPixmap(self, pixmap) -> None:  # noqa: N802 (QLabel's name)
        self._pixmap = pixmap
        self.update()

    def pixmap(self):
        return self._pixmap

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if self._pixmap is not None:
            from qtpy.QtGui import QPainter

            painter = QPainter(self)
            painter.drawPixmap(0, 0, self._pixmap)
            painter.end()


class PlotCanvas(QWidget):
    """A small matplotlib figure shown in a Qt widget, styled for napari's dark theme.

    Rendering (Agg, tens to hundreds of milliseconds of text layout) runs in a background
    thread and the GUI thread only shows the finished image, so live plots never stall
    the event loop. Change the figure through :meth:`update` (or, when the canvas is
    :attr:`idle`, directly) and end with :meth:`draw`: while a render is running, changes
    wait until it is done.

    Live plots mark their changing artists ``animated`` and, while axes, ticks and texts
    stay as they are, end with :meth:`blit` instead: the last full render's background
    is kept and only those artists are drawn on it, in the GUI thread (about a
    millisecond, against ~50 ms of CPU and GIL for a full render in a thread that
    competes with the worker and the event loop for two cores, issue 23).
    """

    def __init__(self, height: float = 2.4, parent: QWidget | None = None) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        super().__init__(parent)
        self.figure = Figure(figsize=(3.6, height), dpi=80, facecolor="#262930")
        self._agg = FigureCanvasAgg(self.figure)
        self.image = _Picture()
        self.image.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.image.setMinimumHeight(int(height * 70))
        self.setMinimumHeight(int(height * 70))
        self.bottom = 0.45  # room for tick labels, axis label and the legend below
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.image)
        self._signal = _RenderDone()
        self._signal.done.connect(self._on_rendered)
        self._rendering = False
        self._holding = False
        self._dirty = False
        self._pending: list = []
        self._background = None  # (Agg region without animated artists, its size)

    @property
    def idle(self) -> bool:
        """No render running and no change waiting."""
        return not self._rendering and not self._pending and (
            not self._dirty or not self.isVisible())

    def update(self, fn) -> None:  # type: ignore[override]
        """Run ``fn()`` (which changes the figure and calls :meth:`draw`) now, or after
        the running render."""
        if self._rendering:
            self._pending.append(fn)
        else:
            fn()

    def draw(self) -> None:
        """Render the figure in the background (coalesced) and show it when done; a
        hidden canvas (a dock tab not on top) renders when it is shown."""
        if self._rendering or self._holding or not self.isVisible():
            self._dirty = True
            return
        self._start()

    def blit(self) -> None:
        """Show the animated artists' new state over the last full render's background,
        in the GUI thread; a full :meth:`draw` when there is no valid background (none
        yet, the canvas was resized, a render is running or the canvas is hidden)."""
        bg = self._background
        if (self._rendering or self._dirty or not self.isVisible() or bg is None
                or bg[1] != self._agg.get_width_height() or bg[2] != self._target_size()):
            self.draw()
            return
        self._agg.restore_region(bg[0])
        for artist in self._animated():
            self.figure.draw_artist(artist)
        w, h = self._agg.get_width_height()
        self._show(bytes(self._agg.buffer_rgba()), w, h)

    def _animated(self) -> list:
        return [a for ax in self.figure.axes for a in ax.get_children() if a.get_animated()]

    def _target_size(self) -> tuple[int, int]:
        return max(self.width(), 200), max(self.height(), self.minimumHeight())

    def _show(self, buf: bytes, w: int, h: int) -> None:
        from qtpy.QtGui import QImage, QPixmap

        img = QImage(buf, w, h, QImage.Format.Format_RGBA8888).copy()
        self.image.setPixmap(QPixmap.fromImage(img))

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        if self._dirty and not self._rendering:
            self._start()

    def _start(self) -> None:
        import threading

        n = len({ax.get_subplotspec().colspan.start for ax in self.figure.axes
                 if ax.get_subplotspec() is not None}) or 1
        self.figure.subplots_adjust(left=0.16 if n == 1 else 0.12, right=0.9, top=0.88,
                                    bottom=self.bottom, wspace=0.55)
        w, h = self._target_size()
        self.figure.set_size_inches(w / self.figure.dpi, h / self.figure.dpi)
        self._rendering = True
        self._dirty = False
        self._background = None
        threading.Thread(target=self._render, args=((w, h), self._animated()),
                         daemon=True).start()

    def _render(self, target: tuple[int, int], animated: list) -> None:
        try:
            self._agg.draw()  # without the animated artists
            w, h = self._agg.get_width_height()
            background = (self._agg.copy_from_bbox(self.figure.bbox), (w, h), target) \
                if animated else None
            for artist in animated:
                self.figure.draw_artist(artist)
            payload = (bytes(self._agg.buffer_rgba()), w, h, background)
        except Exception as err:  # a broken figure must not kill the thread silently
            import logging

            logging.getLogger(__name__).warning("plot rendering failed: %s", err)
            payload = None
        try:
            self._signal.done.emit(payload)
        except RuntimeError:  # the widget is gone
            pass

    def _on_rendered(self, payload) -> None:
        self._rendering = False
        if payload is not None:
            buf, w, h, self._background = payload
            self._show(buf, w, h)
        pending, self._pending = self._pending, []
        self._holding = True
        try:
            for fn in pending:
                fn()
        finally:
            self._holding = False
        if self._dirty:
            self._dirty = False
            self.draw()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        if self.figure.axes:
            self.draw()

    def axes(self, n: int = 1) -> list:
        """Clear the figure and return ``n`` side-by-side axes styled for a dark background
        (only while :attr:`idle` or inside :meth:`update`)."""
        self.figure.clear()
        self._background = None
        axes = [self.figure.add_subplot(1, n, i + 1) for i in range(n)]
        for ax in axes:
            ax.set_facecolor("#262930")
            ax.tick_params(colors="#d0d0d0", labelsize=FONT_PT)
            for side in ax.spines.values():
                side.set_color("#808080")
            ax.title.set_color("#e0e0e0")
            ax.title.set_fontsize(FONT_PT + 1)
            ax.xaxis.label.set_color("#d0d0d0")
            ax.yaxis.label.set_color("#d0d0d0")
            ax.xaxis.label.set_fontsize(FONT_PT)
            ax.yaxis.label.set_fontsize(FONT_PT)
        return axes

    @staticmethod
    def legend(ax, **kwargs) -> None:
        """A legend readable on the dark background, on the figure's bottom edge (under
        the axis label, never over it or the data, whatever the widget's height); neutral
        swatches for hatched bars."""
        kwargs.setdefault("loc", "lower center")
        kwargs.setdefault("bbox_to_anchor", (0.5, 0.0))
        kwargs.setdefault("bbox_transform", ax.figure.transFigure)
        kwargs.setdefault("ncol", 2)
        leg = ax.legend(fontsize=FONT_PT, facecolor="#262930", edgecolor="#808080",
                        labelcolor="#e0e0e0", **kwargs)
        for patch in leg.get_patches():
            if patch.get_hatch():
                patch.set_edgecolor("#d0d0d0")


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
    from ..core.runtime.devices import available_devices

    return ["auto", *available_devices()]
