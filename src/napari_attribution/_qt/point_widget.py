"""Dock widget "Point and explain": click a cell, see why the model calls it what it does.

A click on the image (pan/zoom, no drag), a new point in a Points layer, or a row of the
object table picks a cell. The cell is cropped at the model's training scale (centred on
its label's centroid when a Labels layer is chosen), predicted and explained with a few
PCIM steps in a worker (``core.attribution.point``). **Evidence from** defaults to the
clicked cell (only its cell may change: "why this cell?"); the whole crop the model
sees is the other choice. Without a Labels layer the first click segments the field's
nuclei (the same built-in segmentation as "Explain every cell", once per field, in the
worker) into a Labels layer ``cells · <image>`` that later clicks use; a click without
an object under it uses the crop and says so. The class probabilities are the crop's (the model's
input) in both scopes. The map is shown exactly over the
cell (one result layer and one box for the crop, replaced by the next click; "Pin"
keeps them). A newer click cancels an older one. "Explain every cell" segments the field
(or takes the Labels layer), explains every object and writes the results into the
layer's ``features``; the table below can be sorted, selecting a row jumps to the cell,
and it exports as CSV (Parquet with pyarrow) with provenance.
"""

from __future__ import annotations

import time
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
from ._common import DockWidget, Settings
from ._cost import CostHint
from ._findings import findings_label
from ._layers import ChannelPicker, Selection
from ._results import KIND, ColourBar, evidence_colormap, legend_text, run_contrast
from ._runner import TaskRunner, _drive, leave_a_core, notify_error
from .object_table import BY_LABEL, BY_PREDICTION, ObjectTableView, colour_labels

NO_LABELS = "none: centre on the click"
POINT, PINNED, BOX = "point", "point_pinned", "point_box"
CONTOUR = "point_contour"
DRAG_PX = 4  # a press and release further apart than this (screen pixels) is a drag


def evidence_forwards() -> int:
    """Forward passes of the point's evidence check (fractions x (1 + null deletions))."""
    from ..core.attribution.evidence import EvidenceConfig

    cfg = EvidenceConfig()
    return len(cfg.fractions) * (1 + cfg.n_random)


def warm_up(bundle) -> Generator[Progress, None, None]:
    """One explanation of a blank crop of the model's input size, so that the first
    click does not pay for torch's first forward and backward passes (3-5 s on 2 busy
    cores)."""
    from ..core.attribution.point import PreparedField, explain_objects
    from .attribution_widget import AttributionWidget

    side = AttributionWidget._scale(bundle).input_size or 64
    x = np.zeros((len(bundle.channel_names), side, side), np.float32)
    prep = PreparedField(x=x, factor=1, crop=side, shape=(side, side))
    yield from explain_objects(bundle, prep, [(side / 2, side / 2)], steps=1,
                               threads=1)


def camera(viewer) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return getattr(scene, "camera", None) or viewer.camera


class PointExplainWidget(DockWidget):
    """Click a cell: its class probabilities, evidence per channel and PCIM map."""

    def __init__(self, napari_viewer) -> None:
        from ..core.attribution.point import CHANNEL_EVIDENCE, DEFAULT_SCOPE, POINT_STEPS

        super().__init__(napari_viewer)
        self.settings = Settings("point")
        self.model_label = QLabel("no model: train or load one in the Train widget")
        self.model_label.setWordWrap(True)
        self.findings_label = findings_label()
        self.picker = ChannelPicker(napari_viewer)
        self.labels_box = QComboBox()
        self.labels_box.setToolTip("A Labels layer (nuclei or cells): a click snaps to the "
                                   "object under it, and its mask measures how much of "
                                   "the evidence lies on the cell. None with evidence "
                                   "from the clicked cell: the first click segments the "
                                   "field's nuclei (on the DNA/DAPI/Hoechst channel) "
                                   "into a new Labels layer, once")
        self.active = QCheckBox("explain clicked cells")
        self.active.setChecked(True)
        self.steps = QSpinBox()
        self.steps.setRange(1, 200)
        self.steps.setValue(POINT_STEPS)
        self.steps.setToolTip("PCIM steps per click (a few already rank the pixels)")
        self.channel_mode = QComboBox()
        self.channel_mode.addItems(list(CHANNEL_EVIDENCE))
        self.channel_mode.setToolTip("occlusion: drop of the class probability when the "
                                     "channel is replaced by its mean; pcim: each channel's "
                                     "share of the positive PCIM evidence")
        self.scope = QComboBox()
        for text, key in (("the clicked cell", "cell"),
                          ("the whole crop the model sees", "crop")):
            self.scope.addItem(text, key)
        self.scope.setCurrentIndex(self.scope.findData(DEFAULT_SCOPE))
        self.scope.setToolTip("the clicked cell (why this cell?): only the clicked object's "
                              "cell (its label grown by one object diameter, not into its "
                              "neighbours) may change; channel occlusion and the evidence "
                              "check act inside it. Without a Labels layer the first "
                              "click segments the field's nuclei; a click on no "
                              "object uses the whole crop.\n"
                              "the whole crop (what in this crop made the model say so?): "
                              "PCIM may change every pixel of the model's input, which "
                              "holds the neighbours too.\n"
                              "The class probabilities are the crop's in both.")
        self.evidence = QCheckBox("evidence check")
        self.evidence.setToolTip("Check that the map localises evidence: deleting its top "
                                 "pixels must lower the class log-odds more than deleting "
                                 "other pixels (from the clicked cell: the same mask "
                                 "moved elsewhere in the cell; from the whole crop: the "
                                 f"same mask moved elsewhere in the crop; "
                                 f"{evidence_forwards()} "
                                 "forward passes)")
        self.evidence.setChecked(True)
        self.pin_btn = QPushButton("Pin")
        self.pin_btn.setToolTip("Keep the current result layers; the next click makes new "
                                "ones (Shift+P)")
        self.pin_btn.setShortcut("Shift+P")
        self.result = QLabel("click a cell in the image")
        self.result.setWordWrap(True)
        self.cost = CostHint()
        self.colour_bar = ColourBar()
        self.colour_bar.setToolTip("Colour scale of the map of the clicked cell")
        self.table_btn = QPushButton("Explain every cell")
        self.table_btn.setToolTip("Segment the field's nuclei (or use the Labels layer), "
                                  "predict and explain every object, write the results "
                                  "into the layer's features. Evidence from: as above "
                                  "(the clicked cell: each row's map and channel evidence "
                                  "are that cell's, the whole crop's channel evidence "
                                  "beside them)")
        self.cancel_btn = QPushButton("Cancel")
        self.bar = QProgressBar()
        self.colour_by = QComboBox()
        self.colour_by.addItem(BY_LABEL)
        self.export_btn = QPushButton("Export table…")
        self.export_btn.setEnabled(False)
        self.table = ObjectTableView(self._row_selected)

        form = QFormLayout()
        form.addRow("Objects", self.labels_box)
        form.addRow("PCIM steps", self.steps)
        form.addRow("Channel evidence", self.channel_mode)
        form.addRow("Evidence from", self.scope)
        form.addRow("", self.evidence)
        lay = self.body
        lay.addWidget(self.model_label)
        lay.addWidget(self.findings_label)
        lay.addWidget(self.picker)
        lay.addLayout(form)
        lay.addWidget(self.cost)
        row = QHBoxLayout()
        row.addWidget(self.active)
        row.addWidget(self.pin_btn)
        lay.addLayout(row)
        lay.addWidget(self.result)
        lay.addWidget(self.colour_bar)
        row = QHBoxLayout()
        row.addWidget(self.table_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        lay.addWidget(self.bar)
        row = QHBoxLayout()
        row.addWidget(QLabel("Colour cells by"))
        row.addWidget(self.colour_by, 1)
        lay.addLayout(row)
        lay.addWidget(self.export_btn)
        lay.addWidget(self.table)
        self.finish_layout()

        # "evidence_scope", not "scope": a value saved when the crop was the default
        # would otherwise keep it
        for key, w in (("steps", self.steps), ("channel_mode", self.channel_mode),
                       ("evidence_scope", self.scope), ("evidence", self.evidence)):
            self.settings.bind(key, w)
        self.runner = TaskRunner(self, [self.table_btn], self.cancel_btn, self.bar,
                                 self.status)
        self.pin_btn.clicked.connect(lambda: self.pin())
        self.table_btn.clicked.connect(lambda: self.explain_all())
        self.export_btn.clicked.connect(lambda: self._export_dialog())
        self.colour_by.currentTextChanged.connect(lambda _: self._recolour())
        for sig in (self.steps.valueChanged, self.channel_mode.currentTextChanged,
                    self.scope.currentIndexChanged, self.evidence.toggled):
            sig.connect(lambda *_: self.update_cost())
        self.picker.list.itemChanged.connect(lambda *_: self._input_changed())

        self._worker: Any = None
        self._gen: Any = None
        self._pending: dict | None = None
        self._cache: tuple[tuple, Any] | None = None
        self._seg_cache: tuple[tuple, Any] | None = None   # the field's own nuclei
        self.last: dict | None = None      # the request and result shown last
        self.table_result: Any = None      # ObjectResults of the last table
        self.table_layer: Any = None
        self.table_request: dict | None = None
        self.timings: list[dict[str, float]] = []
        self._points_watched: set[int] = set()

        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        for ev in ("inserted", "removed"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh_layers)
        self._refresh_layers()
        self.session.model_changed.connect(self._on_model)
        self._on_model()

    # -- model and layers --------------------------------------------------------------

    def _on_model(self, _bundle: object = None) -> None:
        from ._findings import show_findings
        from .attribution_widget import AttributionWidget

        bundle = self.session.bundle
        self._cache = None
        self._clear_messages()
        show_findings(self.findings_label, self.session)
        if bundle is None:
            self.model_label.setText("no model: train or load one in the Train widget")
            self.cost.clear_estimate()
            return
        self.picker.select_for_model(list(bundle.channel_names))
        self.update_cost()
        if self._worker is None:   # the first click then costs a click, not a start
            self._start({"warm_up": True, "bundle": bundle})
        scale = AttributionWidget._scale(bundle)
        self.model_label.setText(
            f"model: channels {', '.join(bundle.channel_names)}; classes "
            f"{', '.join(bundle.class_names)}; crops of {scale.input_size or 'the'} px "
            + (f"shrunk {scale.downsample}x" if scale.downsample > 1 else "raw"))
        self.colour_by.blockSignals(True)
        current = self.colour_by.currentText()
        self.colour_by.clear()
        self.colour_by.addItems([BY_LABEL, BY_PREDICTION] + [
            f"channel_{c}" for c in bundle.channel_names] + [
            f"log_odds_{c}" for c in bundle.channel_names])
        if self.colour_by.findText(current) >= 0:
            self.colour_by.setCurrentText(current)
        self.colour_by.blockSignals(False)

    def _clear_messages(self) -> None:
        """A new model or input: the last cell's numbers and messages go."""
        self.say("")
        self.result.setText("click a cell in the image")
        self.colour_bar.clear()

    def update_cost(self) -> None:
        """Expected time of a click: the PCIM steps, the channel evidence (in the cell
        scope with occlusion: the cell's and the whole crop's) and the evidence check on
        one crop of the model's input size."""
        from ..core.attribution.cost import FORWARD_SHARE, method_passes
        from .attribution_widget import AttributionWidget

        bundle = self.session.bundle
        if bundle is None:
            self.cost.clear_estimate()
            return
        side = AttributionWidget._scale(bundle).input_size or 64
        c = len(bundle.channel_names)
        occlusion = self.channel_mode.currentText() == "occlusion"
        twice = occlusion and self.scope.currentData() == "cell"
        forwards = (c + 1 if occlusion else 0) * (2 if twice else 1) + (
            evidence_forwards() if self.evidence.isChecked() else 0)
        passes = method_passes("pcim", {"steps": self.steps.value()}) + int(
            np.ceil(forwards * FORWARD_SHARE))
        self.cost.estimate(bundle, "cpu", (c, side, side), passes, 1, "crops")

    def _refresh_layers(self, event: Any = None) -> None:
        from napari.layers import Labels, Points

        current = self.labels_box.currentText()
        self.labels_box.blockSignals(True)
        self.labels_box.clear()
        self.labels_box.addItem(NO_LABELS)
        for layer in self.viewer.layers:
            if isinstance(layer, Labels):
                self.labels_box.addItem(layer.name)
        if self.labels_box.findText(current) >= 0:
            self.labels_box.setCurrentText(current)
        self.labels_box.blockSignals(False)
        for layer in self.viewer.layers:
            if isinstance(layer, Points) and id(layer) not in self._points_watched:
                self._points_watched.add(id(layer))
                layer.events.data.connect(self._on_points)

    def labels_layer(self) -> Any:
        name = self.labels_box.currentText()
        if name == NO_LABELS or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _field(self) -> tuple[Any, Selection, np.ndarray | None]:
        """The model, the field on screen (channels in the model's order) and its labels
        (field pixels) if a Labels layer is chosen."""
        bundle = self.session.bundle
        if bundle is None:
            raise InputError("no model: train or load one in the Train widget first")
        sel = self.picker.selection(current_only=True, model_channels=list(
            bundle.channel_names))
        bundle.check_channels(sel.images.shape[1], "the ticked layers")
        layer = self.labels_layer()
        labels = None
        if layer is not None:
            lab = np.asarray(layer.data)
            hw = sel.images.shape[-2:]
            if lab.shape[-2:] != hw:
                raise InputError(f"the Labels layer {layer.name!r} is "
                                 f"{lab.shape[-2]}x{lab.shape[-1]} but the image is "
                                 f"{hw[0]}x{hw[1]}")
            if lab.ndim > 2:
                if sel.index is not None and lab.shape[:-2] == sel.stack_shape:
                    lab = lab[sel.index]
                else:
                    lab = lab.reshape(-1, *hw)[0]
            labels = lab
        return bundle, sel, labels

    def _prepared(self, bundle, sel: Selection) -> Generator[Progress, None, Any]:
        """The field at the model's training scale (cached for the same layers and
        slice: a click costs one crop, not a field)."""
        from ..core.attribution.point import prepare_field
        from .attribution_widget import AttributionWidget

        key = (id(bundle), *self._field_key(sel))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        yield Progress(0, 0, "preparing the field")
        prep = prepare_field(bundle, sel.images[0], AttributionWidget._scale(bundle),
                             layer_downsample=sel.downsample)
        self._cache = (key, prep)
        return prep

    def _segmented(self, bundle, sel: Selection) -> Generator[Progress, None, Any]:
        """The field's nuclei by the built-in segmentation (``segment_field``: the
        DNA/DAPI/Hoechst channel, sized to the model's training scale), cached per field
        like :meth:`_prepared`: the cell scope without a Labels layer and *Explain every
        cell* segment a field once."""
        from ..core.attribution.point import segment_field
        from .attribution_widget import AttributionWidget

        scale = AttributionWidget._scale(bundle)
        key = (*self._field_key(sel), int(scale.downsample))
        if self._seg_cache is not None and self._seg_cache[0] == key:
            return self._seg_cache[1]
        from ..core.data.segmentation import choose_nuclei_channel

        k, _ = choose_nuclei_channel(list(sel.channel_names))
        yield Progress(0, 0, f"segmenting nuclei on {sel.channel_names[k]}")
        seg = segment_field(sel.images[0], sel.channel_names, scale,
                            layer_downsample=sel.downsample)
        self._seg_cache = (key, seg)
        yield Progress(0, 0, f"{seg.objects} nuclei segmented on {seg.channel_name}")
        return seg

    @staticmethod
    def _field_key(sel: Selection) -> tuple:
        """What identifies the field on screen for the caches of :meth:`_prepared` and
        :meth:`_segmented`: its layers' data, the slice, the channels and the shape."""
        return (tuple(id(ly.data) for ly in sel.layers), sel.index,
                tuple(sel.channel_names), sel.images.shape)

    def _objects_layer(self, sel: Selection, seg: Any, outline: bool = False) -> Any:
        """The Labels layer ``cells · <image>`` holding ``seg`` (added once per
        segmentation, with how it was made in its metadata) and chosen under
        **Objects**; ``outline``: shown as outlines (a click's: the field stays
        visible), else filled (the object table colours the cells)."""
        token = f"{id(seg):x}"
        layer = next((ly for ly in self.viewer.layers
                      if ly.metadata.get("segmented_by_dock") == token), None)
        if layer is None:
            lab = seg.labels
            lead = (1,) * len(sel.stack_shape)
            layer = self.viewer.add_labels(lab.reshape(*lead, *lab.shape),
                                           name=f"cells · {self._image_tag(sel)}",
                                           **sel.placement())
            layer.metadata["segmentation"] = seg.method
            layer.metadata["segmentation_channel"] = seg.channel_name
            layer.metadata["segmentation_channel_named"] = bool(seg.named)
            layer.metadata["segmentation_diameter_px"] = seg.diameter
            layer.metadata["segmented_by_dock"] = token
            if outline:
                layer.contour = 1
        self.labels_box.setCurrentText(layer.name)
        return layer

    def _objects_from(self) -> str | None:
        """How the chosen Labels layer's objects were made (its ``segmentation``
        metadata, else its name); None without one."""
        layer = self.labels_layer()
        if layer is None:
            return None
        return (layer.metadata or {}).get("segmentation") or f"Labels layer {layer.name}"

    def _objects_note(self) -> str:
        """Where the cells come from when the dock segmented them (the chosen Labels
        layer's metadata), with a warning when no channel is named like a nuclear
        stain; empty for the user's own Labels layer."""
        layer = self.labels_layer()
        meta = getattr(layer, "metadata", {}) or {}
        if "segmented_by_dock" not in meta:
            return ""
        channel = meta.get("segmentation_channel", "?")
        note = f"cells: nuclei segmented on {channel} (Labels layer {layer.name!r})"
        if not meta.get("segmentation_channel_named", True):
            note += (f" <span style='color:#ffb060'>({channel} is not named like a "
                     "nuclear stain (DNA, DAPI, Hoechst): segmented as a guess; choose "
                     "your own Labels layer under Objects if the outlines are wrong)"
                     "</span>")
        return note

    # -- picking a cell ----------------------------------------------------------------

    def _on_mouse(self, viewer, event) -> Generator[None, None, None]:
        """A click without drag explains the cell under it (napari drag callback)."""
        if not self.active.isChecked() or getattr(event, "button", 1) != 1 or \
                self.session.bundle is None:
            return
        active = viewer.layers.selection.active
        if getattr(active, "mode", "pan_zoom") not in ("pan_zoom", "transform"):
            return   # painting labels, adding points or shapes: their click, not ours
        start = np.asarray(event.position, float)
        t_press = time.perf_counter()
        yield
        while event.type == "mouse_move":
            yield
        if event.type != "mouse_release":
            return
        moved = float(np.abs(np.asarray(event.position, float) - start).max())
        if moved * float(camera(viewer).zoom) > DRAG_PX:
            return
        self.explain_at(event.position, t_click=t_press)

    def _on_points(self, event) -> None:
        """A point added to a Points layer explains the cell under it."""
        if getattr(event, "action", "added") != "added" or not self.active.isChecked():
            return
        layer = event.source
        if layer is None or len(layer.data) == 0 or self.session.bundle is None:
            return
        world = layer.data_to_world(layer.data[-1])
        self.explain_at(world)

    def explain_at(self, world: Any, t_click: float | None = None) -> None:
        """Explain the cell at ``world`` (viewer coordinates) in a worker; a newer call
        cancels the older one."""
        try:
            bundle, sel, labels = self._field()
            data = sel.layers[0].world_to_data(np.asarray(world, float))
            point = (float(data[-2]), float(data[-1]))
            h, w = sel.images.shape[-2:]
            if not (0 <= point[0] < h and 0 <= point[1] < w):
                self.say("the click is outside the image")
                return
        except Exception as err:
            self.fail(err, "point and explain")
            return
        req = {"bundle": bundle, "sel": sel, "labels": labels, "point": point,
               "t_click": time.perf_counter() if t_click is None else t_click,
               "steps": self.steps.value(), "channels": self.channel_mode.currentText(),
               "evidence": self.evidence.isChecked(), "scope": self.scope.currentData()}
        self._submit(req)

    def _submit(self, req: dict) -> None:
        if self._worker is not None:
            self._pending = req          # the newest click wins
            self._worker.quit()
            return
        self._start(req)

    def _start(self, req: dict) -> None:
        from napari.qt.threading import create_worker

        from ..core.attribution.point import explain_point

        def work() -> Generator[Progress, None, tuple]:
            if req.get("warm_up"):
                return (yield from warm_up(req["bundle"]))
            labels, seg = req["labels"], None
            if labels is None and req["scope"] == "cell":
                # no Labels layer: the cell is known from the field's own nuclei,
                # segmented once per field (the first click pays for it)
                seg = yield from self._segmented(req["bundle"], req["sel"])
                labels = seg.labels
            prep = yield from self._prepared(req["bundle"], req["sel"])
            res = yield from explain_point(req["bundle"], prep, req["point"], labels,
                                           steps=req["steps"],
                                           channel_evidence=req["channels"],
                                           evidence=req["evidence"], scope=req["scope"])
            return prep, res, seg

        gen = work()
        leave_a_core()
        worker = create_worker(_drive, gen, _start_thread=False, _ignore_errors=True)
        outcome: dict[str, Any] = {}
        worker.returned.connect(lambda v: outcome.__setitem__("value", v))
        worker.errored.connect(lambda e: outcome.__setitem__("error", e))
        worker.finished.connect(lambda: self._finished(req, gen, outcome))
        self._worker, self._gen = worker, gen
        req["t_start"] = time.perf_counter()
        worker.start()

    def _finished(self, req: dict, gen: Any, outcome: dict) -> None:
        req["t_done"] = time.perf_counter()
        try:
            gen.close()   # a cancelled run restores the model's flags now, not at GC
        except Exception:
            pass
        self._worker = self._gen = None
        pending, self._pending = self._pending, None
        if pending is not None:
            self._start(pending)
            return
        if req.get("warm_up"):   # nothing to show; a failure shows at the first click
            return
        if "error" in outcome:
            notify_error(outcome["error"], "point and explain", self.status)
        elif "value" in outcome:
            try:
                prep, res, seg = outcome["value"]
                if seg is not None:   # the field's own nuclei: a Labels layer, once
                    self._objects_layer(req["sel"], seg, outline=True)
                    req["labels"] = seg.labels
                    res.params["objects_from"] = seg.method
                self.show_result(req, prep, res, 0)
                self.session.point = res   # the last clicked cell's result
            except Exception as err:
                notify_error(err, "point and explain", self.status)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    # -- showing a result ----------------------------------------------------------------

    def _image_tag(self, sel: Selection) -> str:
        """The well and site (plate loader) or the file name's well part, else the
        layer's name; ``[k]``: the image's index in a stack."""
        from ..layer_style import well_field

        k = sel.flat_index()
        tag = well_field(sel.metadata, k) or sel.source_name
        return f"{tag} [{k}]" if k is not None else str(tag)

    def _placement(self, sel: Selection, factor: int, origin: tuple[int, int]) -> dict:
        from ..core.attribution.point import placement

        base = sel.placement()
        return placement(base["scale"], base["translate"], factor, origin)

    def show_result(self, req: dict, prep: Any, res: Any, k: int) -> None:
        """Show object ``k`` of ``res``: map layer, crop box and the numbers.

        The map layer covers the whole field at the training scale (zero, i.e.
        transparent, outside the crop), so a new cell changes only its data: moving a
        layer (scale/translate) makes napari recompute the scene's extent (20-50 ms
        each under load). The box keeps its shape and moves by ``translate``."""
        bundle, sel = req["bundle"], req["sel"]
        origin = tuple(int(v) for v in res.origins[k])
        y0, x0 = origin
        s = res.crop
        full = np.zeros(prep.x.shape[-2:], np.float32)
        full[y0:y0 + s, x0:x0 + s] = res.maps[k]
        lead = (1,) * len(sel.stack_shape)
        data = full.reshape(*lead, *full.shape)
        place = self._placement(sel, res.factor, (0, 0))
        pred = res.class_names[int(res.probabilities[k].argmax())]
        label = int(res.labels[k])
        cell = f"cell {label}" if label else f"y {res.centres[k][0]:.0f} x {res.centres[k][1]:.0f}"
        tag = self._image_tag(sel)
        name = f"point · {pred} · {tag} · {cell}"
        prov = {"method": "pcim", "source_layers": [ly.name for ly in sel.layers],
                "image": tag, "label": label, "centre_yx": [float(v) for v in res.centres[k]],
                "crop_origin_training_scale": list(origin), "shrink": res.factor,
                "crop": res.crop, "probabilities": res.probabilities[k].tolist(),
                "target_names": [res.class_names[int(res.targets[k])]],
                "evidence": res.evidence_state[k],
                "scope": res.scope, "scope_note": res.params.get("scope_note"),
                "objects_from": self._objects_from(),
                "probabilities_of": "the crop (the model's input)",
                "channel_evidence": dict(zip(res.channel_names,
                                             res.channel_evidence[k].tolist(), strict=True)),
                "channel_evidence_means": res.provenance()["channel_evidence_means"],
                "channel_log_odds": None if res.channel_log_odds is None else
                dict(zip(res.channel_names, res.channel_log_odds[k].tolist(), strict=True)),
                "crop_channel_evidence": None if res.crop_channel_evidence is None else
                dict(zip(res.channel_names, res.crop_channel_evidence[k].tolist(),
                         strict=True)),
                "model": bundle.describe()}
        meta = {KIND: {"kind": POINT, "provenance": prov}}
        # top of the scale: the 90th percentile of the positive evidence (a PCIM map of a
        # crop is sparse: ~10 % of its pixels positive, the top 1 % holding 30-40 % of
        # the mass; at the 99th its weaker pixels vanish under the opacity ramp)
        contrast = run_contrast([res.maps[k]], top=90.0)
        layer = self._reuse_layer(POINT, data, place)
        if layer is None:
            layer = self.viewer.add_image(
                data, name=name, metadata=meta, colormap=evidence_colormap(),
                blending="translucent", opacity=0.9, contrast_limits=contrast,
                interpolation2d="linear", **place)
        else:
            layer.contrast_limits = contrast
            layer.metadata = meta
            layer.name = name
        t_layer = time.perf_counter()
        self._show_box(sel, res, origin, place, full.shape)
        self._show_contour(req, res, k)
        from ._overlay import mute_channels

        mute_channels(self.viewer, layer, sel.layers)
        self.colour_bar.set_range(*contrast, f"PCIM · {pred}",
                                  legend=legend_text(False, pred))
        req["t_layer"], req["t_box"] = t_layer, time.perf_counter()
        self.last = {"req": req, "res": res, "k": k, "layer": layer,
                     "prep": prep, "origin": origin}
        self._show_numbers(bundle, res, k, tag, cell)
        t = time.perf_counter()
        self.timings.append({"click": req["t_click"], "shown": t,
                             "seconds": t - req["t_click"], "explain_s": res.seconds,
                             "started": req.get("t_start", t), "done": req.get("t_done", t),
                             "layer": req.get("t_layer", t), "box": req.get("t_box", t)})

    def _show_box(self, sel: Selection, res: Any, origin: tuple[int, int],
                  place: dict, shape: tuple[int, int]) -> None:
        """The crop the model saw, as a frame one training-scale pixel wide inside its
        edge: an image over the whole field (like the map), so a new cell changes only
        its data (a Shapes layer moved by translate costs 40-100 ms under load)."""
        s = res.crop
        y0, x0 = origin
        frame = np.zeros(shape, np.uint8)
        frame[y0:y0 + s, x0:x0 + s] = 1
        frame[y0 + 1:y0 + s - 1, x0 + 1:x0 + s - 1] = 0
        data = frame.reshape(*(1,) * (len(place["scale"]) - 2), *shape)
        if self._reuse_layer(BOX, data, place) is None:
            self.viewer.add_image(data, name="point · crop", colormap="cyan",
                                  blending="additive", contrast_limits=(0, 1), opacity=0.8,
                                  metadata={KIND: {"kind": BOX}}, **place)

    def _show_contour(self, req: dict, res: Any, k: int) -> None:
        """The clicked object's outline (field pixels, from the Labels layer), over the
        whole field like the map so a new cell changes only its data; hidden when the
        click found no object."""
        lab, label = req.get("labels"), int(res.labels[k])
        layer = next((ly for ly in self.viewer.layers
                      if ly.metadata.get(KIND, {}).get("kind") == CONTOUR), None)
        if lab is None or label <= 0:
            if layer is not None:
                layer.visible = False
            return
        sel = req["sel"]
        # look for the object inside the crop the model saw (field pixels), not the field
        f, s = int(res.factor), int(res.crop)
        oy, ox = (int(v) * f for v in res.origins[k])
        wy0, wx0 = max(oy, 0), max(ox, 0)
        ys, xs = np.nonzero(lab[wy0:oy + s * f, wx0:ox + s * f] == label)
        if not ys.size:
            ys, xs, wy0, wx0 = (*np.nonzero(lab == label), 0, 0)
        y0, y1 = max(wy0 + int(ys.min()) - 1, 0), wy0 + int(ys.max()) + 2
        x0, x1 = max(wx0 + int(xs.min()) - 1, 0), wx0 + int(xs.max()) + 2
        m = np.pad(lab[y0:y1, x0:x1] == label, 1)
        inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        edge = m[1:-1, 1:-1] & ~inner
        full = np.zeros(lab.shape[-2:], np.uint8)
        full[y0:y1, x0:x1] = edge
        place = sel.placement()
        data = full.reshape(*(1,) * len(sel.stack_shape), *full.shape)
        if self._reuse_layer(CONTOUR, data, place) is None:
            self.viewer.add_image(data, name="point · cell outline", colormap="yellow",
                                  blending="additive", contrast_limits=(0, 1), opacity=1.0,
                                  metadata={KIND: {"kind": CONTOUR}}, **place)

    def _reuse_layer(self, kind: str, data: np.ndarray, place: dict) -> Any:
        """The result layer of ``kind``, given ``data`` at ``place`` and shown (scale and
        translate set only when they change: each set redraws); None when there is none
        yet, for the caller to add."""
        layer = next((ly for ly in self.viewer.layers
                      if ly.metadata.get(KIND, {}).get("kind") == kind), None)
        if layer is None:
            return None
        if not (np.allclose(layer.scale, place["scale"])
                and np.allclose(layer.translate, place["translate"])):
            layer.scale, layer.translate = place["scale"], place["translate"]
        layer.data = data
        layer.visible = True
        return layer

    def _show_numbers(self, bundle, res: Any, k: int, tag: str, cell: str) -> None:
        """The clicked cell's numbers: where the evidence comes from (and why, when the
        crop stands in for a cell), the crop's class probabilities, the evidence check,
        the share on the object and the channel evidence (the cell's and, beside it,
        the whole crop's) with the DCMIX weights."""
        probs = res.probabilities[k]
        best = int(probs.argmax())
        parts = [f"{'<b>' if i == best else ''}{n} {probs[i]:.2f}{'</b>' if i == best else ''}"
                 for i, n in enumerate(res.class_names)]
        in_cell = res.scope == "cell"
        objects = self._objects_note()
        where = "in this cell" if in_cell else "in this crop"
        others = ("the same shape moved elsewhere in the cell" if in_cell
                  else "pixels elsewhere in the crop")
        # within one cell the check is strict (calibrated: docs/benchmarks.md): 'none'
        # is weak evidence against a map, one cell often moves the crop only a little
        weak = (" (for one cell weak evidence against the map: its neighbours may carry "
                "the crop's prediction)" if in_cell else "")
        ev = {"localised": f"the map localises evidence {where} (its top pixels matter "
                           f"more than {others})",
              "none": f"<span style='color:#ffb060'>no localised evidence {where}: the "
                      f"map's top pixels matter no more than {others}{weak}</span>",
              "undetermined": "the evidence check cannot tell (the prediction stays "
                              "saturated after every deletion)",
              None: "evidence not checked"}.get(res.evidence_state[k], "evidence: "
                                                 f"{res.evidence_state[k]}")
        if in_cell:
            scope = "evidence from the clicked cell (only its pixels may change)"
        else:
            note = res.params.get("scope_note")
            hint = ("click on a segmented nucleus, or choose a Labels layer under "
                    "Objects" if objects else "choose a Labels layer under Objects and "
                    "click on an object") + " to explain one cell"
            scope = "evidence from the whole crop" + (
                f" <span style='color:#ffb060'>({note}: {hint})</span>"
                if note else " (the model's input, neighbours included)")
        imp = getattr(bundle, "importance", None)
        weights = imp.as_dict() if imp is not None else {}
        what = ("drop in P(class) without the channel" if res.channel_method == "occlusion"
                else "share of the positive evidence")
        crop_ch = res.crop_channel_evidence
        lo = res.channel_log_odds
        first = "cell" if in_cell else "crop"
        unit = " ΔP" if res.channel_method == "occlusion" else ""
        th = "<th style='padding-left:8px'>"           # columns apart, rows compact
        td = "<td align='right' style='padding-left:8px'>"
        head = (f"<tr><th align='left'>channel</th>{th}{first}{unit}</th>"
                + (f"{th}{first} Δlog-odds</th>" if lo is not None else "")
                + (f"{th}crop ΔP</th>" if crop_ch is not None else "")
                + (f"{th}DCMIX</th>" if weights else "") + "</tr>")
        rows = "".join(
            f"<tr><td>{c}</td>{td}{res.channel_evidence[k, i]:+.3f}</td>"
            + (f"{td}{lo[k, i]:+.2f}</td>" if lo is not None else "")
            + (f"{td}{crop_ch[k, i]:+.3f}</td>" if crop_ch is not None else "")
            + ((f"{td}{weights[c]:.3f}</td>" if c in weights else "<td></td>")
               if weights else "") + "</tr>" for i, c in enumerate(res.channel_names))
        legend = f"{first}{unit}: {what}" + (
            " (the channel replaced inside the cell only)"
            if in_cell and res.channel_method == "occlusion" else "")
        if lo is not None:
            legend += "; Δlog-odds: the same as a drop of the class's log-odds, in nats"
        if crop_ch is not None:
            legend += ("; crop ΔP: the drop in P(class) over the whole crop. One cell "
                       "moves a prediction its neighbours share only a little: its ΔP "
                       "is often 0 when the crop is sure, its Δlog-odds still ranks the "
                       "channels")
        if weights:
            legend += "; DCMIX: the model's channel weights"
        inside = "" if np.isnan(res.inside[k]) else (
            f"; {100 * res.inside[k]:.0f} % of the positive evidence lies on the object")
        self.result.setText(
            f"<b>{tag} · {cell}</b><br>{scope}<br>"
            + (f"{objects}<br>" if objects else "") + "prediction for the "
            f"{res.crop * res.factor} px crop around it (the model's input"
            + (f", shrunk {res.factor}x" if res.factor > 1 else "")
            + f"): {', '.join(parts)}<br>{ev}{inside}<br>"
            f"<table cellspacing='0'>{head}{rows}</table><small>{legend}</small>")
        how = (f"PCIM {res.params.get('steps')} steps on a {res.crop} px crop, shrunk "
               f"{res.factor}x, evidence from the {'cell' if res.scope == 'cell' else 'crop'}")
        if len(res) > 1:
            self.say(f"from the object table ({how})")
        else:
            self.say(f"explained in {res.seconds:.2f} s ({how})")

    def pin(self) -> None:
        """Keep the shown result layers; the next click makes new ones."""
        kept = 0
        for layer in list(self.viewer.layers):
            info = layer.metadata.get(KIND, {})
            if info.get("kind") in (POINT, BOX, CONTOUR):
                new = dict(info)
                new["kind"] = PINNED if info["kind"] == POINT else info["kind"] + "_pinned"
                layer.metadata = {**layer.metadata, KIND: new}
                layer.name = "pinned · " + layer.name.removeprefix("point · ")
                kept += 1
        self.say("result pinned" if kept else "nothing to pin: click a cell first")

    # -- every cell of the field -------------------------------------------------------

    def explain_all(self) -> Any:
        """Segment (or take the Labels layer), predict and explain every object of the
        field on screen; results go into the Labels layer's features and the table."""
        from ..core.attribution.point import explain_labels

        try:
            bundle, sel, labels = self._field()
            steps, mode = self.steps.value(), self.channel_mode.currentText()
            scope = self.scope.currentData()
            check = self.evidence.isChecked()
        except Exception as err:
            self.fail(err, "explain every cell")
            return None
        layer_name = self.labels_box.currentText()

        def work() -> Generator[Progress, None, tuple]:
            lab, seg = labels, None
            if lab is None:   # the same segmentation as a click's, cached per field
                seg = yield from self._segmented(bundle, sel)
                lab = seg.labels
            prep = yield from self._prepared(bundle, sel)
            res = yield from explain_labels(bundle, prep, lab, steps=steps, scope=scope,
                                            channel_evidence=mode, evidence=check)
            return lab, seg, prep, res

        def done(value: tuple) -> None:
            lab, seg, prep, res = value
            self._show_table(bundle, sel, lab, seg, layer_name, prep, res)

        self.table_request = {"bundle": bundle, "sel": sel, "labels": labels,
                              "t_click": time.perf_counter()}
        return self.runner.start(work(), "explaining every cell", done)

    def _show_table(self, bundle, sel: Selection, lab: np.ndarray, seg: Any,
                    layer_name: str, prep: Any, res: Any) -> None:
        from .object_table import features_table

        tag = self._image_tag(sel)
        if seg is not None:
            layer = self._objects_layer(sel, seg)
        else:
            layer = self.viewer.layers[layer_name]
        if "segmented_by_dock" in layer.metadata and layer.contour:
            layer.contour = 0          # filled: the table colours the cells
        rows = res.rows()
        layer.features = features_table(rows)
        self.table_layer, self.table_result = layer, res
        self.table_request = {**(self.table_request or {}), "labels": lab,
                              "prep": prep, "tag": tag,
                              "segmentation": layer.metadata.get("segmentation",
                                                                 f"Labels layer {layer.name}")}
        self.table.set_rows(rows, res.scope)
        self.export_btn.setEnabled(True)
        self._recolour()
        n_loc = sum(s == "localised" for s in res.evidence_state)
        self.say(f"{len(res)} cells explained in {res.seconds:.1f} s "
                 f"({res.seconds / max(len(res), 1):.3f} s per cell; evidence from "
                 f"{'each cell' if res.scope == 'cell' else 'the whole crop around each'});"
                 f" localised evidence in {n_loc}; results in the features of "
                 f"{layer.name!r}")

    def _recolour(self) -> None:
        if self.table_layer is None or self.table_result is None:
            return
        try:
            colour_labels(self.table_layer, self.table.rows, self.colour_by.currentText(),
                          self.table_result.class_names)
        except Exception as err:
            self.fail(err, "colouring cells")

    def _row_selected(self, label: int) -> None:
        """Jump to the cell of a table row and show its stored map."""
        res, req = self.table_result, self.table_request
        if res is None or req is None:
            return
        hits = np.flatnonzero(res.labels == label)
        if not hits.size:
            return
        k = int(hits[0])
        sel = req["sel"]
        base = sel.placement()
        cy, cx = res.centres[k]
        world = [base["translate"][-2] + cy * base["scale"][-2],
                 base["translate"][-1] + cx * base["scale"][-1]]
        cam = camera(self.viewer)
        center = list(cam.center)
        center[-2:] = world
        cam.center = center
        if self.table_layer is not None:
            self.table_layer.selected_label = label
        self.show_result({**req, "t_click": time.perf_counter()}, req.get("prep"), res, k)

    def export_table(self, path: str) -> list:
        """Write the object table (CSV or Parquet, by suffix) and its provenance."""
        from datetime import datetime, timezone

        from ..core.runtime.version import __version__
        from ..io.object_table import write_object_table

        res, req = self.table_result, self.table_request
        if res is None or req is None:
            raise InputError("no object table yet: press 'Explain every cell' first")
        prov = {**res.provenance(), "image": req.get("tag"),
                "source_layers": [ly.name for ly in req["sel"].layers],
                "objects_from": req.get("segmentation"),
                "labels_layer": getattr(self.table_layer, "name", None),
                "model": req["bundle"].describe(), "package": "napari-attribution",
                "version": __version__,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return write_object_table(res.rows(), prov, path)

    def _export_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        from ..io.object_table import parquet_available

        filters = "CSV (*.csv)" + (";;Parquet (*.parquet)" if parquet_available() else "")
        tag = (self.table_request or {}).get("tag") or "cells"
        path, _ = QFileDialog.getSaveFileName(self, "Export the object table",
                                              f"cells_{tag}.csv".replace(" ", "_"), filters)
        if not path:
            return
        try:
            files = self.export_table(path)
        except Exception as err:
            self.fail(err, "export")
            return
        self.say("written: " + ", ".join(str(f) for f in files))

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.runner.shutdown()
        if self._worker is not None:
            self._pending = None
            self._worker.quit()
        try:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        except ValueError:
            pass
        super().closeEvent(event)
