"""Dock widget: pixel attribution (PCIM by default, baselines to compare) as heatmap layers.

Predict and Explain look at the same input: the ticked layers, channels put in the model's
order by name, shrunk to the model's training scale and cut into tiles of its input size
(``core.inference``). Maps are placed back over the full-resolution layers via the layer
scale.
"""

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
)

from ..core.runtime.errors import InputError
from ..core.runtime.progress import Progress
from ._common import DockWidget, PlotCanvas, Settings, device_choices
from ._cost import CostHint
from ._findings import findings_label
from ._layers import ChannelPicker, Selection
from ._results import (
    KIND,
    ColourBar,
    legend_text,
    put_result_layer,
    result_name,
    run_contrast,
)
from ._runner import TaskRunner
from .method_settings import MethodSettings

SCOPES = ("current image", "all images")
PREDICTED = "predicted"
#: models with at most this many classes get "A vs B" (contrastive) target entries
MAX_CONTRAST_CLASSES = 4


def _methods() -> list[str]:
    from ..core.attribution.explain import available_methods

    return available_methods()


def _method_tooltip() -> str:
    from ..core.attribution.methods import registered_methods

    lines = [f"{m.name}: {m.summary}" for m in registered_methods().values()]
    return "\n".join([*lines, "auto: PCIM, or forward-only PCIM when the model has no "
                       "usable gradients"])


class AttributionWidget(DockWidget):
    """Explain the current model's decision on image layers; results become heatmap layers.

    The last results live in the session (``last_result`` and the like read them)."""

    # the last results, as the session holds them (set by Predict and Explain)
    last_result = property(lambda self: self.session.attribution,
                           doc="The last Explain run's ``AttributionResult``.")
    last_curves = property(lambda self: self.session.curves,
                           doc="Its deletion / insertion curves.")
    last_probabilities = property(lambda self: self.session.probabilities,
                                  doc="The last prediction's class probabilities.")
    last_findings = property(lambda self: self.session.findings,
                             doc="The last prediction's findings about its input "
                                 "(``channel-map-suspect``).")

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.settings = Settings("attribution")
        self.last_layers: list = []

        self.model_label = QLabel("no model: train or load one in the Train widget")
        self.model_label.setWordWrap(True)
        self.findings_label = findings_label()
        self.picker = ChannelPicker(napari_viewer)
        self.scope = QComboBox()
        self.scope.addItems(list(SCOPES))
        self.target = QComboBox()
        self.target.addItem(PREDICTED, None)
        self.method = QComboBox()
        self.method.addItems(_methods())
        self.per_channel = QCheckBox("one map per channel")
        self.method.setToolTip(_method_tooltip())
        #: the chosen method's settings, derived from its config class
        self.method_settings = MethodSettings("attribution-methods")
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSpecialValueText("model's input size")
        self.tile.setToolTip("Side of the tiles larger images are cut into; default: the "
                             "size of the model's training images")
        self.device = QComboBox()
        self.device.addItems(device_choices())
        self.curves = QCheckBox("deletion / insertion curves")
        self.curves.setChecked(True)
        self.curves.setToolTip("Computed on the same (shrunk, tiled) input as the maps; on "
                               "whole fields they take as long again, so they start off "
                               "for fields larger than the model's input (on for crops)")
        self.cost = CostHint()
        self._tiled: bool | None = None   # whether the input was a tiled field
        self.evidence = QCheckBox("check that maps localise evidence")
        self.evidence.setChecked(True)
        self.evidence.setToolTip("Deletes each map's top pixels and random ones and warns "
                                 "when the model cares no more about the map's; on whole "
                                 "fields it adds about half the time again")
        self.predict_btn = QPushButton("Predict")
        self.run_btn = QPushButton("Explain")
        self.cancel_btn = QPushButton("Cancel")
        self.bar = QProgressBar()
        self.proba = QLabel("")
        self.proba.setWordWrap(True)
        self.plot = PlotCanvas(height=2.8)
        self.colour_bar = ColourBar()
        self.colour_bar.setToolTip("Colour scale shared by every map of the last run")

        form = QFormLayout()
        form.addRow("Images", self.scope)
        form.addRow("Target class", self.target)
        form.addRow("Method", self.method)
        form.addRow("", self.per_channel)
        form.addRow("Tile size", self.tile)
        form.addRow("Device", self.device)
        form.addRow("", self.curves)
        form.addRow("", self.evidence)
        lay = self.body
        lay.addWidget(self.model_label)
        lay.addWidget(self.findings_label)
        lay.addWidget(self.picker)
        lay.addLayout(form)
        lay.addWidget(self.method_settings)
        lay.addWidget(self.cost)
        row = QHBoxLayout()
        row.addWidget(self.predict_btn)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        lay.addWidget(self.bar)
        lay.addWidget(self.proba)
        lay.addWidget(self.colour_bar)
        lay.addWidget(self.plot)
        self.finish_layout()

        # "curves" is not persisted: its default follows the input (off for tiled fields)
        for key, w in (("scope", self.scope), ("method", self.method),
                       ("per_channel", self.per_channel),
                       ("tile", self.tile), ("device", self.device)):
            self.settings.bind(key, w)
        self.runner = TaskRunner(self, [self.run_btn, self.predict_btn], self.cancel_btn,
                                 self.bar, self.status)
        self.run_btn.clicked.connect(lambda: self.run())
        self.predict_btn.clicked.connect(lambda: self.predict())
        from qtpy.QtCore import QTimer

        self._cost_timer = QTimer(self)
        self._cost_timer.setSingleShot(True)
        self._cost_timer.setInterval(60)
        self._cost_timer.timeout.connect(self.update_cost)
        self.method.currentTextChanged.connect(self._on_method)
        self._on_method(self.method.currentText())
        for sig in (self.scope.currentTextChanged, self.device.currentTextChanged,
                    self.tile.valueChanged, self.curves.toggled, self.evidence.toggled,
                    self.picker.list.itemChanged, self.picker.axis.valueChanged,
                    self.per_channel.toggled):
            sig.connect(lambda *_: self._cost_timer.start())
        self.picker.list.itemChanged.connect(lambda *_: self._input_changed())
        for ev in ("inserted", "removed"):
            getattr(napari_viewer.layers.events, ev).connect(self._on_layers)
        self.session.model_changed.connect(self._on_model)
        self.session.events.curves.connect(self._plot_curves)
        self._on_model()

    def _on_method(self, name: str) -> None:
        """Show the chosen method's settings; per-channel maps only where it has them."""
        from ..core.attribution.methods import registered_methods

        self.method_settings.set_method(name)
        spec = registered_methods().get(name)
        self.per_channel.setEnabled(spec is None or spec.per_channel)
        for w, _ in self.method_settings.editors.values():   # its settings change the cost
            for sig in ("valueChanged", "toggled", "currentTextChanged", "editingFinished"):
                if hasattr(w, sig):
                    getattr(w, sig).connect(lambda *_: self._cost_timer.start())
                    break
        self._cost_timer.start()

    @property
    def steps(self):
        """The current method's ``steps`` editor (PCIM's by default), for scripts."""
        return self.method_settings.editors["steps"][0]

    # -- model and inputs ------------------------------------------------------------------

    def _on_model(self, _bundle: object = None) -> None:
        from ._findings import show_findings

        bundle = self.session.bundle
        self.target.clear()
        self.target.addItem(PREDICTED, None)
        self._clear_messages()
        show_findings(self.findings_label, self.session)
        if bundle is None:
            self.model_label.setText("no model: train or load one in the Train widget")
            self.update_cost()
            return
        names = [str(n) for n in bundle.class_names]
        for i, name in enumerate(names):
            self.target.addItem(name, i)
        if len(names) <= MAX_CONTRAST_CLASSES:   # contrastive targets: "A vs B"
            for a, b in ((a, b) for a in range(len(names)) for b in range(len(names))
                         if a != b):
                self.target.addItem(f"{names[a]} vs {names[b]}", f"{a}:{b}")
        self.picker.select_for_model(list(bundle.channel_names))
        scale = self._scale(bundle)
        self.model_label.setText(f"model: channels {', '.join(bundle.channel_names)}; classes "
                                 f"{', '.join(bundle.class_names)}; trained on "
                                 f"{scale.describe()}")
        self.update_cost()   # now, so that the curves' default is set before any click

    def _on_layers(self, event: Any = None) -> None:
        if self.picker.layers() or self._input_key:
            self._cost_timer.start()

    def _clear_messages(self) -> None:
        """A new model or input: no message, probabilities or colour bar of an earlier
        run stays on screen."""
        self.say("")
        self.proba.setText("")
        self.colour_bar.clear()
        if self.target.count():
            self.target.setItemText(0, PREDICTED)

    def _input_shape(self) -> tuple[int, int, int, int] | None:
        """(images, C, H, W) of the ticked input, from the layers' shapes (no pixels
        read), or None when there is none."""
        from ._layers import AUTO_AXIS, NO_AXIS, full_data, guess_channel_axis

        layers = self.picker.layers()
        if not layers:
            return None
        shape = tuple(int(n) for n in np.shape(full_data(layers[0])))
        if len(shape) < 2:
            return None
        lead = list(shape[:-2])
        channels = len(layers)
        if len(layers) == 1:
            axis = self.picker.axis.value()
            if axis == AUTO_AXIS:
                axis = guess_channel_axis(layers[0])
                axis = NO_AXIS if axis is None else axis
            if 0 <= axis < len(lead):
                channels = lead.pop(axis)
        n = 1 if self.scope.currentText() == SCOPES[0] else int(np.prod(lead or [1]))
        return n, channels, shape[-2], shape[-1]

    def update_cost(self) -> None:
        """Expected time of the chosen method on the current input; the curves default
        to off for a whole field larger than the model's input (tiled), on for crops;
        a change of input clears the last run's messages."""
        from ..core.attribution.cost import extra_passes, method_passes
        from ..core.models.inference import tiling_for

        self._input_changed()
        bundle = self.session.bundle
        shape = self._input_shape()
        if bundle is None or shape is None:
            self.cost.clear_estimate()
            return
        try:
            n, _, h, w = shape
            scale = self._scale(bundle)
            ds = self.picker.layers()[0].metadata.get("downsample", 1)
            factor = scale.factor_for(int(ds or 1))
            tile = self.tile.value() or scale.input_size
            size = (h // factor, w // factor)
            method = self.method.currentText()
            overlap = (tile // 16) if (tile and method in ("pcim", "auto")) else None
            grid, side, _ = tiling_for(size, tile, overlap)
        except Exception:   # an input the run itself will refuse with a message
            self.cost.clear_estimate()
            return
        tiled = len(grid) > 1
        if tiled != self._tiled:
            self._tiled = tiled
            self.curves.blockSignals(True)
            self.curves.setChecked(not tiled)
            self.curves.blockSignals(False)
        side_hw = (side, side) if side else size
        try:
            passes = method_passes(method, self.method_settings.params(), size=side_hw,
                                   channels=len(bundle.channel_names),
                                   per_channel=self.per_channel.isChecked())
        except Exception:   # settings the run will refuse with a message
            self.cost.clear_estimate()
            return
        passes += extra_passes(self.evidence.isChecked(), self.curves.isChecked())
        units = n * len(grid)
        what = "tiles" if tiled else "images"
        self.cost.estimate(bundle, self.device.currentText(),
                           (len(bundle.channel_names), *side_hw), passes, units, what)

    @staticmethod
    def _scale(bundle):
        from ..core.models.inference import ModelScale

        scale = ModelScale.from_provenance(getattr(bundle, "provenance", None))
        size = getattr(bundle, "input_size", None)  # e.g. a bioimage.io package's
        if scale.input_size is None and size:
            scale = ModelScale(scale.downsample, int(size))
        return scale

    def _inputs(self) -> tuple[Any, Selection, dict]:
        """Model, frozen selection (channels in the model's order) and how to look at it."""
        from ..core.models.inference import tiling_for

        bundle = self.session.bundle
        if bundle is None:
            raise InputError("no model: train or load one in the Train widget first")
        sel = self.picker.selection(current_only=self.scope.currentText() == SCOPES[0],
                                    model_channels=list(bundle.channel_names))
        bundle.check_channels(sel.images.shape[1], "the ticked layers")
        scale = self._scale(bundle)
        factor = scale.factor_for(sel.downsample)
        tile = self.tile.value() or scale.input_size
        h, w = (s // factor for s in sel.images.shape[-2:])
        grid, side, _ = tiling_for((h, w), tile)
        look = {"shrink": factor, "tile": side or None, "tiles": len(grid),
                "size": (h, w)}
        return bundle, sel, look

    def _target_index(self) -> int | None:
        """The chosen target class (None: the predicted one); by item data, not text."""
        data = self.target.currentData()
        if isinstance(data, str):   # "a:b": a rather than b
            return int(data.split(":")[0])
        return None if data is None else int(data)

    def _contrast_index(self) -> int | None:
        """The contrast class of an "A vs B" entry, else None."""
        data = self.target.currentData()
        return int(data.split(":")[1]) if isinstance(data, str) else None

    @staticmethod
    def _how(look: dict) -> str:
        shrink = f", shrunk {look['shrink']}x" if look["shrink"] > 1 else ""
        if look["tiles"] > 1:
            return f"mean over {look['tiles']} tiles of {look['tile']} px{shrink}"
        return f"per image{shrink}"

    def _image_tag(self, sel: Selection) -> str:
        """``A01 s1 [3]`` (the well and site where the plate loader or the file name
        gave them, the image's index in the stack), ``image 3``, ``all images``."""
        from ..layer_style import well_field

        k = sel.flat_index()
        where = well_field(sel.metadata, k)
        if where:
            return f"{where} [{k}]" if k is not None else (
                f"{where} · all images" if sel.stack_shape else where)
        return f"image {k}" if k is not None else (
            "all images" if sel.stack_shape else "image")

    def _show_proba(self, probs: np.ndarray, class_names: list[str], sel: Selection,
                    look: dict) -> None:
        probs = np.asarray(probs, float)
        self.session.probabilities = probs
        p = probs.mean(0)
        best = int(p.argmax())
        what = self._image_tag(sel) if len(probs) == 1 else f"mean of {len(probs)} images"
        self.proba.setText(
            f"class probabilities ({what}; {self._how(look)}): " + ", ".join(
                f"{'<b>' if i == best else ''}{n} {p[i]:.2f}{'</b>' if i == best else ''}"
                for i, n in enumerate(class_names)))
        self.target.setItemText(0, f"{PREDICTED} ({class_names[best]})" if len(probs) == 1
                                else PREDICTED)

    # -- actions ---------------------------------------------------------------------------

    def predict(self) -> Any:
        """Class probabilities of the chosen image(s) on the model's input, in a worker."""
        from ..core.models.inference import shrink, tile_probabilities

        try:
            bundle, sel, look = self._inputs()
        except Exception as err:
            self.fail(err, "prediction")
            return None
        device = self.device.currentText()

        def work() -> Generator[Progress, None, tuple]:
            from ..core.attribution.explain import channel_map_findings
            from ..core.runtime.devices import resolve_device

            raw = shrink(sel.images, look["shrink"])
            x = bundle.prepare(raw)
            probs, _ = yield from tile_probabilities(bundle.model, x, look["tile"],
                                                     device=resolve_device(device))
            return probs, channel_map_findings(bundle, raw)

        def done(value: tuple) -> None:
            probs, findings = value
            self.session.findings = findings
            self._show_proba(probs, list(bundle.class_names), sel, look)
            self.say(f"predicted {len(probs)} image(s) ({self._how(look)})"
                     + "".join(f" — {f.code}: {f.message}" for f in findings))

        return self.runner.start(work(), "predicting", done)

    def run(self) -> Any:
        """Explain the chosen image(s) in a worker; returns the worker."""
        from ..core.attribution.explain import explain_classifier
        from ..core.evaluation.tiled_curves import tile_curves
        from ..core.models.inference import shrink

        try:
            bundle, sel, look = self._inputs()
            method = self.method.currentText()
            target = self._target_index()
            contrast = self._contrast_index()
            params: dict[str, Any] = self.method_settings.params()
            per_channel = self.per_channel.isChecked()
            device = self.device.currentText()
            want_curves = self.curves.isChecked()
            check_evidence = self.evidence.isChecked()
        except Exception as err:
            self.fail(err, "attribution")
            return None

        def work() -> Generator[Progress, None, tuple]:
            import time

            from ..core.runtime.devices import resolve_device

            raw = shrink(sel.images, look["shrink"])  # at the model's training scale
            x = bundle.prepare(raw)
            result = yield from explain_classifier(bundle, raw, target, method=method,
                                               per_channel=per_channel, device=device,
                                               input_size=look["tile"], evidence=check_evidence,
                                               contrast=contrast, **params)
            curves, t0 = {}, time.perf_counter()
            if want_curves:
                curves = yield from tile_curves(bundle.model, x, result.maps, result.targets,
                                                look["tile"], device=resolve_device(device))
            return result, curves, time.perf_counter() - t0

        def done(value: tuple) -> None:
            result, curves, curve_s = value
            self.session.set_attribution(result, curves)  # the plot shows the curves
            self.last_layers = self._add_layers(bundle, sel, look, result)
            self._show_proba(result.probabilities, list(bundle.class_names), sel, look)
            none = result.no_evidence()
            unsure = [i for i, s in enumerate((result.evidence or {}).get("state", []))
                      if s == "undetermined"]
            inputs = [f for f in result.findings if f.is_warning]
            self.say(f"{method}: {len(result.maps)} map(s) in {result.seconds:.1f} s"
                     + (f"; curves {curve_s:.1f} s" if curves else "")
                     + (f" — no localised evidence in {len(none)} map(s): their top pixels "
                        "matter no more than pixels elsewhere" if none else "")
                     + (f" — evidence check undetermined for {len(unsure)} map(s): the "
                        "target stays saturated after every deletion" if unsure else "")
                     + "".join(f" — {f.code}: {f.message}" for f in inputs)
                     + "".join(f" — {w}" for w in result.warnings))

        return self.runner.start(work(), f"explaining ({method})", done)

    def _add_layers(self, bundle, sel: Selection, look: dict, result) -> list:
        """Heatmap layer(s) over the source layers (``PCIM · nuclear · image 3``), one
        colour scale for the run, replacing the layers of an identical earlier run."""
        classes = list(bundle.class_names)
        tg = np.unique(result.targets)
        cls = classes[int(tg[0])] if tg.size == 1 else PREDICTED  # mixed: per image
        if getattr(result, "contrast", None) is not None:
            cls = f"{cls} vs {classes[int(result.contrast)]}"
        images = self._image_tag(sel)
        prov = result.provenance()
        prov.update({
            "source_layers": [ly.name for ly in sel.layers],
            "source_shape": [int(s) for s in (*sel.stack_shape, *sel.images.shape[-2:])],
            "slice_index": None if sel.index is None else list(sel.index),
            "probability": self._how(look),
            "scale": {"shrink": look["shrink"], "tile": look["tile"],
                      "tiles_per_image": look["tiles"]},
            "input_channels": list(sel.channel_names),
        })
        from ..layer_style import is_signed_map, symmetric_limits, well_field

        prov["well_field"] = well_field(sel.metadata, sel.flat_index()) or None
        maps = np.asarray(result.maps, np.float32)
        per_channel = maps.ndim == 4
        stacks = ([(None, maps)] if not per_channel else
                  [(name, maps[:, c]) for c, name in enumerate(bundle.channel_names)])
        other = getattr(result, "contrast", None)
        signed = is_signed_map(result.method, maps, other)
        contrast = (symmetric_limits([m for _, m in stacks]) if signed
                    else run_contrast([m for _, m in stacks]))
        source = "+".join(ly.name for ly in sel.layers)
        layers = []
        for channel, m in stacks:
            name = result_name(result.method, cls, images, channel)
            key = f"{source}|{result.method}|{cls}|{images}|{channel}"
            meta = {KIND: {"provenance": prov, "channel": channel}}
            layers.append(put_result_layer(
                self.viewer, sel.result_shape(m), name, key, meta, contrast,
                sel.placement(shrink=look["shrink"]), signed=signed))
        target = cls.split(" vs ")[0]
        legend = legend_text(signed, target if tg.size == 1 else "the target",
                             None if other is None else classes[int(other)])
        self.colour_bar.set_range(*contrast, f"{result.method} · {cls} · {images}",
                                  signed=signed, legend=legend)
        from ._overlay import mute_channels

        for layer in layers:   # the channels dim while a map is shown over them
            mute_channels(self.viewer, layer, sel.layers)
        return layers

    def _plot_curves(self, curves: dict[str, np.ndarray]) -> None:
        if curves:   # (the session's; none: the plot keeps the last ones)
            self.plot.update(lambda: self._plot_curves_now(curves))

    def _plot_curves_now(self, curves: dict[str, np.ndarray]) -> None:
        ax = self.plot.axes(1)[0]
        colours = {"deletion": "#ff6b6b", "insertion": "#48dbfb"}
        for mode, c in curves.items():
            mean = np.asarray(c).mean(0)
            frac = np.linspace(0, 1, mean.size)
            auc = float(np.trapezoid(mean, frac))
            ax.plot(frac, mean, color=colours[mode], label=f"{mode} (AUC {auc:.2f})")
        ax.set_xlabel("fraction of pixels changed")
        ax.set_ylabel("target probability")
        ax.set_ylim(0, 1.02)
        ax.set_title("deletion (low better), insertion (high better)")
        self.plot.legend(ax)
        self.plot.draw()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.runner.shutdown()
        super().closeEvent(event)
