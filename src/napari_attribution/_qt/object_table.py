"""The per-object table of the Point and explain dock: one sortable row per cell, the
results written into the Labels layer's ``features`` and its colours (by prediction or
by a channel's evidence)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from ._common import DEFAULT_COLOURS

#: columns shown in the table (the features and the export hold every column)
SHOWN = ("label", "predicted", "probability", "evidence", "inside_share")
BY_LABEL, BY_PREDICTION = "label colours", "prediction"
TRANSPARENT = np.zeros(4, np.float32)


def shown_columns(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    keys = list(rows[0])
    return [k for k in keys if k in SHOWN
            or k.startswith(("channel_", "log_odds_", "crop_channel_"))]


def column_header(key: str, scope: str = "crop") -> str:
    """A column's header: channel evidence says whose it is (``scope``: the cell's own
    or the whole crop's), ``crop_channel_*`` is always the whole crop's; ``log_odds_*``
    is the scope's drop of the log-odds (nats)."""
    whose = "cell" if scope == "cell" else "crop"
    if key.startswith("crop_channel_"):
        return f"{key.removeprefix('crop_channel_')} (crop)"
    if key.startswith("channel_"):
        return f"{key.removeprefix('channel_')} ({whose})"
    if key.startswith("log_odds_"):
        return f"{key.removeprefix('log_odds_')} ({whose}, nats)"
    return key


class ObjectTableView(QTableWidget):
    """Rows of :meth:`ObjectResults.rows`; selecting a row calls ``on_select(label)``."""

    def __init__(self, on_select: Callable[[int], None] | None = None) -> None:
        super().__init__(0, 0)
        self.on_select = on_select
        self.rows: list[dict[str, Any]] = []
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setMinimumHeight(160)
        self.itemSelectionChanged.connect(self._selected)

    def set_rows(self, rows: list[dict[str, Any]], scope: str = "crop") -> None:
        """Show ``rows``; ``scope``: where their ``channel_*`` evidence comes from."""
        self.setSortingEnabled(False)
        self.rows = list(rows)
        cols = shown_columns(self.rows)
        self.clear()
        self.setColumnCount(len(cols))
        self.setRowCount(len(self.rows))
        self.setHorizontalHeaderLabels([column_header(c, scope) for c in cols])
        for r, row in enumerate(self.rows):
            for c, key in enumerate(cols):
                value = row[key]
                item = QTableWidgetItem()
                if isinstance(value, float):
                    item.setData(Qt.ItemDataRole.DisplayRole, round(value, 3))
                else:
                    item.setData(Qt.ItemDataRole.DisplayRole, value)
                item.setData(Qt.ItemDataRole.UserRole, int(row["label"]))
                self.setItem(r, c, item)
        self.resizeColumnsToContents()
        self.setSortingEnabled(True)

    def label_of_row(self, r: int) -> int:
        item = self.item(r, 0)
        return int(item.data(Qt.ItemDataRole.UserRole)) if item is not None else 0

    def select_label(self, label: int) -> None:
        for r in range(self.rowCount()):
            if self.label_of_row(r) == label:
                self.selectRow(r)
                return

    def _selected(self) -> None:
        rows = {i.row() for i in self.selectedItems()}
        if len(rows) == 1 and self.on_select is not None:
            self.on_select(self.label_of_row(rows.pop()))


def features_table(rows: list[dict[str, Any]]) -> Any:
    """A ``features`` table for a Labels layer: one row per object, ``index`` = label."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df.insert(0, "index", df["label"].astype(int))
    return df


def colour_dict(rows: list[dict[str, Any]], by: str, class_names: list[str]) -> dict | None:
    """Label -> RGBA for colouring the cells ``by`` prediction or by one channel's evidence
    (``channel_<name>`` or ``log_odds_<name>``: viridis from the lowest to the highest
    value); None: napari's own label colours (also when the rows lack ``by``, e.g. the
    log-odds of a table made with PCIM channel evidence)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    if by == BY_LABEL or not rows or (by != BY_PREDICTION and by not in rows[0]):
        return None
    out: dict[int | None, np.ndarray] = {None: TRANSPARENT, 0: TRANSPARENT}
    if by == BY_PREDICTION:
        palette = {n: np.array(to_rgba(DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]), np.float32)
                   for i, n in enumerate(class_names)}
        for row in rows:
            out[int(row["label"])] = palette.get(row["predicted"], TRANSPARENT)
        return out
    vals = np.array([float(r[by]) for r in rows])
    lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
    cmap = colormaps["viridis"]
    for row, v in zip(rows, vals, strict=True):
        t = 0.5 if hi <= lo else (v - lo) / (hi - lo)
        out[int(row["label"])] = np.array(cmap(float(t)), np.float32)
    return out


def colour_labels(layer: Any, rows: list[dict[str, Any]], by: str,
                  class_names: list[str]) -> None:
    """Colour ``layer``'s cells (see :func:`colour_dict`)."""
    from napari.utils.colormaps import DirectLabelColormap, label_colormap

    colours = colour_dict(rows, by, class_names)
    if colours is None:
        layer.colormap = label_colormap()
        return
    layer.colormap = DirectLabelColormap(color_dict=colours)
