"""Dock widget: channel importance of the current model and "what the network sees"."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from ..core.runtime.errors import InputError
from ..core.runtime.progress import Progress
from ._common import DockWidget, PlotCanvas, Settings, channel_colours
from ._layers import ChannelPicker
from ._runner import TaskRunner

VIEWS = ("overall", "per head")
# Short column titles: the dock is narrow.
TABLE_HEADERS = {"importance": "overall",
                 "ablation_balanced_accuracy_drop": "bal. acc. drop",
                 "ablation_loss_increase": "loss rise"}


def verdict_text(bundle: Any) -> str:
    """The channel verdict's sentence and the study's findings (verdict line, warnings,
    notes) of a model, as the CLI's ``channels`` prints them; empty without a model."""
    if bundle is None:
        return ""
    from ..core.channels.verdict import ChannelVerdict
    from ..core.study.findings import summary_lines

    bundle = getattr(bundle, "bundle", None) or bundle  # a loaded Classifier wraps one
    checks = getattr(bundle, "checks", None) or {}
    lines = []
    if checks.get("channel_verdict"):
        lines.append("channels: " + ChannelVerdict.from_dict(checks["channel_verdict"]).sentence)
    findings = list(getattr(bundle, "findings", None) or [])
    if findings or lines:
        lines += summary_lines(findings)
    return "\n".join(lines)


class ImportanceWidget(DockWidget):
    """Bar chart of the DCMIX weights (in the channels' colours) beside the ablation check."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.settings = Settings("importance")
        self.model_label = QLabel("no model: train or load one in the Train widget")
        self.model_label.setWordWrap(True)
        self.verdict_label = QLabel("")
        self.verdict_label.setWordWrap(True)
        self.view = QComboBox()
        self.view.addItems(list(VIEWS))
        self.plot = PlotCanvas(height=2.4)
        self.table = QTableWidget()
        self.picker = ChannelPicker(napari_viewer)
        self.mix_btn = QPushButton("Show mixed image")
        self.mix_btn.setToolTip("Add the mixed image(s) the backbone sees as a layer")
        self.cancel_btn = QPushButton("Cancel")
        self.bar = QProgressBar()

        lay = self.body
        lay.addWidget(self.model_label)
        lay.addWidget(self.verdict_label)
        row = QHBoxLayout()
        row.addWidget(QLabel("Show"))
        row.addWidget(self.view, 1)
        lay.addLayout(row)
        lay.addWidget(self.plot)
        lay.addWidget(self.table)
        lay.addWidget(QLabel("What the network sees (input layers):"))
        lay.addWidget(self.picker)
        row = QHBoxLayout()
        row.addWidget(self.mix_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        lay.addWidget(self.bar)
        self.finish_layout()

        self.settings.bind("view", self.view)
        self.runner = TaskRunner(self, [self.mix_btn], self.cancel_btn, self.bar, self.status)
        self.view.currentTextChanged.connect(lambda *_: self.refresh())
        self.mix_btn.clicked.connect(lambda: self.show_mixed())
        self.session.events.model.connect(self._on_model_changed)
        self.session.events.importance.connect(self._on_model_changed)
        self.refresh()

    def _on_model_changed(self, _bundle: object = None) -> None:
        self.refresh()

    def importance(self):
        """The session's channel importance (the current model's, or one computed later)."""
        return self.session.importance

    def refresh(self) -> None:
        """Redraw chart and table for the session's current model."""
        bundle = self.session.bundle
        imp = self.importance()
        self.mix_btn.setEnabled(bundle is not None and not self.runner.running)
        self.verdict_label.setText(verdict_text(bundle))
        if bundle is None:
            self.model_label.setText("no model: train or load one in the Train widget")
            self.plot.update(lambda: (self.plot.axes(1), self.plot.draw()))
            self.table.setRowCount(0)
            return
        self.picker.select_for_model(list(bundle.channel_names))
        if imp is None:
            self.model_label.setText("this model holds no channel importance (no mixing "
                                     "layer, or trained elsewhere)")
            self.table.setRowCount(0)
            return
        acc = imp.baseline_accuracy
        self.model_label.setText(
            f"ranking: {' > '.join(imp.ranking())}"
            + (f"; validation accuracy {acc:.3f}" if acc is not None else ""))
        self._draw(imp)
        self._fill_table(imp.rows())

    def _draw(self, imp) -> None:
        self.plot.update(lambda: self._draw_now(imp))

    def _draw_now(self, imp) -> None:
        names = list(imp.channel_names)
        colours = channel_colours(self.viewer, names)
        ax = self.plot.axes(1)[0]
        x = np.arange(len(names))
        abl = imp.ablation_accuracy_drop  # absolute balanced-accuracy drop
        series: list[tuple[str, np.ndarray, dict]] = []
        if self.view.currentText() == "per head" and imp.weights.shape[0] > 1:
            for h in range(imp.weights.shape[0]):
                series.append((f"head {h} (effect {imp.head_effect[h]:.2f})", imp.weights[h],
                               {"color": colours, "alpha": 1.0 - 0.5 * h /
                                imp.weights.shape[0]}))
        else:
            series.append(("DCMIX weight", imp.overall, {"color": colours}))
        if abl is not None:
            series.append(("ablation check", abl, {"color": "none", "edgecolor": colours,
                                                   "hatch": "////", "linewidth": 1.0}))
        width = 0.8 / len(series)
        for k, (label, values, style) in enumerate(series):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label,
                   **style)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("importance")
        ax.set_ylim(0, max(1e-3, *(float(np.max(v)) for _, v, _ in series)) * 1.15)
        ax.set_title("channel importance")
        self.plot.legend(ax)
        self.plot.draw()

    def _fill_table(self, rows: list[dict]) -> None:
        cols = list(rows[0]) if rows else []
        self.table.clear()
        self.table.setColumnCount(len(cols))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels([TABLE_HEADERS.get(c, c.replace("_", " "))
                                              for c in cols])
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                v = r[c]
                text = f"{v:.3f}" if isinstance(v, float) else str(v)
                self.table.setItem(i, j, QTableWidgetItem("0.000" if text == "-0.000"
                                                          else text))
        self.table.resizeColumnsToContents()
        # tall enough for every channel (up to ~8) without a scroll bar
        head = self.table.horizontalHeader().height()
        body = sum(self.table.rowHeight(i) for i in range(min(len(rows), 8)))
        self.table.setFixedHeight(head + body + 2 * self.table.frameWidth() + 18)

    def show_mixed(self) -> Any:
        """Add the model's mixed image(s) for the ticked layers as layer(s) (in a worker)."""
        import torch

        bundle = self.session.bundle
        try:
            if bundle is None:
                raise InputError("no model: train or load one first")
            if getattr(bundle.model, "mixing", None) is None:
                raise InputError("this model has no mixing layer")
            sel = self.picker.selection(model_channels=list(bundle.channel_names))
            bundle.check_channels(sel.images.shape[1], "the ticked layers")
        except Exception as err:
            self.fail(err, "mixed image")
            return None

        def work() -> Generator[Progress, None, np.ndarray]:
            n = len(sel.images)
            out = []
            model = bundle.model.eval()
            with torch.no_grad():
                for i in range(0, n, 32):
                    x = torch.from_numpy(bundle.prepare(sel.images[i:i + 32]))
                    out.append(model.mix(x).cpu().numpy())
                    yield Progress(min(i + 32, n), n, "mixing")
            return np.concatenate(out)

        def done(mixed: np.ndarray) -> None:
            for h in range(mixed.shape[1]):
                data = mixed[:, h].reshape(*sel.stack_shape, *mixed.shape[-2:])
                name = f"{sel.source_name} · mixed" + (f" head {h}" if mixed.shape[1] > 1
                                                       else "")
                lo, hi = np.percentile(data, [1, 99.8])
                self.viewer.add_image(
                    data, name=name, colormap="gray", blending="translucent",
                    contrast_limits=(float(lo), float(max(hi, lo + 1e-6))),
                    scale=sel.scale, translate=sel.translate,
                    metadata={"napari_attribution": {
                        "kind": "mixed", "head": h, "source_layers": [ly.name for ly in
                                                                      sel.layers],
                        "channel_names": list(bundle.channel_names),
                        "weights": bundle.model.mixing_weights()[h].tolist(),
                        "model_sha256": bundle.sha256}})
            self.say(f"added {mixed.shape[1]} mixed image layer(s)")

        return self.runner.start(work(), "mixing channels", done)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.runner.shutdown()
        super().closeEvent(event)
