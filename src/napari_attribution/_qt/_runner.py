"""Running a core generator in napari's ``create_worker`` with a progress bar and Cancel.

One :class:`TaskRunner` per widget. The generator runs in a plain napari generator worker
(every yield is a chance to cancel: ``worker.quit()`` stops it at its next yield); progress
events are collected as they come and shown through a ``superqt.qthrottled`` function, so
the GUI thread draws at most once per ``FLUSH_MS`` however fast the work yields. The bar in
napari's activity dock is a ``napari.utils.progress``. Errors go to the widget's message
line (full text) and to a napari notification, never to a traceback dialog. Closing the
viewer window stops the work without waiting for it.

Nothing here touches torch's thread count: a bare worker running the same generator shows
the GUI needs no core of its own (``benchmarks/gui_latency.py``).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QWidget

from ..core.runtime.progress import Progress

log = logging.getLogger(__name__)
FLUSH_MS = 1000  # GUI updates from progress events at most this often: each one
# repaints the window, which napari's canvas makes Qt compose with OpenGL (on a machine
# without a GPU Mesa's llvmpipe threads, which must get a core before the GUI thread
# goes on: beside a busy worker and another busy process, a 50-100 ms stall now and
# then; gui_latency.py --trace-stalls)
PBAR_EVERY_S = 1.0  # napari's activity bar moves at most this often (each move runs
# QApplication.processEvents and repaints the window)


def calm_indicators(window: QWidget) -> list[Any]:
    """Pause the window's running animated labels (napari's "in progress" GIF) while our
    work runs; returns the paused movies for :func:`restore_indicators`.

    The GIF is a 256-px image scaled to 18 px frame by frame at 33 fps, and napari's canvas
    makes Qt compose the whole window with OpenGL at each frame (llvmpipe threads on a
    machine without a GPU): on two cores every millisecond of that stalls torch's parallel
    regions in the worker (measured: the job ran ~1.3x longer with the animation than
    without). The label stays visible, our progress bar and the activity dock still move.
    Only public Qt API (labels' movies), nothing private of napari.
    """
    from qtpy.QtGui import QMovie

    paused = []
    for label in window.findChildren(QLabel):
        movie = label.movie()
        if movie is not None and movie.state() == QMovie.MovieState.Running:
            movie.setPaused(True)
            paused.append(movie)
    return paused


def restore_indicators(paused: list[Any]) -> None:
    """Undo :func:`calm_indicators` (movies napari stopped or deleted meanwhile are left)."""
    from qtpy.QtGui import QMovie

    for movie in paused:
        try:
            if movie.state() == QMovie.MovieState.Paused:
                movie.setPaused(False)
        except RuntimeError:
            pass


def _drive(gen: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """Forward ``gen``; closing this generator closes ``gen`` too."""
    return (yield from gen)


def error_text(err: BaseException, what: str = "") -> str:
    """The sentence a user sees for ``err`` (our own errors without their class name)."""
    from ..core.runtime.errors import AttributionError

    msg = str(err) if isinstance(err, AttributionError) else f"{type(err).__name__}: {err}"
    return f"{what + ': ' if what else ''}{msg}"


def notify_error(err: BaseException, what: str = "", line: QLabel | None = None) -> None:
    """Show ``err`` in ``line`` (the widget's message line, full text) and as a napari
    error notification; unexpected errors are also logged with their traceback."""
    from napari.utils.notifications import show_error

    from ..core.runtime.errors import AttributionError

    text = error_text(err, what)
    if not isinstance(err, AttributionError):
        log.error("%s failed", what or "napari-attribution", exc_info=err)
    if line is not None:
        try:
            line.setText(text)
            line.setProperty("error", True)
            line.setStyleSheet("color: #ff8080;")
        except RuntimeError:  # the widget was deleted meanwhile
            pass
    show_error(text)


def leave_a_core() -> None:
    """Leave the GUI a core: torch's intra-op threads to all cores but one (once, and
    never where the user set ``OMP_NUM_THREADS`` or the like)."""
    from ..core.runtime.threads import leave_a_core_for_gui

    try:
        leave_a_core_for_gui()
    except Exception:  # a torch that refuses the change: keep its threads
        pass


class TaskRunner(QObject):
    """Runs one piece of long work at a time for a widget."""

    def __init__(self, widget: QWidget, buttons: Sequence[QPushButton], cancel: QPushButton,
                 bar: QProgressBar, status: QLabel) -> None:
        from superqt.utils import qthrottled

        super().__init__(widget)
        self._widget = widget
        self._buttons = list(buttons)
        self._cancel = cancel
        self._bar = bar
        self._status = status
        self.worker = None
        self._pbar = None
        self._calmed: list[Any] = []
        self._pbar_shown = 0.0
        self._calm_again = False
        self._cancelled = False
        self._watched: weakref.ref | None = None  # weak: never keep a closed window alive
        self._pending: list[Progress] = []
        self._on_progress: Callable[[list[Progress]], None] | None = None
        self._flushing = False
        self._throttled = qthrottled(self._flush, timeout=FLUSH_MS, parent=self)
        cancel.setEnabled(False)
        cancel.clicked.connect(self.cancel)
        # the bar's room stays when it hides: starting and ending work then repaint the
        # bar only, without laying out the dock and the window again
        policy = bar.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        bar.setSizePolicy(policy)
        bar.setVisible(False)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, gen: Generator[Progress, None, Any], description: str,
              on_result: Callable[[Any], None],
              on_progress: Callable[[list[Progress]], None] | None = None) -> Any:
        """Run ``gen`` in a worker; ``on_result(value)`` runs in the GUI thread at the end.

        ``on_progress`` gets every event since the last GUI update (none is dropped), at
        most once per ``FLUSH_MS``. Returns the worker (None when one is already running).
        """
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self.running:
            gen.close()
            notify_error(RuntimeError("a task is already running; cancel it first"),
                         line=self._status)
            return None
        self._watch_window()
        leave_a_core()
        worker = create_worker(_drive, gen, _start_thread=False, _ignore_errors=True)
        self.worker = worker
        self._on_progress = on_progress
        self._pending = []
        self._cancelled = False
        # the widget's own changes first: napari's bar processes events as it appears,
        # so they are repainted with it, in one composition of the window
        self._set_busy(True, description)
        self._pbar = progress(total=0, desc=description)
        self._calmed = calm_indicators(self._widget.window())
        self._pbar_shown = 0.0
        self._calm_again = True  # napari may start its animation after this call
        outcome: dict[str, Any] = {}

        def on_yielded(ev: Progress) -> None:
            if self.worker is worker:
                self._pending.append(ev)
                self._throttled()

        def on_returned(value: Any) -> None:
            outcome["value"] = value

        def on_errored(err: BaseException) -> None:
            outcome["error"] = err

        def on_finished() -> None:
            if self.worker is not worker:  # shut down meanwhile
                return
            if self._flushing:  # reached from inside a flush (napari's bar processes
                QTimer.singleShot(5, on_finished)  # events): finish once it is over
                return
            self._throttled.cancel()
            self._flush()
            self._finish()
            if self._status.text() == description or \
                    self._status.text().startswith(f"{description}:"):
                self._status.setText("")   # no stale "loading model" after success
            if "error" in outcome:
                notify_error(outcome["error"], description, self._status)
            elif self._cancelled:
                self._status.setText(f"{description}: cancelled")
            elif "value" in outcome:
                try:
                    on_result(outcome["value"])
                except Exception as err:
                    notify_error(err, description, self._status)

        worker.yielded.connect(on_yielded)
        worker.returned.connect(on_returned)
        worker.errored.connect(on_errored)
        worker.finished.connect(on_finished)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running work to stop at its next progress event."""
        if self.worker is not None:
            self._cancelled = True
            self._status.setText("cancelling…")
            self.worker.quit()

    def shutdown(self) -> None:
        """Stop the work without waiting for it (viewer closing): the worker thread ends
        at the generator's next yield; nothing it returns is used."""
        worker = self.worker
        if worker is None:
            return
        self._cancelled = True
        self.worker = None
        worker.quit()
        self._throttled.cancel()
        self._pending = []
        restore_indicators(self._calmed)
        self._calmed = []
        if self._pbar is not None:
            try:
                self._pbar.close()
            except RuntimeError:
                pass
            self._pbar = None

    # -- internals -----------------------------------------------------------------------

    def _flush(self) -> None:
        """Show the progress events gathered since the last flush (never re-entered:
        napari's progress bar processes events while it redraws)."""
        if self._flushing or not self._pending:
            return
        events, self._pending = self._pending, []
        if self._calm_again:
            self._calm_again = False
            self._calmed += calm_indicators(self._widget.window())
        self._flushing = True
        try:
            if self._on_progress is not None:
                try:
                    self._on_progress(events)
                except Exception as err:  # a plotting hiccup must not kill the run
                    log.warning("progress display failed: %s", err)
            self._show_progress(events[-1])
        finally:
            self._flushing = False

    def _show_progress(self, ev: Progress) -> None:
        """Progress goes into the bars only: changing a label's text makes Qt lay out the
        dock and then napari's main window again (milliseconds each, 10 times a second).

        One window repaint per flush: ``QProgressBar.setValue`` repaints at once (a
        synchronous composition of the whole window, with software OpenGL under napari's
        canvas) and the format change would ask for a second one, so the bar's updates
        are held while it changes and it is repainted with the next window update, with
        the live plots'. napari's activity bar repaints and processes events itself: it
        moves last, in the same composition."""
        bar = self._bar
        held = bar.updatesEnabled()
        bar.setUpdatesEnabled(False)
        try:
            if ev.total > 0:
                if bar.maximum() != ev.total:
                    bar.setRange(0, ev.total)
                bar.setValue(min(ev.step, ev.total))
            if ev.message:
                text = ev.message if len(ev.message) <= 48 else ev.message[:47] + "…"
                bar.setFormat(f"{text.replace('%', '%%')}  %p%")
                bar.setToolTip(ev.message)
        finally:
            bar.setUpdatesEnabled(held)  # (re)enabling schedules the one repaint
        pbar = self._pbar
        now = time.monotonic()
        if pbar is None or (now - self._pbar_shown < PBAR_EVERY_S and ev.step < ev.total):
            return
        self._pbar_shown = now
        try:
            if ev.total > 0 and pbar.total != ev.total:
                pbar.total = ev.total
            if ev.step > pbar.n:
                pbar.update(ev.step - pbar.n)
        except (RuntimeError, AttributeError):  # the bar was closed meanwhile
            pass

    def _set_busy(self, busy: bool, message: str = "") -> None:
        for b in self._buttons:
            b.setEnabled(not busy)
        self._cancel.setEnabled(busy)
        self._bar.setVisible(busy)
        if busy:
            self._bar.setRange(0, 0)
            self._bar.setFormat("%p%")
            self._status.setStyleSheet("")
        if message:
            self._status.setText(message)

    def _finish(self) -> None:
        self.worker = None
        self._pending = []
        restore_indicators(self._calmed)
        self._calmed = []
        self._set_busy(False)  # (before napari's bar goes: one repaint for both)
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _watch_window(self) -> None:
        """Stop the work when the top-level (viewer) window closes."""
        win = self._widget.window()
        old = self._watched() if self._watched is not None else None
        if win is not self._widget and win is not old:
            if old is not None:
                old.removeEventFilter(self)
            win.installEventFilter(self)
            self._watched = weakref.ref(win)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        watched = getattr(self, "_watched", None)
        if (watched is not None and obj is watched() and event.type() == QEvent.Type.Close
                and self.running):
            self.shutdown()
        return False
