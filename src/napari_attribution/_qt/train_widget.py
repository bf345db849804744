"""Dock widget: data (layers, channel names, class labels) and the model (train/load/save)."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..core.runtime.errors import InputError
from ..core.runtime.progress import Progress
from ._common import (
    DockWidget,
    PlotCanvas,
    Settings,
    channel_colours,
    device_choices,
)
from ._layers import ChannelPicker, Selection, combine_layers
from ._runner import TaskRunner

NO_OBJECTS = "(whole images)"
PER_CROP_KEYS = ("well", "site", "field", "control", "dose", "y", "x")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _steady_top(top: float, want: float) -> float:
    """The loss axis' top: ``top`` while ``want`` fits it and uses at least a quarter of
    it, else ``want`` rounded up to 1, 1.5, 2, 3, 5 or 7 times a power of ten, so that a
    live plot changes its axis (a full render) once or twice per run."""
    if not np.isfinite(want) or want <= 0:
        return top if top > 0 else 1.0
    if 0.25 * top <= want <= top:
        return top
    scale = 10.0 ** np.floor(np.log10(want))
    return next(float(m * scale) for m in (1, 1.5, 2, 3, 5, 7, 10) if m * scale >= want)


#: The widget's object budget for plates: crops become napari layers, held in memory.
PLATE_MAX_OBJECTS = 4000


class TrainWidget(DockWidget):
    """Choose image layers and class labels, train a DCMIX classifier, load or save one."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.settings = Settings("train")
        self._live_loss: list[tuple[float, float]] = []
        self._channel_names: list[str] = []
        self._weights: list | None = None
        self._run_epochs: int | None = None  # the epochs of the run being trained
        self._run_total = 0  # its progress steps
        self._make_data_controls()
        self._make_model_controls()
        self.body.addWidget(self._lay_out_data(QGroupBox("Data")))
        self.body.addWidget(self._lay_out_model(QGroupBox("Model")))
        self.finish_layout()
        self._bind_settings()
        self._connect()
        self._show_state()

    # -- building the widget -----------------------------------------------------------------

    def _make_data_controls(self) -> None:
        """The Data box's controls: layers, channel and class names, labels, objects,
        plate options, crop navigation."""
        self.picker = ChannelPicker(self.viewer)
        self.channel_names = QLineEdit()
        self.channel_names.setPlaceholderText("default: the layer names")
        self.class_names = QLineEdit("class0, class1")
        self.class_combo = QComboBox()
        self.assign_btn = QPushButton("Assign current image")
        self.assign_all_btn = QPushButton("Assign all")
        self.clear_btn = QPushButton("Clear labels")
        self.plate_btn = QPushButton("Load BBBC013 plate…")
        self.plate_btn.setToolTip("Read a plate folder with its plate map (1049_Metadata.csv) "
                                  "as labelled crops, one layer per channel")
        self.nuclei_channel = QComboBox()
        self.nuclei_channel.setEditable(True)
        self.nuclei_channel.addItems(["auto", "DNA", "GFP"])
        self.nuclei_channel.setToolTip(
            "Channel the plate's nuclei are segmented on. auto: the one named like a "
            "nuclear stain (DNA, Hoechst, DAPI, DRAQ5, SiR-DNA, H2B, nuclei ...)")
        self.max_objects = QSpinBox()
        self.max_objects.setRange(0, 1_000_000)
        self.max_objects.setSingleStep(500)
        self.max_objects.setValue(PLATE_MAX_OBJECTS)
        self.max_objects.setToolTip("Object budget: every segmented object is used up to "
                                    "this many crops (a uniform random sample beyond it); "
                                    "0 = no limit")
        self.label_status = QLabel("no labels yet")
        self.label_status.setWordWrap(True)
        self.combine_btn = QPushButton("Combine layers")
        self.combine_btn.setToolTip("Add the ticked layers (one per channel) as one "
                                    "multichannel image layer")
        self.objects = QComboBox()
        self.objects.setToolTip("Per-object labels: a Points layer with a 'class' feature; "
                                "each point becomes a crop centred on it")
        self.object_size = QSpinBox()
        self.object_size.setRange(8, 1024)
        self.object_size.setValue(32)
        self.object_size.setToolTip("Side of the crop cut around each point (px)")
        self.crop_info = QLabel("")
        self.crop_info.setWordWrap(True)
        self.prev_pos_btn = QPushButton("◀ positive")
        self.next_pos_btn = QPushButton("positive ▶")
        self.prev_neg_btn = QPushButton("◀ negative")
        self.next_neg_btn = QPushButton("negative ▶")
        for b in (self.prev_pos_btn, self.next_pos_btn, self.prev_neg_btn,
                  self.next_neg_btn):
            b.setToolTip("Jump to the previous / next crop from a control well")

    def _lay_out_data(self, box: QGroupBox) -> QGroupBox:
        form = QFormLayout()
        form.addRow("Channel names", self.channel_names)
        form.addRow("Class names", self.class_names)
        # buttons two to a row: the dock fits a 1280x800 window's default dock width
        row = QGridLayout()
        row.addWidget(self.class_combo, 0, 0, 1, 2)
        row.addWidget(self.assign_btn, 1, 0)
        row.addWidget(self.assign_all_btn, 1, 1)
        form.addRow("Label", row)
        form.addRow("Objects", self.objects)
        form.addRow("Object crop", self.object_size)
        form.addRow("Plate nuclei", self.nuclei_channel)
        form.addRow("Plate objects ≤", self.max_objects)
        row2 = QGridLayout()
        row2.addWidget(self.clear_btn, 0, 0)
        row2.addWidget(self.combine_btn, 0, 1)
        row2.addWidget(self.plate_btn, 1, 0, 1, 2)
        dlay = QVBoxLayout(box)
        dlay.addWidget(self.picker)
        dlay.addLayout(form)
        dlay.addLayout(row2)
        dlay.addWidget(self.label_status)
        dlay.addWidget(self.crop_info)
        row3 = QGridLayout()
        for i, b in enumerate((self.prev_neg_btn, self.next_neg_btn, self.prev_pos_btn,
                               self.next_pos_btn)):
            row3.addWidget(b, i // 2, i % 2)
        dlay.addLayout(row3)
        return box

    def _make_model_controls(self) -> None:
        """The Model box's controls: training options, buttons, progress, live plot."""
        from ..core.channels.backbones import BACKBONES
        from ..core.channels.training import TrainConfig

        defaults = TrainConfig()
        self.backbone = QComboBox()
        self.backbone.addItems(list(BACKBONES))
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(defaults.epochs)
        self.heads = QSpinBox()
        self.heads.setRange(1, 16)
        self.batch = QSpinBox()
        self.batch.setRange(1, 4096)
        self.batch.setValue(defaults.batch_size)
        self.device = QComboBox()
        self.device.addItems(device_choices())
        self.train_btn = QPushButton("Train")
        self.cancel_btn = QPushButton("Cancel")
        self.load_btn = QPushButton("Load model…")
        self.save_btn = QPushButton("Save model…")
        self.save_btn.setEnabled(False)
        self.trust = QCheckBox("Trust this model file")
        self.trust.setToolTip("Load model files that can run code when loaded (TorchScript, "
                              ".pt2 archives with pickles or native libraries, bioimage.io "
                              "architectures from elsewhere). Only for files from a source "
                              "you trust.")
        self.bar = QProgressBar()
        self.model_label = QLabel("no model")
        self.model_label.setWordWrap(True)
        self.plot = PlotCanvas(height=2.8)

    def _lay_out_model(self, box: QGroupBox) -> QGroupBox:
        mform = QFormLayout()
        mform.addRow("Backbone", self.backbone)
        mform.addRow("Epochs", self.epochs)
        mform.addRow("Mixing heads", self.heads)
        mform.addRow("Batch size", self.batch)
        mform.addRow("Device", self.device)
        mlay = QVBoxLayout(box)
        mlay.addLayout(mform)
        r = QHBoxLayout()
        r.addWidget(self.train_btn)
        r.addWidget(self.cancel_btn)
        mlay.addLayout(r)
        mlay.addWidget(self.bar)
        mlay.addWidget(self.plot)
        r = QHBoxLayout()
        r.addWidget(self.load_btn)
        r.addWidget(self.save_btn)
        mlay.addLayout(r)
        mlay.addWidget(self.trust)
        mlay.addWidget(self.model_label)
        return box

    def _bind_settings(self) -> None:
        """Persist the training options between sessions."""
        for key, w in (("class_names", self.class_names), ("backbone", self.backbone),
                       ("epochs", self.epochs), ("heads", self.heads),
                       ("batch_size", self.batch), ("device", self.device)):
            self.settings.bind(key, w)

    def _connect(self) -> None:
        """Buttons to actions; viewer and session events to the views that show them."""
        self.runner = TaskRunner(self, [self.train_btn, self.load_btn, self.save_btn,
                                        self.plate_btn], self.cancel_btn, self.bar, self.status)
        self.class_names.editingFinished.connect(self._refresh_classes)
        self.assign_btn.clicked.connect(lambda: self._assign(current=True))
        self.assign_all_btn.clicked.connect(lambda: self._assign(current=False))
        self.clear_btn.clicked.connect(self._clear_labels)
        self.train_btn.clicked.connect(self.start_training)
        self.load_btn.clicked.connect(lambda: self.load_model())
        self.save_btn.clicked.connect(lambda: self.save_model())
        self.plate_btn.clicked.connect(lambda: self.load_plate())
        self.picker.list.itemChanged.connect(lambda *_: self._update_label_status())
        self.combine_btn.clicked.connect(lambda: self.combine())
        self.prev_pos_btn.clicked.connect(lambda: self.jump_to_control(1, -1))
        self.next_pos_btn.clicked.connect(lambda: self.jump_to_control(1, 1))
        self.prev_neg_btn.clicked.connect(lambda: self.jump_to_control(-1, -1))
        self.next_neg_btn.clicked.connect(lambda: self.jump_to_control(-1, 1))
        self.viewer.dims.events.current_step.connect(self._show_crop)
        for ev in ("inserted", "removed"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh_objects)
        self.objects.currentTextChanged.connect(lambda *_: self._update_label_status())
        ev = self.session.events
        ev.model.connect(self._show_model)
        ev.labels.connect(self._update_label_status)
        ev.class_names.connect(self._show_classes)

    def _show_state(self) -> None:
        """Fill the views from the viewer and the session as they are now."""
        self._refresh_objects()
        self._show_crop()
        if self.session.class_names:   # named before this widget opened (a script)
            self._show_classes(self.session.class_names)
        else:
            self._refresh_classes()
        self._update_label_status()
        self._show_model(self.session.bundle)

    # -- labels ----------------------------------------------------------------------------

    def classes(self) -> list[str]:
        return _split(self.class_names.text())

    def _refresh_classes(self) -> None:
        """The class names typed in go to the session (which shows them)."""
        names = self.classes()
        if names != self.session.class_names:
            self.session.class_names = names
        else:
            self._show_classes(names)

    def _show_classes(self, names: list[str]) -> None:
        """Show the session's class names (in the text field too when set elsewhere)."""
        if list(names) != self.classes():
            self.class_names.setText(", ".join(str(n) for n in names))
        current = self.class_combo.currentText()
        self.class_combo.clear()
        self.class_combo.addItems(self.classes())
        if current in self.classes():
            self.class_combo.setCurrentText(current)
        self._update_label_status()

    def _selection(self, current_only: bool = False) -> Selection:
        return self.picker.selection(current_only=current_only)

    def _labels_for(self, sel: Selection) -> dict[int, int]:
        """Labels for ``sel`` (the session's): assigned ones, else those in the layer
        metadata (plates)."""
        key = (tuple(ly.name for ly in sel.layers), sel.images.shape)
        if key != self.session.labels_key:
            labels: dict[int, int] = {}
            meta = sel.metadata.get("labels")
            names = sel.metadata.get("class_names")
            if meta is not None and len(meta) == len(sel.images):
                labels = {i: int(v) for i, v in enumerate(meta) if int(v) >= 0}
            self.session.set_labels(labels, key)
            if labels and names:
                self.class_names.setText(", ".join(str(n) for n in names))
                self._refresh_classes()
        return self.session.labels

    def _assign(self, current: bool) -> None:
        try:
            sel = self._selection()
            labels = dict(self._labels_for(sel))
            cls = self.class_combo.currentIndex()
            if cls < 0:
                raise InputError("give class names first (comma-separated)")
            if current:
                cur = self._selection(current_only=True)
                flat = (int(np.ravel_multi_index(cur.index, sel.stack_shape))
                        if cur.index is not None else 0)
                labels[flat] = cls
            else:
                for i in range(len(sel.images)):
                    labels[i] = cls
            self.session.labels = labels
        except Exception as err:
            self.fail(err, "assigning labels")
        self._update_label_status()

    def _clear_labels(self) -> None:
        self.session.labels = {}

    def _update_label_status(self, *_: Any) -> None:
        try:
            sel = self._selection()
        except InputError:
            self.label_status.setText("tick image layers to use as channels")
            return
        except Exception as err:  # an odd layer must not break the widget
            self.label_status.setText(str(err))
            return
        labels = self._labels_for(sel)
        names = self.classes()
        counts = np.bincount(list(labels.values()), minlength=len(names)) if labels else \
            np.zeros(len(names), int)
        parts = [f"{n}: {counts[i]}" for i, n in enumerate(names)]
        self.label_status.setText(
            f"{len(sel.images)} image(s) × {sel.images.shape[1]} channel(s) "
            f"{sel.images.shape[2]}×{sel.images.shape[3]} px; labelled "
            f"{', '.join(parts) or '-'}; unlabelled {len(sel.images) - len(labels)}")

    def _refresh_objects(self, *_: Any) -> None:
        from napari.layers import Points

        current = self.objects.currentText()
        self.objects.blockSignals(True)
        self.objects.clear()
        self.objects.addItem(NO_OBJECTS)
        for layer in self.viewer.layers:
            if isinstance(layer, Points) and "class" in getattr(layer, "features", {}):
                self.objects.addItem(layer.name)
        if self.objects.findText(current) >= 0:
            self.objects.setCurrentText(current)
        self.objects.blockSignals(False)

    def _object_dataset(self, sel: Selection):
        """Crops around the points of the chosen Points layer, labelled by its ``class``
        feature (cut by ``core.objects``)."""
        from ..core.data.dataset import ImageSet
        from ..core.data.objects import crops_around_points, labels_from_classes

        layer = self.viewer.layers[self.objects.currentText()]
        if sel.index is not None or not len(layer.data):
            raise InputError(f"the Points layer {layer.name!r} has no points")
        world = np.asarray(layer.data, float) * np.asarray(layer.scale) + \
            np.asarray(layer.translate)
        data_pts = (world[:, -2:] - np.asarray(sel.translate[-2:])) / \
            np.asarray(sel.scale[-2:])
        lead = len(sel.stack_shape)
        if lead:
            idx = np.round((world[:, -3] - sel.translate[-3]) / sel.scale[-3]) \
                if world.shape[1] >= 3 else np.zeros(len(world))
        else:
            idx = np.zeros(len(world))
        pts = np.column_stack([idx, data_pts])
        crops = crops_around_points(sel.images, pts, self.object_size.value())
        labels, names = labels_from_classes(layer.features["class"])
        self.class_names.setText(", ".join(names))
        self._refresh_classes()
        cnames = _split(self.channel_names.text()) or sel.channel_names
        return ImageSet(images=crops, labels=labels, channel_names=cnames, class_names=names,
                        metadata={"downsample": sel.downsample, "crops": "points",
                                  "crop_size": self.object_size.value()}), sel

    def dataset(self):
        """The labelled images of the ticked layers as an ImageSet (or, with a Points
        layer chosen under Objects, crops around its points)."""
        from ..core.data.dataset import ImageSet

        sel = self._selection()
        if self.objects.currentText() not in ("", NO_OBJECTS):
            return self._object_dataset(sel)
        labels = self._labels_for(sel)
        if not labels:
            raise InputError("no labelled images: assign images to classes first")
        idx = np.array(sorted(labels))
        names = _split(self.channel_names.text()) or sel.channel_names
        groups = sel.metadata.get("groups")
        if groups is not None and len(groups) == len(sel.images):
            groups = np.asarray(groups)[idx]
        else:
            groups = None
        # how the images were cut travels into the bundle, so that Predict and Explain
        # look at new images at the same scale
        meta = {k: sel.metadata[k] for k in ("source", "crop_size") if k in sel.metadata
                and isinstance(sel.metadata[k], (str, int))}
        meta["downsample"] = sel.downsample
        if isinstance(sel.metadata.get("sample"), str):
            # a built-in sample (File > Open Sample): independent generated images, as
            # the command line's --sample says, so the study check judges it the same way
            meta["kind"] = sel.metadata["sample"]
        return ImageSet(images=sel.images[idx], labels=np.array([labels[i] for i in idx]),
                        channel_names=names, class_names=self.classes(), groups=groups,
                        metadata=meta), sel

    # -- training --------------------------------------------------------------------------

    def config(self):
        from ..core.channels.training import TrainConfig

        return TrainConfig(epochs=self.epochs.value(), batch_size=self.batch.value(),
                           backbone=self.backbone.currentText(), n_heads=self.heads.value(),
                           device=self.device.currentText())

    def start_training(self, config=None) -> Any:
        """Train on the ticked layers in a worker; returns the worker (None on bad input)."""
        from ..core.channels.training import train_dcmix

        try:
            data, sel = self.dataset()
            cfg = config or self.config()
        except Exception as err:
            self.fail(err, "training")
            return None
        self.session.history, self._live_loss = [], []
        self._weights = None
        self._run_epochs, self._run_total = cfg.epochs, 0
        self._channel_names = list(data.channel_names)
        source = [ly.name for ly in sel.layers]

        def done(result) -> None:
            self.session.data = data
            self.session.source_layers = source
            self.session.set_model(result, result)
            from ..core.study.classification import accuracy_line
            from ..core.study.findings import summary_lines

            findings = list(getattr(result, "findings", None) or [])
            verdict = getattr(result, "verdict", None)
            validation = getattr(result, "validation", None) or {}
            acc = (accuracy_line(validation) if "support" in validation
                   else f"validation accuracy {result.val_accuracy:.3f}")
            self.say(f"trained: {acc} ({result.seconds:.1f} s)"
                     + ("" if verdict is None else f"\nchannels: {verdict.sentence}")
                     + "".join(f"\n{line}" for line in summary_lines(findings)))

        return self.runner.start(train_dcmix(data, cfg), "training DCMIX", done,
                                 self._on_progress)

    def _on_progress(self, events: list[Progress]) -> None:
        """Live curves and weight bars from the events since the last GUI update (one
        update per flush of the runner, in the same repaint as the progress bar)."""
        changed = False
        for ev in events:
            p = ev.partial
            self._run_total = max(self._run_total, ev.total)
            if "val_accuracy" in p:
                self.session.history = [*self.session.history, p]
                changed = True
            elif "loss" in p:
                # the running loss of the epoch under way, at its fraction of the epoch
                # (progress steps are epochs x batches)
                x = ev.step * self._run_epochs / ev.total if ev.total and self._run_epochs \
                    else float(p.get("epoch", 1))
                self._live_loss.append((x, p["loss"]))
                changed = True
            if p.get("channel_weights") is not None:
                self._weights = p["channel_weights"]
                changed = True
        if changed and self._weights is not None:
            self._plot(self._weights)

    def _init_plot(self, names: list[str], n_heads: int) -> None:
        """Axes and artists made once per run; live updates only change their data."""
        ax_curve, ax_w = self.plot.axes(2)
        ax_acc = ax_curve.twinx()
        ax_acc.set_ylim(0, 1.05)
        ax_acc.tick_params(colors="#1dd1a1", labelsize=9)
        for side in ax_acc.spines.values():
            side.set_color("#808080")
        lines = {
            "train": ax_curve.plot([], [], "-o", ms=3, color="#ff9f43", label="train loss")[0],
            "val": ax_curve.plot([], [], "-o", ms=3, color="#54a0ff", label="val loss")[0],
            "acc": ax_acc.plot([], [], "-s", ms=3, color="#1dd1a1", label="val acc")[0],
        }
        ax_curve.set_xlabel("epoch")
        ax_curve.set_ylabel("loss")
        ax_curve.set_ylim(0, 1)
        ax_curve.set_title("loss / accuracy")
        h1, l1 = ax_curve.get_legend_handles_labels()
        h2, l2 = ax_acc.get_legend_handles_labels()
        self.plot.legend(ax_curve, handles=h1 + h2, labels=l1 + l2, ncol=3)
        colours = channel_colours(self.viewer, names)
        x = np.arange(len(names))
        width = 0.8 / n_heads
        bars = [ax_w.bar(x + (h - (n_heads - 1) / 2) * width, np.zeros(len(names)), width,
                         color=colours, edgecolor="#e0e0e0" if h else None, linewidth=0.5)
                for h in range(n_heads)]
        ax_w.set_xticks(x, names, rotation=40 if len(names) > 2 else 0,
                        ha="right" if len(names) > 2 else "center",
                        rotation_mode="anchor")
        ax_w.set_ylim(0, 1)
        ax_w.set_title("channel weights")
        # live updates redraw only these over the kept background (PlotCanvas.blit)
        for artist in [*lines.values(), *(p for b in bars for p in b.patches)]:
            artist.set_animated(True)
        self._artists = {"key": (tuple(names), n_heads), "curve": ax_curve, "acc": ax_acc,
                         "lines": lines, "bars": bars}

    def _plot(self, weights: list[list[float]]) -> None:
        """Update the live plot (after the running background render, if any)."""
        self.plot.update(lambda: self._plot_now(weights))

    def _plot_now(self, weights: list[list[float]]) -> None:
        """Curves and bars get their new data; a full render only when the axes change
        (new artists, axis limits), otherwise a blit of the changed artists."""
        w = np.asarray(weights, dtype=float)
        names = self._channel_names if len(self._channel_names) == w.shape[1] else \
            [str(i) for i in range(w.shape[1])]
        art = getattr(self, "_artists", None)
        full = art is None or art["key"] != (tuple(names), w.shape[0]) or \
            art["curve"].figure is not self.plot.figure or \
            art["curve"] not in self.plot.figure.axes
        if full:
            self._init_plot(names, w.shape[0])
            art = self._artists
        ax = art["curve"]
        history = self.session.history
        ep = [h["epoch"] for h in history]
        tl = [h["train_loss"] for h in history]
        vl = [h["val_loss"] for h in history]
        # the train loss: per epoch, then the running loss of the epoch under way
        live = [(x, v) for x, v in self._live_loss if x > max(ep, default=0)]
        art["lines"]["train"].set_data(ep + [x for x, _ in live], tl + [v for _, v in live])
        art["lines"]["val"].set_data(ep, vl)
        art["lines"]["acc"].set_data(ep, [h["val_accuracy"] for h in history])
        # the run's epochs from the start (no new ticks each epoch); a linear axis up to
        # a high percentile, so that a spike does not flatten the rest
        xlim = (0.0, max(max(ep, default=1), self._run_epochs or 0) + 0.5)
        losses = np.r_[tl, vl, [v for _, v in live]]
        ylim = (0.0, _steady_top(ax.get_ylim()[1], float(np.percentile(losses, 90)) * 1.3
                                 if losses.size else 0.0))
        if tuple(ax.get_xlim()) != xlim or tuple(ax.get_ylim()) != ylim:
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            full = True
        for h, bars in enumerate(art["bars"]):
            for patch, value in zip(bars.patches, w[h], strict=False):
                patch.set_height(float(value))
        if full:
            self.plot.draw()
        else:
            self.plot.blit()

    # -- crops and controls ------------------------------------------------------------------

    def _crop_meta(self) -> tuple[dict | None, int | None]:
        """The ticked layers' per-crop metadata and the crop on screen."""
        layers = self.picker.layers()
        if not layers:
            return None, None
        md = layers[0].metadata
        if "well" not in md:
            return None, None
        try:
            cur = self.picker.selection(current_only=True)
        except Exception:
            return md, None
        return md, cur.flat_index()

    def _show_crop(self, *_: Any) -> None:
        md, k = self._crop_meta()
        has_controls = md is not None and "control" in md
        for b in (self.prev_pos_btn, self.next_pos_btn, self.prev_neg_btn,
                  self.next_neg_btn):
            b.setVisible(has_controls)
        self.crop_info.setVisible(md is not None)
        if md is None or k is None or k >= len(md["well"]):
            self.crop_info.setText("")
            return
        labels = md.get("labels") or []
        names = md.get("class_names") or self.classes()
        cls = names[labels[k]] if k < len(labels) and 0 <= labels[k] < len(names) else "-"
        control = {1: "positive control", -1: "negative control"}.get(
            int(md["control"][k]) if "control" in md else 0, "")
        field = md.get("field_names", {})
        src = field.get(str(md["field"][k]), "") if isinstance(field, dict) and "field" in md \
            else ""
        self.crop_info.setText(
            f"crop {k}: class <b>{cls}</b> · well {md['well'][k]}"
            + (f" · site {md['site'][k]}" if "site" in md else "")
            + (f" · {control}" if control else "")
            + (f" · at y={md['y'][k]}, x={md['x'][k]}" if "y" in md else "")
            + (f" · {src}" if src else ""))

    def jump_to_control(self, control: int, direction: int) -> int | None:
        """Move the slider to the next (``direction`` 1) or previous (-1) crop from a
        positive (``control`` 1) or negative (-1) control well; returns its number."""
        md, k = self._crop_meta()
        if md is None or "control" not in md:
            self.fail(InputError("the ticked layers have no per-crop control flags (load "
                                 "a plate with a plate map)"), "controls")
            return None
        flags = np.asarray(md["control"])
        k = -1 if k is None else k
        hits = np.flatnonzero(flags == control)
        ahead = hits[hits > k] if direction > 0 else hits[hits < k][::-1]
        if hits.size == 0:
            self.fail(InputError(f"no {'positive' if control > 0 else 'negative'} "
                                 "control crops"), "controls")
            return None
        target = int(ahead[0]) if ahead.size else int(hits[0] if direction > 0 else hits[-1])
        layer = self.picker.layers()[0]
        axis = 0
        world = layer.data_to_world([target] + [0] * (layer.ndim - 1))
        self.viewer.dims.set_point(axis, world[axis])
        self._show_crop()
        return target

    def combine(self) -> Any:
        """Add the ticked layers as one multichannel layer."""
        try:
            layer = combine_layers(self.viewer, self.picker.layers())
        except Exception as err:
            self.fail(err, "combining layers")
            return None
        self.say(f"added {layer.name!r} ({layer.data.shape[0]} channels)")
        return layer

    # -- model files -----------------------------------------------------------------------

    def load_model(self, path: str | Path | None = None) -> Any:
        """Load any model file ``io.models.load_model`` reads as the current model (the
        operator scan is skipped only when "Trust this model file" is ticked)."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Load model", str(self.settings.get("last_dir", "")),
                "Models (*.safetensors *.pt2 *.pt *.pth *.ts *.zip rdf.yaml);;All files (*)")
            if not path:
                return
        path = Path(path)
        if path.name in ("rdf.yaml", "bioimageio.yaml"):
            path = path.parent  # a bioimage.io package is its folder
        self.settings.set("last_dir", str(path.parent))
        trust = self.trust.isChecked()

        def work() -> Generator[Progress, None, Any]:
            from ..io.models import load_model

            yield Progress(0, 1, f"loading {path.name}")
            return load_model(path, trust=trust)

        return self.runner.start(work(), "loading model",
                                 lambda b: self.session.set_model(b))

    def save_model(self, path: str | Path | None = None) -> Path | None:
        """Save the trained model as a bundle; returns the path written."""
        from ..io.bundle import save_training_result

        result = self.session.train_result
        if result is None:
            self.fail(InputError("train a model first (a loaded model is already a file)"))
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save model", str(Path(self.settings.get("last_dir", "")) /
                                        "model.safetensors"), "Bundles (*.safetensors)")
            if not path:
                return None
        try:
            out = save_training_result(path, result)
        except Exception as err:
            self.fail(err, "saving the model")
            return None
        self.settings.set("last_dir", str(Path(out).parent))
        if self.session.bundle is not None:
            from ..io.bundle import file_sha256

            self.session.bundle.path = Path(out)
            self.session.bundle.sha256 = file_sha256(out)
        self._show_model(self.session.bundle)
        self.say(f"saved {out}")
        return Path(out)

    def load_plate(self, root: str | Path | None = None, crop_size: int = 64,
                   per_image: int | None = None, downsample: int = 2) -> Any:
        """Read a BBBC013-style plate folder into labelled crop layers (in a worker):
        every object up to the "objects ≤" budget, nuclei segmented on the "nuclei"
        channel (auto: by name); the status line names the channel and the counts."""
        from ..io.plate import load_bbbc013

        if root is None:
            root = QFileDialog.getExistingDirectory(self, "Plate folder",
                                                    str(self.settings.get("plate_dir", "")))
            if not root:
                return None
        self.settings.set("plate_dir", str(root))
        nuc = self.nuclei_channel.currentText().strip()
        budget = self.max_objects.value() or None

        def work() -> Generator[Progress, None, Any]:
            yield Progress(0, 1, f"reading plate {Path(root).name} (segmenting nuclei)")
            # raw crops: the layers carry no normalisation record, so training fits its own
            return load_bbbc013(root, crop_size=crop_size, per_image=per_image,
                                downsample=downsample, normalization="none",
                                nuclei_channel=None if nuc in ("", "auto") else nuc,
                                max_objects=budget)

        return self.runner.start(work(), "reading plate", self._add_plate_layers)

    def _add_plate_layers(self, data) -> None:
        from ..layer_style import stain_colormaps

        meta: dict[str, Any] = {
            "labels": data.labels.tolist(), "class_names": list(data.class_names),
            "groups": None if data.groups is None else np.asarray(data.groups).tolist(),
            "source": "plate", "downsample": int(data.metadata.get("downsample", 1) or 1),
            "crop_size": data.metadata.get("crop_size")}
        for key in PER_CROP_KEYS:
            if key in data.metadata:
                meta[key] = np.asarray(data.metadata[key]).tolist()
        names = []
        colours = stain_colormaps(list(data.channel_names))
        for c, name in enumerate(data.channel_names):
            layer = self.viewer.add_image(data.images[:, c], name=name, blending="additive",
                                          colormap=colours[c],
                                          metadata={**meta, "channel": name})
            names.append(layer.name)
        if data.masks is not None:  # the nuclei segmentation the crops were cut around
            self.viewer.add_labels(np.asarray(data.masks).astype(np.uint8), name="nuclei",
                                   opacity=0.25, visible=False,
                                   metadata={"source": "plate", "segmentation": True})
        self.picker.refresh()
        self.picker.set_checked(names)
        self.picker.axis.setValue(-1)
        self.session.labels_key = None
        self._update_label_status()
        self._show_crop()
        from ..io.plate.sampling import sampling_summary

        lines = [sampling_summary(data.metadata)]
        lines += [str(f) for f in data.metadata.get("findings", [])]
        self.say("; ".join(x.replace("\n", "; ") for x in lines if x))

    def _show_model(self, bundle) -> None:
        self.save_btn.setEnabled(self.session.train_result is not None and
                                 not self.runner.running)
        if bundle is None:
            self.model_label.setText("no model")
            return
        src = bundle.path.name if bundle.path else "trained here (not saved)"
        acc = bundle.provenance.get("final_val_accuracy")
        self.model_label.setText(
            f"model: {src}; channels {', '.join(bundle.channel_names)}; classes "
            f"{', '.join(bundle.class_names)}"
            + (f"; validation accuracy {acc:.3f}" if isinstance(acc, float) else ""))
        if self.session.train_result is not None and self.session.train_result.history:
            last = self.session.train_result.history[-1]
            if last.get("channel_weights"):
                self._plot(last["channel_weights"])

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.runner.shutdown()
        super().closeEvent(event)

