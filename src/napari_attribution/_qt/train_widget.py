"""Dock widget: data (layers, channel names, class labels) and the model (train/load/save)."""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError
from ..core.progress import Progress
from ._common import (
    PlotCanvas,
    Settings,
    channel_colours,
    device_choices,
    session_for,
)
from ._layers import ChannelPicker, Selection
from ._runner import TaskRunner, notify_error

PLOT_EVERY_S = 1.0


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class TrainWidget(QWidget):
    """Choose image layers and class labels, train a DCMIX classifier, load or save one."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.settings = Settings("train")
        self._labels: dict[int, int] = {}  # image index -> class index
        self._labels_key: tuple | None = None
        self._history: list[dict] = []
        self._live_loss: list[tuple[float, float]] = []
        self._channel_names: list[str] = []
        self._weights: list | None = None
        self._last_plot = 0.0

        # -- data ------------------------------------------------------------------------
        data_box = QGroupBox("Data")
        self.picker = ChannelPicker(napari_viewer)
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
        self.label_status = QLabel("no labels yet")
        self.label_status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Channel names", self.channel_names)
        form.addRow("Class names", self.class_names)
        row = QHBoxLayout()
        row.addWidget(self.class_combo, 1)
        row.addWidget(self.assign_btn)
        row.addWidget(self.assign_all_btn)
        form.addRow("Label", row)
        row2 = QHBoxLayout()
        row2.addWidget(self.clear_btn)
        row2.addWidget(self.plate_btn)
        dlay = QVBoxLayout(data_box)
        dlay.addWidget(self.picker)
        dlay.addLayout(form)
        dlay.addLayout(row2)
        dlay.addWidget(self.label_status)

        # -- model -----------------------------------------------------------------------
        model_box = QGroupBox("Model")
        from ..core.backbones import BACKBONES
        from ..core.training import TrainConfig

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
        self.trust.setToolTip("Run TorchScript / exported models even if they use operators "
                              "beyond pure tensor maths (they could read or write files). "
                              "Only for models from a source you trust.")
        self.bar = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.model_label = QLabel("no model")
        self.model_label.setWordWrap(True)
        self.plot = PlotCanvas(height=2.2)
        mform = QFormLayout()
        mform.addRow("Backbone", self.backbone)
        mform.addRow("Epochs", self.epochs)
        mform.addRow("Mixing heads", self.heads)
        mform.addRow("Batch size", self.batch)
        mform.addRow("Device", self.device)
        mlay = QVBoxLayout(model_box)
        mlay.addLayout(mform)
        r = QHBoxLayout()
        r.addWidget(self.train_btn)
        r.addWidget(self.cancel_btn)
        mlay.addLayout(r)
        mlay.addWidget(self.bar)
        mlay.addWidget(self.status)
        mlay.addWidget(self.plot)
        r = QHBoxLayout()
        r.addWidget(self.load_btn)
        r.addWidget(self.save_btn)
        mlay.addLayout(r)
        mlay.addWidget(self.trust)
        mlay.addWidget(self.model_label)

        lay = QVBoxLayout(self)
        lay.addWidget(data_box)
        lay.addWidget(model_box)
        lay.addStretch(1)

        for key, w in (("class_names", self.class_names), ("backbone", self.backbone),
                       ("epochs", self.epochs), ("heads", self.heads),
                       ("batch_size", self.batch), ("device", self.device)):
            self.settings.bind(key, w)

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
        self.session.model_changed.connect(self._show_model)
        self._refresh_classes()
        self._update_label_status()
        self._show_model(self.session.bundle)

    # -- labels ----------------------------------------------------------------------------

    def classes(self) -> list[str]:
        return _split(self.class_names.text())

    def _refresh_classes(self) -> None:
        current = self.class_combo.currentText()
        self.class_combo.clear()
        self.class_combo.addItems(self.classes())
        if current in self.classes():
            self.class_combo.setCurrentText(current)
        self._update_label_status()

    def _selection(self, current_only: bool = False) -> Selection:
        return self.picker.selection(current_only=current_only)

    def _labels_for(self, sel: Selection) -> dict[int, int]:
        """Labels for ``sel``: assigned ones, else those in the layer metadata (plates)."""
        key = (tuple(ly.name for ly in sel.layers), sel.images.shape)
        if key != self._labels_key:
            self._labels_key = key
            self._labels = {}
            meta = sel.metadata.get("labels")
            names = sel.metadata.get("class_names")
            if meta is not None and len(meta) == len(sel.images):
                self._labels = {i: int(v) for i, v in enumerate(meta) if int(v) >= 0}
                if names:
                    self.class_names.setText(", ".join(str(n) for n in names))
                    self._refresh_classes()
        return self._labels

    def _assign(self, current: bool) -> None:
        try:
            sel = self._selection()
            labels = self._labels_for(sel)
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
        except Exception as err:
            notify_error(err, "assigning labels")
        self._update_label_status()

    def _clear_labels(self) -> None:
        self._labels = {}
        self._update_label_status()

    def _update_label_status(self) -> None:
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

    def dataset(self):
        """The labelled images of the ticked layers as an ImageSet."""
        from ..core.data import ImageSet

        sel = self._selection()
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
        return ImageSet(images=sel.images[idx], labels=np.array([labels[i] for i in idx]),
                        channel_names=names, class_names=self.classes(), groups=groups), sel

    # -- training --------------------------------------------------------------------------

    def config(self):
        from ..core.training import TrainConfig

        return TrainConfig(epochs=self.epochs.value(), batch_size=self.batch.value(),
                           backbone=self.backbone.currentText(), n_heads=self.heads.value(),
                           device=self.device.currentText())

    def start_training(self, config=None) -> Any:
        """Train on the ticked layers in a worker; returns the worker (None on bad input)."""
        from ..core.training import train_dcmix

        try:
            data, sel = self.dataset()
            cfg = config or self.config()
        except Exception as err:
            notify_error(err, "training")
            return None
        self._history, self._live_loss = [], []
        self._weights, self._last_plot = None, 0.0
        self._channel_names = list(data.channel_names)
        source = [ly.name for ly in sel.layers]

        def done(result) -> None:
            self.session.data = data
            self.session.source_layers = source
            self.session.set_model(result, result)
            self.status.setText(f"trained: validation accuracy {result.val_accuracy:.3f} "
                                f"({result.seconds:.1f} s)")

        return self.runner.start(train_dcmix(data, cfg), "training DCMIX", done,
                                 self._on_progress)

    def _on_progress(self, events: list[Progress]) -> None:
        new_epoch = False
        for ev in events:
            p = ev.partial
            if "val_accuracy" in p:
                self._history.append(p)
                new_epoch = True
            elif "loss" in p:
                self._live_loss.append((ev.step, p["loss"]))
            if p.get("channel_weights") is not None:
                self._weights = p["channel_weights"]
        # redrawing costs tens of ms: after each epoch, else at most once a second
        now = time.monotonic()
        if self._weights is not None and (new_epoch or now - self._last_plot > PLOT_EVERY_S):
            self._last_plot = now
            self._plot(self._weights)

    def _plot(self, weights: list[list[float]]) -> None:
        ax_curve, ax_w = self.plot.axes(2)
        if self._history:
            ep = [h["epoch"] for h in self._history]
            ax_curve.plot(ep, [h["train_loss"] for h in self._history], "-o", ms=3,
                          color="#ff9f43", label="train loss")
            ax_curve.plot(ep, [h["val_loss"] for h in self._history], "-o", ms=3,
                          color="#54a0ff", label="val loss")
            ax_curve.set_yscale("log")  # a validation-loss spike does not flatten the rest
            ax_curve.set_ylabel("loss")
            # accuracy on its own 0-1 axis, on the right
            ax_acc = ax_curve.twinx()
            ax_acc.plot(ep, [h["val_accuracy"] for h in self._history], "-s", ms=3,
                        color="#1dd1a1", label="val acc")
            ax_acc.set_ylim(0, 1.05)
            ax_acc.tick_params(colors="#1dd1a1", labelsize=8)
            for side in ax_acc.spines.values():
                side.set_color("#808080")
            ax_curve.set_xlabel("epoch")
            handles = ax_curve.get_legend_handles_labels()
            acc_handles = ax_acc.get_legend_handles_labels()
            self.plot.legend(ax_curve, handles=handles[0] + acc_handles[0],
                             labels=handles[1] + acc_handles[1], loc="center right")
        elif self._live_loss:
            s, v = zip(*self._live_loss, strict=True)
            ax_curve.plot(s, v, color="#ff9f43")
            ax_curve.set_xlabel("step")
        ax_curve.set_title("loss / accuracy")
        w = np.asarray(weights, dtype=float)
        names = self._channel_names if len(self._channel_names) == w.shape[1] else \
            [str(i) for i in range(w.shape[1])]
        colours = channel_colours(self.viewer, names)
        x = np.arange(w.shape[1])
        width = 0.8 / w.shape[0]
        for h in range(w.shape[0]):
            ax_w.bar(x + (h - (w.shape[0] - 1) / 2) * width, w[h], width, color=colours,
                     edgecolor="#e0e0e0" if h else None, linewidth=0.5)
        ax_w.set_xticks(x, names, rotation=30, ha="right")
        ax_w.set_ylim(0, 1)
        ax_w.set_title("channel weights")
        self.plot.draw()

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
            notify_error(InputError("train a model first (a loaded model is already a file)"))
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
            notify_error(err, "saving the model")
            return None
        self.settings.set("last_dir", str(Path(out).parent))
        if self.session.bundle is not None:
            from ..io.bundle import file_sha256

            self.session.bundle.path = Path(out)
            self.session.bundle.sha256 = file_sha256(out)
        self.status.setText(f"saved {out}")
        return Path(out)

    def load_plate(self, root: str | Path | None = None, crop_size: int = 64,
                   per_image: int | None = 16, downsample: int = 2) -> Any:
        """Read a BBBC013-style plate folder into labelled crop layers (in a worker)."""
        from ..io.plate import load_bbbc013

        if root is None:
            root = QFileDialog.getExistingDirectory(self, "Plate folder",
                                                    str(self.settings.get("plate_dir", "")))
            if not root:
                return None
        self.settings.set("plate_dir", str(root))

        def work() -> Generator[Progress, None, Any]:
            yield Progress(0, 1, f"reading plate {Path(root).name} (segmenting nuclei)")
            # raw crops: the layers carry no normalisation record, so training fits its own
            return load_bbbc013(root, crop_size=crop_size, per_image=per_image,
                                downsample=downsample, normalization="none")

        return self.runner.start(work(), "reading plate", self._add_plate_layers)

    def _add_plate_layers(self, data) -> None:
        meta = {"labels": data.labels.tolist(), "class_names": list(data.class_names),
                "groups": None if data.groups is None else np.asarray(data.groups).tolist(),
                "source": "plate"}
        names = []
        for c, name in enumerate(data.channel_names):
            layer = self.viewer.add_image(data.images[:, c], name=name, blending="additive",
                                          colormap=["green", "blue", "magenta", "gray"][c % 4],
                                          metadata=dict(meta))
            names.append(layer.name)
        self.picker.refresh()
        self.picker.set_checked(names)
        self.picker.axis.setValue(-1)
        self._labels_key = None
        self._update_label_status()

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

