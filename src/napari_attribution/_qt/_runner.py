"""Running a core generator in a napari thread worker without ever freezing the GUI.

One :class:`TaskRunner` per widget: it starts ``Generator[Progress, None, R]`` work in a
``thread_worker``, mirrors progress into a napari progress bar and the widget's own bar,
disables the widget's action buttons while running, cancels with ``worker.quit()``
(the generator is closed at its next yield), reports errors as napari notifications and
stops the work when the viewer window closes.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any

from qtpy.QtCore import QEvent, QObject, QThreadPool, QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QWidget

from ..core.progress import Progress

log = logging.getLogger(__name__)
FLUSH_MS = 100  # GUI updates from progress events at most this often


def _drive(gen: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """Forward ``gen``; closing this generator closes ``gen`` too."""
    return (yield from gen)


def reserve_gui_core() -> None:
    """Leave one CPU core to the GUI thread: torch's intra-op threads default to every core
    and, spinning, starve the event loop (on 2 cores p95 timer lateness went from ~60 to
    ~40 ms, and training got faster). Process-wide, applied once, only when torch would
    otherwise use every core."""
    import torch

    n = os.cpu_count() or 1
    if n > 1 and torch.get_num_threads() >= n:
        torch.set_num_threads(n - 1)
        log.info("napari-attribution: torch uses %d thread(s), one core left to the GUI",
                 n - 1)


def notify_error(err: BaseException, what: str = "") -> None:
    """Show ``err`` as a napari error notification (never a traceback dialog)."""
    from napari.utils.notifications import show_error

    from ..core.errors import AttributionError

    msg = str(err) if isinstance(err, AttributionError) else f"{type(err).__name__}: {err}"
    if not isinstance(err, AttributionError):
        log.error("%s failed", what or "napari-attribution", exc_info=err)
    show_error(f"{what + ': ' if what else ''}{msg}")


class TaskRunner(QObject):
    """Runs one piece of long work at a time for a widget."""

    def __init__(self, widget: QWidget, buttons: Sequence[QPushButton], cancel: QPushButton,
                 bar: QProgressBar, status: QLabel) -> None:
        super().__init__(widget)
        self._widget = widget
        self._buttons = list(buttons)
        self._cancel = cancel
        self._bar = bar
        self._status = status
        self.worker = None
        self._pbar = None
        self._cancelled = False
        self._watched: weakref.ref | None = None  # weak: never keep a closed window alive
        self._pending: list[Progress] = []
        self._on_progress: Callable[[list[Progress]], None] | None = None
        self._flushing = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(FLUSH_MS)
        self._timer.timeout.connect(self._flush)
        cancel.setEnabled(False)
        cancel.clicked.connect(self.cancel)
        bar.setVisible(False)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, gen: Generator[Progress, None, Any], description: str,
              on_result: Callable[[Any], None],
              on_progress: Callable[[list[Progress]], None] | None = None) -> Any:
        """Run ``gen`` in a worker; ``on_result(value)`` runs in the GUI thread at the end.

        Progress events are coalesced: at most every ``FLUSH_MS`` the GUI is updated once,
        and ``on_progress`` gets every event since the last update (none is dropped).
        """
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self.running:
            notify_error(RuntimeError("a task is already running; cancel it first"))
            gen.close()
            return None
        self._watch_window()
        reserve_gui_core()
        worker = create_worker(_drive, gen, _start_thread=False, _ignore_errors=True)
        self.worker = worker
        self._on_progress = on_progress
        self._pending = []
        self._cancelled = False
        self._pbar = progress(total=0, desc=description)
        self._set_busy(True, description)

        def on_yielded(ev: Progress) -> None:
            if self.worker is worker:
                self._pending.append(ev)
                if not self._timer.isActive():
                    self._timer.start()

        outcome: dict[str, Any] = {}

        def on_returned(value: Any) -> None:
            if self.worker is worker:
                outcome["value"] = value

        def on_errored(err: BaseException) -> None:
            if self.worker is worker:
                outcome["error"] = err

        def complete() -> None:
            # napari's progress bar processes events while it updates, so this may be
            # reached inside a flush: come back once that flush is over
            if self.worker is not worker:
                return
            if self._flushing:
                QTimer.singleShot(10, complete)
                return
            self._flush()
            self._finish("cancelled" if self._cancelled else "done")
            if "error" in outcome:
                notify_error(outcome["error"], description)
            elif "value" in outcome and not self._cancelled:
                try:
                    on_result(outcome["value"])
                except Exception as err:
                    notify_error(err, description)

        def on_finished() -> None:
            complete()

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

    def shutdown(self, wait_ms: int = 10000) -> None:
        """Cancel and wait for the worker thread (viewer closing)."""
        worker = self.worker
        if worker is None:
            return
        self._cancelled = True
        worker.quit()
        for sig in (worker.yielded, worker.returned, worker.errored, worker.finished):
            try:
                sig.disconnect()
            except (TypeError, RuntimeError):
                pass
        self.worker = None
        self._timer.stop()
        self._pending = []
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        QThreadPool.globalInstance().waitForDone(wait_ms)

    # -- internals -----------------------------------------------------------------------

    def _flush(self) -> None:
        """Show the progress events gathered since the last flush (never re-entered)."""
        if self._flushing:
            self._timer.start()
            return
        events, self._pending = self._pending, []
        if not events:
            return
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
        if ev.total > 0:
            self._bar.setRange(0, ev.total)
            self._bar.setValue(min(ev.step, ev.total))
        if ev.message:
            self._status.setText(ev.message)
        pbar = self._pbar
        if pbar is None:
            return
        try:
            if ev.total > 0 and pbar.total != ev.total:
                pbar.total = ev.total
            if ev.step > pbar.n:
                pbar.update(ev.step - pbar.n)
            if ev.message:
                pbar.set_description(ev.message)
        except (RuntimeError, AttributeError):  # the bar was closed meanwhile
            pass

    def _set_busy(self, busy: bool, message: str = "") -> None:
        for b in self._buttons:
            b.setEnabled(not busy)
        self._cancel.setEnabled(busy)
        self._bar.setVisible(busy)
        if busy:
            self._bar.setRange(0, 0)
        if message:
            self._status.setText(message)

    def _finish(self, message: str) -> None:
        self._timer.stop()
        self._pending = []
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._set_busy(False)
        if message == "cancelled":
            self._status.setText("cancelled")

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
