"""Dock widget: save attribution layers (OME-TIFF) and channel weights (CSV) with provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError
from ._common import Settings, session_for
from ._runner import notify_error

KIND = "napari_attribution"


def _attribution_layers(viewer) -> list:
    return [ly for ly in viewer.layers
            if ly.metadata.get(KIND, {}).get("kind") == "attribution"]


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return "_".join(p for p in keep.split("_") if p) or "attribution"


class ExportWidget(QWidget):
    """Write attribution layers and channel importance through ``io.writers``."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.settings = Settings("export")
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.list.setToolTip("Attribution layers made by this plugin; select those to save")
        self.tiff_btn = QPushButton("Save attribution (OME-TIFF)…")
        self.csv_btn = QPushButton("Save channel weights (CSV)…")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Attribution layers"))
        lay.addWidget(self.list)
        row = QHBoxLayout()
        row.addWidget(self.tiff_btn)
        row.addWidget(self.csv_btn)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.tiff_btn.clicked.connect(lambda: self.save_attribution())
        self.csv_btn.clicked.connect(lambda: self.save_importance())
        for ev in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, ev).connect(self.refresh)
        self.refresh()

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
                meta = layer.metadata[KIND]
                prov = dict(meta.get("provenance", {}))
                prov["layer_name"] = layer.name
                data = np.asarray(layer.data)
                while data.ndim > 3 and data.shape[0] == 1:
                    data = data[0]
                if data.ndim > 3:
                    data = data.reshape(-1, *data.shape[-2:])
                if data.ndim == 3 and data.shape[0] == 1:
                    data = data[0]
                px = tuple(float(s) for s in layer.scale[-2:])
                written.append(write_attribution_tiff(
                    out / _safe(layer.name), data, provenance=prov,
                    pixel_size=px if px != (1.0, 1.0) else None,
                    axes="QYX" if data.ndim == 3 else "YX", name=layer.name))
        except Exception as err:
            notify_error(err, "saving attribution")
            return written
        self.status.setText("saved " + ", ".join(p.name for p in written))
        return written

    def save_importance(self, path: str | Path | None = None) -> Path | None:
        """The current model's channel importance as CSV (+ provenance sidecar)."""
        from ..io.writers import write_importance_csv

        bundle = self.session.bundle
        try:
            if bundle is None or bundle.importance is None:
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
            out = write_importance_csv(path, bundle.importance, provenance=prov)
        except Exception as err:
            notify_error(err, "saving channel weights")
            return None
        self.settings.set("last_dir", str(Path(out).parent))
        self.status.setText(f"saved {out}")
        return Path(out)
