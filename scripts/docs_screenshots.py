"""Regenerate the screenshots of docs/user_guide.md from the running application.

Opens napari with **File → Open Sample → Cell phenotype** (one layer per channel, labels
in the layer metadata), docks the plugin's four widgets and drives them the way a user
would with default settings: **Train** a DCMIX model in the Train widget, show the result in
Channel importance, **Explain** a *nuclear* validation image with PCIM in Pixel
attribution, and show Export with the heatmap layer present. Then it saves a grab of each
dock widget and a screenshot of the whole viewer with the heatmap over the cells.

Needs a real X display (vispy does not render with ``QT_QPA_PLATFORM=offscreen``); on a
headless machine run it under Xvfb, from the repository root::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots.py

Writes ``widget_train.png``, ``widget_importance.png``, ``widget_attribution.png``,
``widget_export.png`` and ``viewer_overlay.png`` into ``--out`` (default ``docs/images``)
and prints each path. Exits non-zero when a widget reports an error or a worker does not
finish in time. Widget settings go to a temporary folder: your saved values are neither
used nor changed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PLUGIN = "napari-attribution"
WINDOW_SIZE = (1600, 950)


class ScriptError(RuntimeError):
    """A step of the script failed (a widget error, a worker that never finished)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/images"),
                   help="folder for the PNG files (default: docs/images)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the widget's default)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for each worker (300)")
    return p.parse_args(argv)


def isolate_settings() -> tempfile.TemporaryDirectory:
    """Point the widgets' QSettings to a temporary folder (defaults, not the user's)."""
    from qtpy.QtCore import QSettings

    tmp = tempfile.TemporaryDirectory(prefix="napari-attribution-docs-")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tmp.name)
    return tmp


def record_errors() -> list[str]:
    """Collect the messages the widgets send to napari's error notifications.

    The widgets import ``show_error`` at call time, so replacing the module attribute
    catches every one; the original is still called so the message shows as usual.
    """
    import napari.utils.notifications as notifications

    seen: list[str] = []
    original = notifications.show_error

    def show_error(message: str) -> None:
        seen.append(str(message))
        print(f"error from a widget: {message}", file=sys.stderr)
        original(message)

    notifications.show_error = show_error
    return seen


def process_events(seconds: float = 0.0) -> None:
    """Let Qt run (layouts, paints, worker signals) for about ``seconds``."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while True:
        QApplication.processEvents()
        if time.monotonic() >= end:
            return
        time.sleep(0.02)


def wait_for(widget: Any, errors: list[str], what: str, timeout: float) -> float:
    """Process events until ``widget.runner`` is idle; returns the seconds it took."""
    t0 = time.monotonic()
    process_events(0.1)
    while widget.runner.running:
        if time.monotonic() - t0 > timeout:
            widget.runner.cancel()
            raise ScriptError(f"{what} did not finish within {timeout:.0f} s")
        process_events(0.05)
    process_events(0.3)  # results are shown from queued signals and timers
    if errors:
        raise ScriptError(f"{what} failed: {errors[-1]}")
    return time.monotonic() - t0


def dismiss_notifications() -> None:
    """Close napari's notification toasts so that none covers a screenshot."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for w in QApplication.allWidgets():
        if isinstance(w, NapariQtNotification) and w.isVisible():
            w.close()
    process_events(0.2)


def open_sample(viewer: Any) -> Any:
    """File -> Open Sample -> Cell phenotype, and the same data as an ImageSet."""
    from napari_attribution._sample_data import CELL_IMAGES, CELL_SIZE
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    viewer.open_sample(PLUGIN, "cell_phenotype")
    return make_cell_phenotype(n_images=CELL_IMAGES, size=CELL_SIZE, seed=0)


def pick_image(result: Any, labels: np.ndarray, wanted: int) -> int:
    """A validation image (not trained on) of class ``wanted``, the first one there is."""
    pool = result.val_index if result.val_index is not None else np.arange(len(labels))
    for i in pool:
        if int(labels[int(i)]) == wanted:
            return int(i)
    raise ScriptError(f"no image of class {wanted} to explain")


def save_grab(widget: Any, dock: Any, path: Path) -> Path:
    """Bring ``dock`` to the front, let it lay out, save a grab of ``widget``.

    The dock stretches the widget to the window's height; the grab stops a little below
    the widget's own content (its size hint) instead of showing the empty rest.
    """
    from qtpy.QtCore import QRect

    dock.show()
    dock.raise_()
    process_events(0.5)
    inner = widget.scroll.widget()  # the whole content, also what is scrolled away
    height = min(inner.height(), inner.sizeHint().height() + 12)
    if not inner.grab(QRect(0, 0, inner.width(), height)).save(str(path)):
        raise ScriptError(f"could not write {path}")
    print(path, flush=True)
    return path


def run(args: argparse.Namespace) -> int:
    import warnings

    import napari

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings_dir = isolate_settings()
    errors = record_errors()
    try:  # napari 0.6+ shows this as a toast over the canvas on every start with PyQt5
        import napari._qt.qt_main_window as qt_main_window

        qt_main_window.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    warnings.filterwarnings("ignore", message=".*PyQt5 backend.*")

    t_start = time.monotonic()
    viewer = napari.Viewer(title="napari-attribution", show=True)
    try:
        qt_window = viewer.window._qt_window
        qt_window.resize(*WINDOW_SIZE)
        data = open_sample(viewer)
        viewer.reset_view()

        docks: dict[str, tuple[Any, Any]] = {}
        for name in ("Train (DCMIX)", "Channel importance", "Pixel attribution", "Export"):
            docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        process_events(0.5)

        # -- Train --------------------------------------------------------------------
        train_dock, train = docks["Train (DCMIX)"]
        train_dock.raise_()
        if train.picker.checked_names() != list(data.channel_names):
            train.picker.set_checked(list(data.channel_names))
        if args.epochs:
            train.epochs.setValue(args.epochs)
        print(f"training: {train.label_status.text()}", flush=True)
        train.train_btn.click()
        if not train.runner.running:
            raise ScriptError(f"training did not start: {errors[-1] if errors else '?'}")
        seconds = wait_for(train, errors, "training", args.timeout)
        result = train.session.train_result
        if result is None:
            raise ScriptError("training ended without a model")
        print(f"trained in {seconds:.0f} s: {train.status.text()}", flush=True)

        # -- Channel importance -------------------------------------------------------
        imp_dock, importance = docks["Channel importance"]
        importance.refresh()
        imp = result.importance
        print(f"importance: {importance.model_label.text()}", flush=True)
        if imp is not None:
            for row in imp.rows():
                print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else str(v)
                                       for k, v in row.items()), flush=True)

        # -- Pixel attribution on a nuclear validation image ---------------------------
        att_dock, attribution = docks["Pixel attribution"]
        att_dock.raise_()
        nuclear = list(data.class_names).index("nuclear")
        index = pick_image(result, data.labels, nuclear)
        viewer.dims.set_current_step(0, index)
        attribution.scope.setCurrentText("current image")
        attribution.method.setCurrentText("pcim")
        attribution.target.setCurrentIndex(0)  # predicted
        process_events(0.2)
        attribution.run_btn.click()
        if not attribution.runner.running:
            raise ScriptError(f"PCIM did not start: {errors[-1] if errors else '?'}")
        seconds = wait_for(attribution, errors, "PCIM", args.timeout)
        if not attribution.last_layers:
            raise ScriptError("PCIM ended without a heatmap layer")
        heatmap = attribution.last_layers[0]
        mask = viewer.layers["evidence mask (ground truth)"].data[index] > 0
        m = np.asarray(heatmap.data).reshape(-1, *mask.shape)[0]
        inside = float(np.clip(m, 0, None)[mask].sum() / max(np.clip(m, 0, None).sum(), 1e-9))
        print(f"PCIM evidence inside the ground-truth mask: {inside:.0%}", flush=True)
        proba = re.sub(r"<[^>]+>", "", attribution.proba.text())
        print(f"PCIM on image {index} (label {data.class_names[int(data.labels[index])]}) "
              f"in {seconds:.1f} s: {attribution.status.text()}; {proba}", flush=True)

        # -- Export -------------------------------------------------------------------
        exp_dock, export = docks["Export"]
        export.refresh()
        if export.list.count():
            export.list.item(0).setSelected(True)

        # -- screenshots ----------------------------------------------------------------
        dismiss_notifications()
        written = [
            save_grab(train, train_dock, out / "widget_train.png"),
            save_grab(importance, imp_dock, out / "widget_importance.png"),
            save_grab(export, exp_dock, out / "widget_export.png"),
            save_grab(attribution, att_dock, out / "widget_attribution.png"),
        ]
        viewer.layers.selection.active = heatmap
        viewer.reset_view()
        dismiss_notifications()
        process_events(0.5)
        path = out / "viewer_overlay.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        print(path, flush=True)
        written.append(path)
        if errors:
            raise ScriptError(f"a widget reported an error: {errors[-1]}")
        print(f"done: {len(written)} screenshots in {time.monotonic() - t_start:.0f} s",
              flush=True)
        return 0
    except ScriptError as err:
        print(f"docs_screenshots: {err}", file=sys.stderr)
        return 1
    finally:
        viewer.close()
        settings_dir.cleanup()


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
