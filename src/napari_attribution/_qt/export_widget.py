"""Dock widget: save attribution layers (OME-TIFF) and channel weights (CSV) with provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
)

from ..core.runtime.errors import InputError
from ._common import DockWidget, Settings
from ._results import KIND, provenance_text


def _attribution_layers(viewer) -> list:
    """Result layers made here or reopened from files this package wrote."""
    return [ly for ly in viewer.layers
            if ly.metadata.get(KIND, {}).get("kind") == "attribution"
            or isinstance(ly.metadata.get("attribution"), dict)]


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return "_".join(p for p in keep.split("_") if p) or "attribution"


class ExportWidget(DockWidget):
    """Write attribution layers and channel importance through ``io.writers``; show the
    provenance of the selected result layer."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.settings = Settings("export")
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.list.setToolTip("Attribution layers made by this plugin; select those to save")
        self.tiff_btn = QPushButton("Save attribution (OME-TIFF)…")
        self.csv_btn = QPushButton("Save channel weights (CSV)…")
        self.report_btn = QPushButton("Study report (HTML)…")
        self.report_btn.setToolTip("One HTML file: channel importance, validation metrics, "
                                   "example maps and provenance")
        self.provenance = QPlainTextEdit()
        self.provenance.setReadOnly(True)
        self.provenance.setPlaceholderText("select a result layer to see what made it")
        self.provenance.setMinimumHeight(140)
        lay = self.body
        lay.addWidget(QLabel("Attribution layers"))
        lay.addWidget(self.list)
        lay.addWidget(self.tiff_btn)   # one per row: the dock fits a 1280x800 window
        lay.addWidget(self.csv_btn)
        lay.addWidget(self.report_btn)
        lay.addWidget(QLabel("Provenance of the selected layer"))
        lay.addWidget(self.provenance)
        self.finish_layout()
        self.tiff_btn.clicked.connect(lambda: self.save_attribution())
        self.csv_btn.clicked.connect(lambda: self.save_importance())
        self.report_btn.clicked.connect(lambda: self.save_report())
        for ev in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, ev).connect(self.refresh)
        napari_viewer.layers.selection.events.active.connect(self.show_provenance)
        self.list.itemSelectionChanged.connect(self._on_list_selection)
        self.refresh()
        self.show_provenance()

    def show_provenance(self, *_: object) -> str:
        """Show the provenance of the active layer (or the one selected in the list)."""
        layer = self.viewer.layers.selection.active
        text = provenance_text(layer) if layer is not None else ""
        self.provenance.setPlainText(text)
        return text

    def _on_list_selection(self) -> None:
        items = self.list.selectedItems()
        if items and items[0].text() in self.viewer.layers:
            self.provenance.setPlainText(provenance_text(self.viewer.layers[items[0].text()]))

    def refresh(self, *_: object) -> None:
        chosen = {i.text() for i in self.list.selectedItems()}
        self.list.clear()
        for layer in _attribution_layers(self.viewer):
            item = QListWidgetItem(layer.name)
            self.list.addItem(item)
            item.setSelected(layer.name in chosen)

    def selected_layers(self) -> list:
        names = [i.text() for i in self.list.selectedItems()] or \
            [self.list.item(i).text() for i in range(self.list.count())]
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    def _folder(self, path: str | Path | None) -> Path | None:
        if path is not None:
            return Path(path)
        chosen = QFileDialog.getExistingDirectory(self, "Save into folder",
                                                  str(self.settings.get("last_dir", "")))
        return Path(chosen) if chosen else None

    def save_attribution(self, folder: str | Path | None = None) -> list[Path]:
        """One OME-TIFF per attribution layer (selected, or all) into ``folder``."""
        from ..io.writers import write_attribution_tiff

        written: list[Path] = []
        try:
            layers = self.selected_layers()
            if not layers:
                raise InputError("no attribution layers: run the Pixel attribution widget "
                                 "first")
            out = self._folder(folder)
            if out is None:
                return []
            self.settings.set("last_dir", str(out))
            for layer in layers:
                args, kw = export_payload(layer)
                written.append(write_attribution_tiff(out / _safe(layer.name), *args, **kw,
                                                      name=layer.name))
        except Exception as err:
            self.fail(err, "saving attribution")
            return written
        self.say("saved " + ", ".join(p.name for p in written))
        return written

    def save_importance(self, path: str | Path | None = None) -> Path | None:
        """The current model's channel importance as CSV (+ provenance sidecar)."""
        from ..io.writers import write_importance_csv

        bundle, importance = self.session.model, self.session.importance
        try:
            if bundle is None or importance is None:
                raise InputError("no channel importance: train or load a DCMIX model first")
            if path is None:
                path, _ = QFileDialog.getSaveFileName(
                    self, "Save channel weights",
                    str(Path(self.settings.get("last_dir", "")) / "channel_importance.csv"),
                    "CSV (*.csv)")
                if not path:
                    return None
            prov = dict(bundle.provenance)
            prov.update({"model_path": None if bundle.path is None else str(bundle.path),
                         "model_sha256": bundle.sha256})
            out = write_importance_csv(path, importance, provenance=prov)
        except Exception as err:
            self.fail(err, "saving channel weights")
            return None
        self.settings.set("last_dir", str(Path(out).parent))
        self.say(f"saved {out}")
        return Path(out)

    def save_report(self, path: str | Path | None = None) -> Path | None:
        """The study as one HTML file (see ``_report``)."""
        from ._report import write_report

        try:
            if self.session.bundle is None:
                raise InputError("no model: train or load one first")
            if path is None:
                path, _ = QFileDialog.getSaveFileName(
                    self, "Save study report",
                    str(Path(self.settings.get("last_dir", "")) / "study_report.html"),
                    "HTML (*.html)")
                if not path:
                    return None
            out = write_report(path, self.session, _attribution_layers(self.viewer)[:6])
        except Exception as err:
            self.fail(err, "study report")
            return None
        self.say(f"saved {out}")
        return out


def export_payload(layer) -> tuple:
    """(maps, provenance=..., pixel_size=..., axes=...) for ``write_attribution_tiff``:
    the maps as (N, H, W) planes, and in the provenance the layer's name, full shape,
    scale and translate so that reopening puts it back on its slice."""
    info = layer.metadata.get(KIND) or {}
    prov = dict(info.get("provenance") or
                (layer.metadata.get("attribution") or {}).get("provenance") or {})
    prov["layer_name"] = layer.name
    prov["layer"] = {"name": layer.name, "shape": [int(s) for s in layer.data.shape],
                     "scale": [float(s) for s in layer.scale],
                     "translate": [float(t) for t in layer.translate],
                     "channel": info.get("channel"), "key": info.get("key")}
    from ._layers import full_data

    data = np.asarray(full_data(layer))
    data = data.reshape(-1, *data.shape[-2:]) if data.ndim > 2 else data
    px = tuple(float(s) for s in layer.scale[-2:])
    return (data,), {"provenance": prov, "pixel_size": px if px != (1.0, 1.0) else None,
                     "axes": "QYX" if data.ndim == 3 else "YX"}
