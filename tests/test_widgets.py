"""GUI tests of the dock widgets (pytest-qt + napari's make_napari_viewer, under Xvfb).

Tiny models, 32 px images and 1-3 epochs keep the whole file to well under a minute.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_bbbc013

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

N_IMAGES = 48
SIZE = 32


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Widget settings go to a temporary folder, not the user's."""
    from qtpy.QtCore import QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(tmp_path / "settings"))
    yield


@pytest.fixture(scope="module")
def small_cells():
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    return make_cell_phenotype(n_images=N_IMAGES, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def tiny_bundle(small_cells):
    """A DCMIX model trained for 3 epochs on the small set (a couple of seconds on CPU)."""
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.runtime.progress import run_generator
    from napari_attribution.io.models import load_model

    cfg = TrainConfig(epochs=3, batch_size=16, width=8, device="cpu", seed=0)
    return load_model(run_generator(train_dcmix(small_cells, cfg)))


def _cfg(**kw):
    from napari_attribution.core.channels.training import TrainConfig

    base = {"epochs": 2, "batch_size": 16, "width": 8, "device": "cpu", "seed": 0,
            "progress_every": 1}
    base.update(kw)
    return TrainConfig(**base)


def _add_cells(viewer, data):
    colours = ["blue", "green", "magenta", "gray"]
    for c, name in enumerate(data.channel_names):
        viewer.add_image(data.images[:, c], name=name, blending="additive",
                         colormap=colours[c],
                         metadata={"labels": data.labels.tolist(),
                                   "class_names": list(data.class_names)})


@pytest.fixture
def errors(monkeypatch):
    """Messages sent to napari's error notifications."""
    import napari.utils.notifications as notifications

    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    return seen


def _wait_idle(qtbot, widget, timeout=60000):
    """Until the widget's work and its plot's background render are done."""
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout)
    plot = getattr(widget, "plot", None)
    if plot is not None:
        qtbot.waitUntil(lambda: plot.idle, timeout=timeout)


def test_widgets_are_contributed(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-attribution",
                                                        "Train (DCMIX)")
    from napari_attribution._qt import TrainWidget

    assert isinstance(widget, TrainWidget)
    for name in ("Channel importance", "Pixel attribution", "Export"):
        _, w = viewer.window.add_plugin_dock_widget("napari-attribution", name)
        assert w.session is widget.session  # one shared session per viewer


def test_train_widget_end_to_end(make_napari_viewer, qtbot, small_cells, tmp_path, errors):
    from napari_attribution._qt import TrainWidget
    from napari_attribution.io.bundle import load_bundle

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    w = TrainWidget(viewer)
    assert w.picker.checked_names() == small_cells.channel_names
    assert "cytoplasmic" in w.label_status.text()  # labels came from the layer metadata
    seen = []
    worker = w.start_training(_cfg(epochs=2))
    worker.yielded.connect(seen.append)
    assert not w.train_btn.isEnabled() and w.cancel_btn.isEnabled()
    _wait_idle(qtbot, w)
    assert errors == []
    assert w.train_btn.isEnabled() and not w.cancel_btn.isEnabled()
    bundle = w.session.bundle
    assert bundle is not None and bundle.channel_names == small_cells.channel_names
    assert any("val_accuracy" in ev.partial for ev in seen)
    assert len(w.session.history) == 2 and w.session.train_result.history == w.session.history
    status = w.status.text()
    assert "study verdict:" in status and "held out:" in status and "channels: " in status
    curves, bars, acc = w.plot.figure.axes  # loss curves, weight bars, accuracy axis
    assert bars.patches and len(curves.lines) == 2 and len(acc.lines) == 1
    assert acc.get_ylim() == (0, 1.05)
    out = w.save_model(tmp_path / "m.safetensors")
    assert load_bundle(out).class_names == ["cytoplasmic", "nuclear"]
    assert w.session.bundle.sha256 is not None


def test_live_plot_blits_without_full_renders(make_napari_viewer, qtbot, small_cells):
    """Live updates that keep the axes draw the curves and bars over the kept background
    in the GUI thread (no background render); a loss beyond the axis' top renders the
    figure once more, with the axis grown (issue 23: the renders' thread stalled the GUI)."""
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    w = TrainWidget(viewer)
    qtbot.addWidget(w)
    w.show()
    starts: list[int] = []
    start = w.plot._start
    w.plot._start = lambda: (starts.append(1), start())
    w.start_training(_cfg(epochs=3))
    _wait_idle(qtbot, w)
    assert 1 <= len(starts) <= 3 and w.plot._background is not None
    curves, bars = w.plot.figure.axes[:2]
    assert curves.get_xlim() == (0.0, 3.5)  # the run's epochs from the start
    before = w.plot.image.pixmap().toImage()
    n = len(starts)
    heads = len(w._weights)
    weights = [[0.7, 0.1, 0.1, 0.1]] * heads
    w._plot(weights)
    assert len(starts) == n and w.plot.idle  # a blit: no render started
    assert [p.get_height() for p in bars.patches[:4]] == pytest.approx([0.7, 0.1, 0.1, 0.1])
    assert w.plot.image.pixmap().toImage() != before  # and it is shown
    top = curves.get_ylim()[1]
    w.session.history = [*w.session.history,
                         {**w.session.history[-1], "train_loss": 20 * top,
                          "val_loss": 20 * top}]
    w._plot(weights)
    _wait_idle(qtbot, w)
    assert len(starts) == n + 1 and curves.get_ylim()[1] > top


def test_loss_axis_top_changes_rarely():
    from napari_attribution._qt.train_widget import _steady_top

    assert _steady_top(1.0, 0.8) == 1.0 and _steady_top(1.0, 0.3) == 1.0  # kept
    assert _steady_top(1.0, 1.2) == 1.5 and _steady_top(1.0, 0.2) == 0.2  # nice steps
    assert _steady_top(2.0, 0.45) == 0.5 and _steady_top(0.5, 6.5) == 7.0
    assert _steady_top(1.0, float("nan")) == 1.0 and _steady_top(0.0, 0.0) == 1.0


def test_assign_labels_by_hand(make_napari_viewer, small_cells):
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    for c, name in enumerate(small_cells.channel_names):  # no label metadata this time
        viewer.add_image(small_cells.images[:6, c], name=name)
    w = TrainWidget(viewer)
    w.class_names.setText("a, b")
    w._refresh_classes()
    w.class_combo.setCurrentIndex(1)
    w.assign_all_btn.click()
    viewer.dims.set_current_step(0, 2)
    w.class_combo.setCurrentIndex(0)
    w.assign_btn.click()
    data, _ = w.dataset()
    assert data.labels.tolist() == [1, 1, 0, 1, 1, 1]
    assert data.class_names == ["a", "b"]


def test_cancel_mid_training(make_napari_viewer, qtbot, small_cells, errors):
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    w = TrainWidget(viewer)
    worker = w.start_training(_cfg(epochs=500))
    steps = []
    worker.yielded.connect(lambda ev: steps.append(ev.step))
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=30000)
    w.cancel_btn.click()
    _wait_idle(qtbot, w, timeout=15000)
    assert w.session.bundle is None  # nothing half-trained was installed
    assert w.status.text().endswith("cancelled")
    assert w.train_btn.isEnabled() and not w.cancel_btn.isEnabled()
    assert max(steps) < 500 * 3 and errors == []


def test_activity_indicator_is_paused_while_running(make_napari_viewer, qtbot, small_cells,
                                                    errors):
    """napari's animated "in progress" GIF is paused during our work (each frame makes Qt
    compose the window with OpenGL, which stalls torch on two cores) and runs again after."""
    from qtpy.QtGui import QMovie
    from qtpy.QtWidgets import QLabel

    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    movies = [lb.movie() for lb in viewer.window._qt_window.findChildren(QLabel)
              if lb.movie() is not None]
    assert movies, "napari's activity indicator was not found"
    worker = w.start_training(_cfg(epochs=500))
    steps = []
    worker.yielded.connect(lambda ev: steps.append(ev.step))
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=30000)
    qtbot.wait(600)  # a flush or two
    assert [m.state() for m in movies] == [QMovie.MovieState.Paused] * len(movies)
    w.cancel_btn.click()
    _wait_idle(qtbot, w, timeout=15000)
    assert QMovie.MovieState.Paused not in [m.state() for m in movies] and errors == []


def test_training_error_is_a_notification(make_napari_viewer, qtbot, small_cells, errors):
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    w = TrainWidget(viewer)
    w.start_training(_cfg(batch_size=16, epochs=1, device="cuda:7"))  # no such device
    _wait_idle(qtbot, w)
    assert errors and "cuda:7" in errors[-1]
    assert w.session.bundle is None and w.train_btn.isEnabled()
    errors.clear()
    AttributionWidget = pytest.importorskip("napari_attribution._qt").AttributionWidget
    a = AttributionWidget(viewer)
    a.session.set_model(None)
    assert a.run() is None and "no model" in errors[-1]


def test_importance_widget(make_napari_viewer, qtbot, small_cells, tiny_bundle):
    from napari_attribution._qt import ImportanceWidget
    from napari_attribution._qt._common import session_for

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    w = ImportanceWidget(viewer)
    assert w.table.rowCount() == 0
    session_for(viewer).set_model(tiny_bundle)
    qtbot.waitUntil(lambda: w.plot.idle)
    assert w.table.rowCount() == len(small_cells.channel_names)
    assert "ranking" in w.model_label.text()
    verdict = w.verdict_label.text()  # the same findings as the CLI prints
    assert verdict.startswith("channels: ") and "study verdict:" in verdict
    ax = w.plot.figure.axes[0]
    # solid weight bars in napari's channel colours, then hatched ablation bars
    marker = ax.patches[1].get_facecolor()[:3]
    assert np.allclose(marker, (0.0, 1.0, 0.0))  # the Marker layer is green
    w.view.setCurrentText("per head")
    w.show_mixed()
    _wait_idle(qtbot, w)
    mixed = viewer.layers[-1]
    assert "mixed" in mixed.name
    assert mixed.data.shape == (N_IMAGES, SIZE, SIZE)
    assert mixed.metadata["napari_attribution"]["kind"] == "mixed"


def test_attribution_bound_to_source(make_napari_viewer, qtbot, small_cells, tiny_bundle,
                                     errors):
    """Changing slice and selection mid-run does not misplace the result."""
    from napari_attribution._qt import AttributionWidget
    from napari_attribution._qt._common import session_for

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    session_for(viewer).set_model(tiny_bundle)
    w = AttributionWidget(viewer)
    assert w.method.currentText() == "pcim"
    w.steps.setValue(3)
    w.scope.setCurrentText("current image")
    viewer.dims.set_current_step(0, 5)
    worker = w.run()
    assert worker is not None and not w.run_btn.isEnabled()
    viewer.dims.set_current_step(0, 9)  # the user moves on while it runs…
    w.picker.set_checked(["DNA"])  # …and changes the selection
    _wait_idle(qtbot, w)
    assert errors == []
    layer = w.last_layers[0]
    assert layer.name == "PCIM · nuclear · image 5" or layer.name == \
        "PCIM · cytoplasmic · image 5"  # the class predicted for image 5
    assert layer.data.shape == (1, SIZE, SIZE)
    assert tuple(layer.translate)[0] == 5  # placed on the slice it was computed from
    prov = layer.metadata["napari_attribution"]["provenance"]
    assert prov["method"] == "pcim" and prov["slice_index"] == [5]
    assert prov["source_layers"] == small_cells.channel_names
    assert prov["channel_names"] == small_cells.channel_names
    assert layer.colormap.name == "napari-attribution evidence" and 0 < layer.opacity < 1
    assert layer.colormap.colors[0][3] == 0  # no evidence: transparent over the cells
    assert layer.blending == "translucent" and layer.contrast_limits[0] == 0
    assert not w.colour_bar.isHidden() and w.colour_bar.range == tuple(layer.contrast_limits)
    assert "probabilities" in w.proba.text()
    assert len(w.plot.figure.axes[0].lines) == 2  # deletion + insertion curves


def test_attribution_all_images_per_channel_baseline(make_napari_viewer, qtbot, small_cells,
                                                     tiny_bundle, errors):
    from napari_attribution._qt import AttributionWidget
    from napari_attribution._qt._common import session_for

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    session_for(viewer).set_model(tiny_bundle)
    w = AttributionWidget(viewer)
    w.scope.setCurrentText("all images")
    w.method.setCurrentText("saliency")
    w.per_channel.setChecked(True)
    w.curves.setChecked(False)
    w.target.setCurrentText("nuclear")
    w.run()
    _wait_idle(qtbot, w)
    assert errors == []
    assert len(w.last_layers) == 4
    assert all(ly.data.shape == (N_IMAGES, SIZE, SIZE) for ly in w.last_layers)
    assert w.last_layers[1].name == "saliency · nuclear · all images · Marker"
    # one colour scale for the run, shown by the widget's colour bar
    assert len({tuple(ly.contrast_limits) for ly in w.last_layers}) == 1
    assert w.colour_bar.range == tuple(w.last_layers[0].contrast_limits)
    assert set(w.last_result.targets.tolist()) == {1}
    assert w.last_result.evidence  # checked by default
    w.evidence.setChecked(False)  # the user may skip the check (slow on whole fields)
    w.run()
    _wait_idle(qtbot, w)
    assert errors == [] and not w.last_result.evidence


def test_export_widget(make_napari_viewer, qtbot, small_cells, tiny_bundle, tmp_path,
                       errors):
    from napari_attribution._qt import AttributionWidget, ExportWidget
    from napari_attribution._qt._common import session_for
    from napari_attribution.io.writers import read_attribution_tiff, read_importance_csv

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    session_for(viewer).set_model(tiny_bundle)
    exp = ExportWidget(viewer)
    assert exp.save_attribution(tmp_path) == [] and "no attribution" in errors[-1]
    errors.clear()
    a = AttributionWidget(viewer)
    a.steps.setValue(2)
    a.curves.setChecked(False)
    a.scope.setCurrentText("current image")
    a.run()
    _wait_idle(qtbot, a)
    assert exp.list.count() == 1
    written = exp.save_attribution(tmp_path)
    assert len(written) == 1 and written[0].name.endswith(".ome.tif")
    arr, meta = read_attribution_tiff(written[0])
    assert arr.shape == (1, SIZE, SIZE)
    assert meta["provenance"]["method"] == "pcim"
    csv = exp.save_importance(tmp_path / "weights.csv")
    rows = read_importance_csv(csv)
    assert [r["channel"] for r in rows] == small_cells.channel_names
    assert errors == []


def test_settings_persist(make_napari_viewer):
    from napari_attribution._qt import AttributionWidget, TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w.epochs.setValue(7)
    w.backbone.setCurrentText("resnet18")
    a = AttributionWidget(viewer)
    a.method.setCurrentText("occlusion")
    w2, a2 = TrainWidget(viewer), AttributionWidget(viewer)
    assert w2.epochs.value() == 7 and w2.backbone.currentText() == "resnet18"
    assert a2.method.currentText() == "occlusion"
    from napari_attribution.core.runtime.devices import available_devices

    assert [w2.device.itemText(i) for i in range(w2.device.count())] == \
        ["auto", *available_devices()]


def test_screenshot_with_overlay_not_blank(make_napari_viewer, qtbot, small_cells,
                                           tiny_bundle):
    from napari_attribution._qt import AttributionWidget
    from napari_attribution._qt._common import session_for

    viewer = make_napari_viewer(show=True)
    _add_cells(viewer, small_cells)
    session_for(viewer).set_model(tiny_bundle)
    w = AttributionWidget(viewer)
    viewer.window.add_dock_widget(w, name="Pixel attribution")
    w.steps.setValue(2)
    w.curves.setChecked(False)
    w.run()
    _wait_idle(qtbot, w)
    for layer in list(viewer.layers)[:4]:
        layer.visible = False  # the overlay alone must show
    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(float)
    assert rgb.max() > 50 and rgb.std() > 5  # not a black (or flat) frame
    full = viewer.screenshot(canvas_only=False, flash=False)
    assert full.shape[1] > shot.shape[1]  # the dock widget is in the window


def test_close_viewer_during_run_leaves_no_thread(make_napari_viewer, qtbot, small_cells):
    from qtpy.QtCore import QThreadPool

    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    worker = w.start_training(_cfg(epochs=500))
    steps = []
    worker.yielded.connect(lambda ev: steps.append(ev.step))
    qtbot.waitUntil(lambda: len(steps) >= 1, timeout=30000)
    viewer.close()
    assert QThreadPool.globalInstance().waitForDone(10000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0


def test_demo_panel(make_napari_viewer, small_cells, tiny_bundle):
    from napari_attribution._qt._common import session_for
    from napari_attribution._qt.demo_panel import add_demo_panels

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    widgets = add_demo_panels(viewer, tiny_bundle, small_cells.images[:16])
    assert set(widgets) == {"train", "importance", "attribution", "point", "export"}
    assert widgets["point"].picker.checked_names() == small_cells.channel_names
    assert session_for(viewer).bundle is tiny_bundle
    assert widgets["attribution"].picker.checked_names() == small_cells.channel_names
    assert widgets["importance"].table.rowCount() == 4
    # layers without labels: the model's class names reach Train through the session
    bare = make_napari_viewer()
    for c, name in enumerate(small_cells.channel_names):
        bare.add_image(small_cells.images[:16, c], name=name)
    train = add_demo_panels(bare, tiny_bundle, small_cells.images[:16])["train"]
    assert train.classes() == list(tiny_bundle.class_names) == train.session.class_names
    assert [train.class_combo.itemText(i) for i in range(train.class_combo.count())] == \
        list(tiny_bundle.class_names)


@requires_bbbc013
def test_bbbc013_walkthrough_in_napari(make_napari_viewer, qtbot, errors):
    """The user guide's BBBC013 steps: load the plate, train, GFP carries the weight."""
    from conftest import BBBC013
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w.load_plate(BBBC013, crop_size=32, per_image=4, downsample=2)
    _wait_idle(qtbot, w, timeout=120000)
    assert errors == []
    assert [layer.name for layer in viewer.layers] == ["GFP", "DNA", "nuclei"]
    assert w.picker.checked_names() == ["GFP", "DNA"]
    assert "cytoplasmic GFP: 64" in w.label_status.text()  # 16 wells x 4 crops
    # the status line names the nuclei channel and what was used
    assert "nuclei: DNA (named as a nuclear stain)" in w.status.text()
    assert "used 96 of" in w.status.text() and "sample-budget" in w.status.text()
    w.start_training(_cfg(epochs=8, width=16))
    _wait_idle(qtbot, w, timeout=120000)
    assert errors == []
    result = w.session.train_result
    # the split holds whole wells; GFP is what the model uses
    assert set(result.val_groups).isdisjoint(
        np.asarray(viewer.layers["GFP"].metadata["groups"])[result.train_index])
    imp = result.importance.as_dict()
    assert imp["GFP"] > imp["DNA"]
    # guide step 5: jump to a positive control, explain it; evidence on the nucleus
    from napari_attribution._qt import AttributionWidget

    k = w.jump_to_control(1, 1)
    assert k is not None and "positive control" in w.crop_info.text()
    a = AttributionWidget(viewer)
    a.scope.setCurrentText("current image")
    a.curves.setChecked(False)
    a.method.setCurrentText("pcim")
    a.run()
    _wait_idle(qtbot, a, timeout=120000)
    assert errors == []
    m = np.clip(np.asarray(a.last_layers[0].data)[0], 0, None)
    nuclei = viewer.layers["nuclei"].data[k] > 0
    assert m[nuclei].sum() / m.sum() > nuclei.mean()  # more evidence in nuclei than area


def test_widgets_observe_one_session(make_napari_viewer, qtbot, small_cells, tmp_path,
                                     errors):
    """The widgets of a viewer share one evented session: labels assigned in Train, a model
    trained (then loaded) there shows in Pixel attribution and Point and explain, and an
    Explain result is the session's, which the study report reads."""
    from napari_attribution._qt import (
        AttributionWidget,
        ExportWidget,
        PointExplainWidget,
        TrainWidget,
    )

    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    train, attr, point = (TrainWidget(viewer), AttributionWidget(viewer),
                          PointExplainWidget(viewer))
    session = train.session
    assert attr.session is session and point.session is session
    assert len(session.labels) == N_IMAGES  # from the layers' metadata, into the session
    assert session.class_names == ["cytoplasmic", "nuclear"]
    seen: dict[str, list] = {"model": [], "labels": [], "history": []}
    for name, got in seen.items():
        getattr(session.events, name).connect(got.append)
    train.class_combo.setCurrentIndex(1)
    train.assign_all_btn.click()
    assert seen["labels"] and set(session.labels.values()) == {1}
    assert "nuclear: 48" in train.label_status.text()
    session.set_labels({i: i % 2 for i in range(N_IMAGES)}, session.labels_key)
    assert "cytoplasmic: 24, nuclear: 24" in train.label_status.text()  # shown, not set

    train.start_training(_cfg(epochs=2))
    _wait_idle(qtbot, train)
    assert errors == [] and len(seen["history"]) >= 3  # reset, then one per epoch (+ done)
    model = session.model
    assert seen["model"] == [model] and model is session.bundle
    assert session.train_result is not None and session.importance is model.importance
    for w in (attr, point):
        assert "channels DNA, Marker, Membrane, Distractor" in w.model_label.text()
    qtbot.waitUntil(lambda: not point.busy, timeout=30000)  # its warm-up

    path = train.save_model(tmp_path / "m.safetensors")
    train.load_model(path)
    _wait_idle(qtbot, train)
    qtbot.waitUntil(lambda: not point.busy, timeout=30000)
    assert len(seen["model"]) == 2 and session.model.path == path
    assert session.train_result is None and session.history == []
    assert point.session.bundle is session.model and "classes cytoplasmic, nuclear" in \
        point.model_label.text()

    attr.scope.setCurrentText("current image")
    attr.method.setCurrentText("saliency")
    attr.run()
    _wait_idle(qtbot, attr)
    assert errors == [] and session.attribution is attr.last_result is not None
    assert set(session.curves) == {"deletion", "insertion"} and attr.last_curves is \
        session.curves
    assert len(attr.plot.figure.axes[0].lines) == 2  # the widget drew the session's curves
    np.testing.assert_allclose(session.probabilities, session.attribution.probabilities)
    text = ExportWidget(viewer).save_report(tmp_path / "r.html").read_text()
    assert "<h2>Last results</h2>" in text and "last explanation: saliency: 1 map(s)" in text
    assert "deletion AUC" in text and "last prediction (mean of 1 image(s))" in text

    session.set_model(session.model)  # a model change clears the old model's results
    assert session.attribution is None and session.curves == {} and attr.last_result is None


def test_findings_shown_for_a_loaded_model(make_napari_viewer, qtbot, small_cells, tmp_path,
                                           errors):
    """A bundle's recorded study findings: a short verdict line in the attribution and
    point widgets (every finding in the tooltip); the message lines keep no stale
    "loading model"."""
    from napari_attribution._qt import AttributionWidget, PointExplainWidget, TrainWidget
    from napari_attribution.core.channels.training import train_dcmix
    from napari_attribution.core.runtime.progress import run_generator
    from napari_attribution.core.study.findings import VERDICT_TEXT, verdict
    from napari_attribution.io.bundle import save_training_result

    result = run_generator(train_dcmix(small_cells, _cfg(epochs=1)))
    path = save_training_result(tmp_path / "m.safetensors", result)
    viewer = make_napari_viewer()
    _add_cells(viewer, small_cells)
    train, attr, point = (TrainWidget(viewer), AttributionWidget(viewer),
                          PointExplainWidget(viewer))
    assert not attr.findings_label.isVisibleTo(attr)        # no model yet
    attr.say("an old message")
    train.load_model(path)
    _wait_idle(qtbot, train)
    assert errors == [] and train.session.bundle is not None
    assert "loading" not in train.status.text()
    assert attr.status.text() == ""                          # cleared on the new model
    found = train.session.bundle.bundle.findings
    head = VERDICT_TEXT[verdict(found)].split(":")[0].split(" (")[0]
    for w in (attr, point):
        assert w.findings_label.isVisibleTo(w)
        text, tip = w.findings_label.text(), w.findings_label.toolTip()
        assert "study findings" in text and head in text
        assert tip.startswith("study verdict:")
        assert all(f.code in tip and f.message in tip for f in found)
    # a model with no recorded study shows no line
    train.session.set_model(train.session.bundle.module)
    assert not attr.findings_label.isVisibleTo(attr)


def test_docks_tabbed_and_unclipped_at_1280x800(make_napari_viewer, qtbot, small_cells,
                                                tiny_bundle):
    """Every dock of the plugin, opened as the Plugins menu does in a 1280x800 window:
    one tabbed area, no dock wider than its room, and every control reachable by
    scrolling its dock (none cut off at the right edge)."""
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractItemView,
        QApplication,
        QComboBox,
        QLineEdit,
        QSpinBox,
    )
    from superqt import QCollapsible

    from napari_attribution._qt import (
        AttributionWidget,
        ExportWidget,
        ImportanceWidget,
        PointExplainWidget,
        TrainWidget,
    )
    from napari_attribution._qt._common import session_for

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1280, 800)
    _add_cells(viewer, small_cells)
    session_for(viewer).set_model(tiny_bundle)
    widgets = [cls(viewer) for cls in (TrainWidget, ImportanceWidget, AttributionWidget,
                                       PointExplainWidget, ExportWidget)]
    docks = [viewer.window.add_dock_widget(w, name=type(w).__name__, area="right")
             for w in widgets]
    qtbot.waitUntil(lambda: all(getattr(w, "_tabs_joined", False) for w in widgets),
                    timeout=5000)
    qtbot.wait(100)
    assert win.width() <= 1280 and win.height() <= 800
    assert set(win.tabifiedDockWidgets(docks[0])) == set(docks[1:])
    for dock, w in zip(docks, widgets, strict=True):
        dock.raise_()
        for box in w.findChildren(QCollapsible):   # "More settings": every row counts
            box.expand(animate=False)
        QApplication.processEvents()
        qtbot.wait(50)
        view = w.scroll.viewport()
        assert dock.height() < 800 and w.height() > 300, type(w).__name__
        # the content never needs more width than the dock gives (no horizontal bar)
        assert w.scroll.widget().minimumSizeHint().width() <= view.width() + 1, \
            type(w).__name__
        def inside_a_view(c, w=w):   # a table's own corner button, a spin box's editor
            p = c.parentWidget()
            while p is not None and p is not w:
                if isinstance(p, (QAbstractItemView, QSpinBox, QComboBox)):
                    return True
                p = p.parentWidget()
            return False

        controls = [c for c in w.scroll.widget().findChildren(
            (QAbstractButton, QComboBox, QSpinBox, QLineEdit))
            if c.isVisibleTo(w) and not inside_a_view(c)]
        assert len(controls) >= 3
        for c in controls:
            w.scroll.ensureWidgetVisible(c, 0, 0)
            QApplication.processEvents()
            top_left = c.mapTo(view, c.rect().topLeft())
            bottom_right = c.mapTo(view, c.rect().bottomRight())
            assert top_left.x() >= 0 and bottom_right.x() <= view.width(), \
                f"{type(w).__name__}: {c.objectName() or c.text() if hasattr(c, 'text') else c}"
            assert not c.visibleRegion().isEmpty(), f"{type(w).__name__}: {c}"
