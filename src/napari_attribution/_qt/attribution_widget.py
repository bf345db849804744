"""Dock widget: pixel attribution (PCIM by default, baselines to compare) as heatmap layers."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError
from ..core.progress import Progress
from ..layer_style import heatmap_style
from ._common import PlotCanvas, Settings, device_choices, session_for
from ._layers import ChannelPicker, Selection
from ._runner import TaskRunner, notify_error

SCOPES = ("current image", "all images")
PREDICTED = "predicted"


def _methods() -> list[str]:
    from ..core.attribution import available_methods

    return available_methods()


class AttributionWidget(QWidget):
    """Explain the current model's decision on image layers; results become heatmap layers."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.settings = Settings("attribution")
        self.last_layers: list = []
        self.last_result = None

        self.model_label = QLabel("no model: train or load one in the Train widget")
        self.model_label.setWordWrap(True)
        self.picker = ChannelPicker(napari_viewer)
        self.scope = QComboBox()
        self.scope.addItems(list(SCOPES))
        self.target = QComboBox()
        self.target.addItem(PREDICTED)
        self.method = QComboBox()
        self.method.addItems(_methods())
        self.per_channel = QCheckBox("one map per channel")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setValue(12)
        self.steps.setToolTip("PCIM optimisation steps")
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSpecialValueText("whole image")
        self.tile.setToolTip("Side of the model's input: larger fields of view are explained "
                             "in overlapping tiles of this size")
        self.device = QComboBox()
        self.device.addItems(device_choices())
        self.curves = QCheckBox("deletion / insertion curves")
        self.curves.setChecked(True)
        self.predict_btn = QPushButton("Predict")
        self.run_btn = QPushButton("Explain")
        self.cancel_btn = QPushButton("Cancel")
        self.bar = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.proba = QLabel("")
        self.proba.setWordWrap(True)
        self.plot = PlotCanvas(height=2.0)

        form = QFormLayout()
        form.addRow("Images", self.scope)
        form.addRow("Target class", self.target)
        form.addRow("Method", self.method)
        form.addRow("", self.per_channel)
        form.addRow("PCIM steps", self.steps)
        form.addRow("Tile size", self.tile)
        form.addRow("Device", self.device)
        form.addRow("", self.curves)
        lay = QVBoxLayout(self)
        lay.addWidget(self.model_label)
        lay.addWidget(self.picker)
        lay.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.predict_btn)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addWidget(self.proba)
        lay.addWidget(self.plot)
        lay.addStretch(1)

        for key, w in (("scope", self.scope), ("method", self.method),
                       ("per_channel", self.per_channel), ("steps", self.steps),
                       ("tile", self.tile), ("device", self.device),
                       ("curves", self.curves)):
            self.settings.bind(key, w)
        self.runner = TaskRunner(self, [self.run_btn, self.predict_btn], self.cancel_btn,
                                 self.bar, self.status)
        self.run_btn.clicked.connect(lambda: self.run())
        self.predict_btn.clicked.connect(lambda: self.predict())
        self.method.currentTextChanged.connect(
            lambda m: self.steps.setEnabled(m == "pcim"))
        self.session.model_changed.connect(self._on_model)
        self._on_model()

    def _on_model(self, _bundle: object = None) -> None:
        bundle = self.session.bundle
        self.target.clear()
        self.target.addItem(PREDICTED)
        if bundle is None:
            self.model_label.setText("no model: train or load one in the Train widget")
            return
        self.target.addItems(list(bundle.class_names))
        self.picker.select_for_model(list(bundle.channel_names))
        self.model_label.setText(f"model: channels {', '.join(bundle.channel_names)}; classes "
                                 f"{', '.join(bundle.class_names)}")

    def _inputs(self) -> tuple[Any, Selection]:
        bundle = self.session.bundle
        if bundle is None:
            raise InputError("no model: train or load one in the Train widget first")
        sel = self.picker.selection(current_only=self.scope.currentText() == SCOPES[0])
        bundle.check_channels(sel.images.shape[1], "the ticked layers")
        return bundle, sel

    def _target_index(self) -> int | None:
        t = self.target.currentText()
        if self.session.bundle is None:
            return None
        return self.session.bundle.resolve_targets(t)

    def _show_proba(self, probs: np.ndarray, class_names: list[str]) -> None:
        p = np.asarray(probs, float).mean(0)
        best = int(p.argmax())
        what = "image" if len(probs) == 1 else f"mean of {len(probs)} images"
        self.proba.setText(f"class probabilities ({what}): " + ", ".join(
            f"{'<b>' if i == best else ''}{n} {p[i]:.2f}{'</b>' if i == best else ''}"
            for i, n in enumerate(class_names)))
        self.target.setItemText(0, f"{PREDICTED} ({class_names[best]})" if len(probs) == 1
                                else PREDICTED)

    def predict(self) -> Any:
        """Class probabilities of the chosen image(s), shown in the widget."""
        try:
            bundle, sel = self._inputs()
        except Exception as err:
            notify_error(err, "prediction")
            return None

        device = self.device.currentText()

        def work() -> Generator[Progress, None, np.ndarray]:
            yield Progress(0, 1, "predicting")
            return bundle.predict_proba(sel.images, device=device)

        return self.runner.start(work(), "predicting",
                                 lambda p: self._show_proba(p, list(bundle.class_names)))

    def run(self) -> Any:
        """Explain the chosen image(s) in a worker; returns the worker."""
        try:
            bundle, sel = self._inputs()
            method = self.method.currentText()
            target = self._target_index()
            params: dict[str, Any] = {}
            if method == "pcim":
                params["steps"] = self.steps.value()
            tile = self.tile.value() or None
            per_channel = self.per_channel.isChecked()
            device = self.device.currentText()
            want_curves = self.curves.isChecked()
        except Exception as err:
            notify_error(err, "attribution")
            return None

        def work() -> Generator[Progress, None, tuple]:
            from ..core.metrics import perturbation_curves

            x = bundle.prepare(sel.images)
            result = yield from bundle.explain(sel.images, target, method=method,
                                               per_channel=per_channel, device=device,
                                               input_size=tile, **params)
            curves = {}
            if want_curves:
                n = min(len(x), 16)  # curves on up to 16 images keep this quick
                for mode in ("deletion", "insertion"):
                    yield Progress(1000, 1000, f"{mode} curve")
                    curves[mode] = perturbation_curves(
                        bundle.model, x[:n], result.maps[:n], result.targets[:n], mode=mode,
                        n_steps=20, device="cpu")
            return result, curves

        def done(value: tuple) -> None:
            result, curves = value
            self.last_result = result
            self.last_layers = self._add_layers(bundle, sel, result)
            self._show_proba(result.probabilities, list(bundle.class_names))
            if curves:
                self._plot_curves(curves)
            self.status.setText(f"{method}: {len(result.maps)} map(s) in "
                                f"{result.seconds:.1f} s")

        return self.runner.start(work(), f"explaining ({method})", done)

    def _add_layers(self, bundle, sel: Selection, result) -> list:
        """Heatmap layer(s) over the source layers, named source · method · class."""
        classes = list(bundle.class_names)
        tg = np.unique(result.targets)
        cls = classes[int(tg[0])] if tg.size == 1 else "predicted"
        base = f"{sel.source_name} · {result.method} · {cls}"
        prov = result.provenance()  # method, parameters, targets and the model
        prov.update({
            "source_layers": [ly.name for ly in sel.layers],
            "slice_index": None if sel.index is None else list(sel.index),
        })
        maps = np.asarray(result.maps, np.float32)
        per_channel = maps.ndim == 4
        stacks = ([(base, maps)] if not per_channel else
                  [(f"{base} · {name}", maps[:, c])
                   for c, name in enumerate(bundle.channel_names)])
        layers = []
        for name, m in stacks:
            data = sel.result_shape(m)
            meta = {"napari_attribution": {"kind": "attribution", "provenance": prov}}
            if per_channel:
                meta["napari_attribution"]["channel"] = name.rsplit(" · ", 1)[-1]
            layers.append(self.viewer.add_image(
                data, name=name, metadata=meta, **heatmap_style(data), **sel.placement()))
        return layers

    def _plot_curves(self, curves: dict[str, np.ndarray]) -> None:
        ax = self.plot.axes(1)[0]
        colours = {"deletion": "#ff6b6b", "insertion": "#48dbfb"}
        for mode, c in curves.items():
            mean = np.asarray(c).mean(0)
            frac = np.linspace(0, 1, mean.size)
            auc = float(np.trapezoid(mean, frac))
            ax.plot(frac, mean, color=colours[mode], label=f"{mode} (AUC {auc:.2f})")
        ax.set_xlabel("fraction of pixels deleted / inserted")
        ax.set_ylabel("target probability")
        ax.set_ylim(0, 1.02)
        ax.set_title("deletion (lower better) / insertion (higher better)")
        self.plot.legend(ax)
        self.plot.draw()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.runner.shutdown()
        super().closeEvent(event)
