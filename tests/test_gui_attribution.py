"""GUI tests of Predict / Explain: targets, channels by name, training scale, result layers,
export round trip, provenance panel and bad input (pytest-qt + make_napari_viewer)."""

from __future__ import annotations

import html
import re
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui
SIZE = 32


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path):
    from qtpy.QtCore import QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(tmp_path / "settings"))


@pytest.fixture(scope="module")
def cells():
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    return make_cell_phenotype(n_images=48, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def bundle(cells):
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.runtime.progress import run_generator

    cfg = TrainConfig(epochs=3, batch_size=16, width=8, device="cpu", seed=0)
    from napari_attribution.io.models import load_model

    return load_model(run_generator(train_dcmix(cells, cfg)))


@pytest.fixture
def errors(monkeypatch):
    import napari.utils.notifications as notifications

    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    return seen


def _add(viewer, data, order=None, n=None, prefix=""):
    order = order or list(range(len(data.channel_names)))
    for c in order:
        name = data.channel_names[c]
        viewer.add_image(data.images[:n, c], name=prefix + name, blending="additive")


def _widget(viewer, bundle):
    from napari_attribution._qt import AttributionWidget
    from napari_attribution._qt._common import session_for

    session_for(viewer).set_model(bundle)
    w = AttributionWidget(viewer)
    w.steps.setValue(2)
    w.curves.setChecked(False)
    w.scope.setCurrentText("current image")
    return w


def _wait(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: not w.runner.running and w.plot.idle, timeout=timeout)


def test_predict_then_explain_with_every_method(make_napari_viewer, qtbot, cells, bundle,
                                                errors):
    """The Predict -> Explain -> Explain path: the target survives Predict renaming the
    first entry, for every method, and a rerun replaces its layer."""
    from napari_attribution.core.attribution.explain import available_methods

    viewer = make_napari_viewer()
    _add(viewer, cells, n=8)
    w = _widget(viewer, bundle)
    viewer.dims.set_current_step(0, 3)
    w.predict()
    _wait(qtbot, w)
    assert errors == [] and w.target.itemText(0).startswith("predicted (")
    predicted = w.target.itemText(0)[len("predicted ("):-1]
    for method in available_methods():
        w.method.setCurrentText(method)
        for _ in range(2):  # Explain twice: the second press used to fail
            assert w.run() is not None, errors
            _wait(qtbot, w)
            assert errors == [], (method, errors)
        name = w.last_layers[0].name
        assert name.endswith(f"· {predicted} · image 3"), name
    n_layers = len(viewer.layers)
    w.target.setCurrentIndex(w.target.findText("nuclear"))  # an explicit class
    w.method.setCurrentText("saliency")
    w.run()
    _wait(qtbot, w)
    assert errors == [] and set(w.last_result.targets.tolist()) == {1}
    assert len(viewer.layers) == n_layers + (predicted != "nuclear")
    assert w.last_layers[0].name == "saliency · nuclear · image 3"
    # a contrastive entry: "nuclear vs <the other class>", in the layer name and provenance
    other = next(w.target.itemText(i) for i in range(1, w.target.count())
                 if w.target.itemText(i) not in ("nuclear",) and " vs " not in
                 w.target.itemText(i))
    w.target.setCurrentIndex(w.target.findText(f"nuclear vs {other}"))
    w.method.setCurrentText("integrated_gradients")
    w.run()
    _wait(qtbot, w)
    assert errors == [] and w.last_result.contrast is not None
    assert set(w.last_result.targets.tolist()) == {1}
    assert w.last_layers[0].name == f"integrated gradients · nuclear vs {other} · image 3"
    prov = w.last_layers[0].metadata["napari_attribution"]["provenance"]
    assert prov["contrast"] == w.last_result.contrast


def test_predict_and_explain_agree_and_curves_run(make_napari_viewer, qtbot, cells, bundle,
                                                  errors):
    viewer = make_napari_viewer()
    _add(viewer, cells, n=8)
    w = _widget(viewer, bundle)
    w.predict()
    _wait(qtbot, w)
    p_predict = w.last_probabilities.copy()
    w.curves.setChecked(True)
    w.run()
    _wait(qtbot, w)
    assert errors == []
    np.testing.assert_allclose(w.last_result.probabilities, p_predict, atol=1e-5)
    assert "per image" in w.proba.text()
    assert set(w.last_curves) == {"deletion", "insertion"}
    assert "curves" in w.status.text()
    ax = w.plot.figure.axes[0]
    assert len(ax.lines) == 2 and ax.get_legend() is not None


def test_channels_reach_the_model_by_name(make_napari_viewer, qtbot, cells, bundle, errors):
    """Layer order does not matter; names that do not match give a clear error, and a
    channel map fixes them."""
    ref = bundle.predict_proba(cells.images[:8])
    viewer = make_napari_viewer()
    _add(viewer, cells, order=[3, 1, 0, 2], n=8)  # another order in the layer list
    w = _widget(viewer, bundle)
    w.scope.setCurrentText("all images")
    w.picker.set_checked([ly.name for ly in viewer.layers])
    w.predict()
    _wait(qtbot, w)
    assert errors == []
    np.testing.assert_allclose(w.last_probabilities, ref, atol=1e-5)

    viewer2 = make_napari_viewer()
    _add(viewer2, cells, n=8, prefix="w1 ")  # names no longer match the model's
    w2 = _widget(viewer2, bundle)
    w2.picker.set_checked([ly.name for ly in viewer2.layers])
    assert w2.predict() is None
    assert errors and "not among the input's" in errors[-1]
    assert "not among the input's" in w2.status.text()  # full text in the widget too
    w2.picker.mapping.setText(", ".join(f"{n}=w1 {n}" for n in cells.channel_names))
    errors.clear()
    w2.scope.setCurrentText("all images")
    w2.predict()
    _wait(qtbot, w2)
    assert errors == []
    np.testing.assert_allclose(w2.last_probabilities, ref, atol=1e-5)


def test_an_extra_layer_of_the_same_shape_does_not_change_the_result_layer(
        make_napari_viewer, qtbot, cells, bundle, errors):
    """A plain image of the input's shape added between two runs (ticked as a channel of
    the group) is no input of the model: the rerun replaces the first result layer, and
    the provenance names the model's channels' layers in the model's order."""
    viewer = make_napari_viewer()
    _add(viewer, cells, order=[3, 1, 0, 2], n=4)
    w = _widget(viewer, bundle)
    w.method.setCurrentText("saliency")
    w.run()
    _wait(qtbot, w)
    first = w.last_layers[0]
    n_layers = len(viewer.layers)
    viewer.add_image(np.zeros_like(cells.images[:4, 0]), name="notes")
    w.picker.set_checked([ly.name for ly in viewer.layers
                          if ly.name in (*cells.channel_names, "notes")])
    assert "notes" in w.picker.checked_names()
    w.run()
    _wait(qtbot, w)
    assert errors == []
    assert w.last_layers[0] is first and len(viewer.layers) == n_layers + 1
    prov = first.metadata["napari_attribution"]["provenance"]
    assert prov["source_layers"] == list(cells.channel_names)


def test_a_swapped_channel_map_is_flagged(make_napari_viewer, qtbot, cells, bundle, errors):
    """DNA's pixels under the Marker name (and the reverse): Predict and Explain say the
    channels look like the other trained channels; the right map says nothing."""
    viewer = make_napari_viewer()
    _add(viewer, cells, n=16)
    w = _widget(viewer, bundle)
    w.scope.setCurrentText("all images")
    w.predict()
    _wait(qtbot, w)
    assert errors == [] and w.last_findings == []
    assert "channel-map-suspect" not in w.status.text()
    swapped = make_napari_viewer()
    names = list(cells.channel_names)
    for c, src in enumerate([1, 0, 2, 3]):          # Marker's data as DNA and vice versa
        swapped.add_image(cells.images[:16, src], name=names[c], blending="additive")
    w2 = _widget(swapped, bundle)
    w2.scope.setCurrentText("all images")
    w2.predict()
    _wait(qtbot, w2)
    assert errors == []
    assert {f.evidence["channel"] for f in w2.last_findings} == {"DNA", "Marker"}
    assert "channel-map-suspect" in w2.status.text()
    w2.method.setCurrentText("saliency")
    w2.run()
    _wait(qtbot, w2)
    assert errors == [] and "channel-map-suspect" in w2.status.text()
    codes = [f["code"] for f in w2.last_result.provenance()["findings"]]
    assert "channel-map-suspect" in codes


def test_training_scale_is_applied(make_napari_viewer, qtbot, cells, bundle, errors):
    """A model trained on crops shrunk 2x sees full-resolution fields shrunk 2x and in
    tiles of its input size; the maps go back over the field via the layer scale."""
    import copy

    b = copy.copy(bundle)
    b.provenance = {**bundle.provenance, "data": {"image_size": [SIZE, SIZE],
                                                  "downsample": 2}}
    field = np.concatenate([np.concatenate([cells.images[i], cells.images[i + 1]], -1)
                            for i in (0, 2)], -2)  # (C, 64, 64) at training scale
    raw = np.repeat(np.repeat(field, 2, -1), 2, -2)  # (C, 128, 128) "raw" pixels
    viewer = make_napari_viewer()
    for c, name in enumerate(cells.channel_names):
        viewer.add_image(raw[c], name=name)
    w = _widget(viewer, b)
    assert "shrunk 2x, 32 px tiles" in w.model_label.text()
    w.predict()
    _wait(qtbot, w)
    assert errors == []
    assert "mean over 9 tiles of 32 px, shrunk 2x" in w.proba.text()
    p_predict = w.last_probabilities.copy()
    w.method.setCurrentText("saliency")
    w.run()
    _wait(qtbot, w)
    assert errors == []
    np.testing.assert_allclose(w.last_result.probabilities, p_predict, atol=1e-5)
    layer = w.last_layers[0]
    assert layer.data.shape == (64, 64)
    assert tuple(layer.scale) == (2.0, 2.0) and tuple(layer.translate) == (0.5, 0.5)
    prov = layer.metadata["napari_attribution"]["provenance"]
    assert prov["scale"] == {"shrink": 2, "tile": SIZE, "tiles_per_image": 9}


def test_export_round_trip_and_provenance_panel(make_napari_viewer, qtbot, cells, bundle,
                                                tmp_path, errors):
    from napari_attribution._qt import ExportWidget
    from napari_attribution._reader import read_layers

    viewer = make_napari_viewer()
    _add(viewer, cells, n=8)
    w = _widget(viewer, bundle)
    exp = ExportWidget(viewer)
    viewer.dims.set_current_step(0, 4)
    w.run()
    _wait(qtbot, w)
    layer = w.last_layers[0]
    viewer.layers.selection.active = layer
    assert "method: pcim" in exp.provenance.toPlainText()
    assert "image 4" in exp.provenance.toPlainText()
    written = exp.save_attribution(tmp_path)
    assert errors == [] and len(written) == 1
    viewer2 = make_napari_viewer()
    for data, kw, _kind in read_layers(str(written[0])):
        viewer2.add_image(data, **kw)
    back = viewer2.layers[0]
    assert back.name == layer.name
    assert back.data.shape == layer.data.shape == (1, SIZE, SIZE)
    assert tuple(back.translate) == tuple(layer.translate)  # stays on slice 4
    exp2 = ExportWidget(viewer2)
    assert exp2.list.count() == 1  # reopened maps can be exported again
    viewer2.layers.selection.active = back
    assert "method: pcim" in exp2.provenance.toPlainText()
    again = exp2.save_attribution(tmp_path / "again")
    assert errors == [] and len(again) == 1


def test_bad_input_gives_messages_not_tracebacks(make_napari_viewer, qtbot, cells, bundle,
                                                 errors):
    from napari_attribution._qt import AttributionWidget, TrainWidget

    viewer = make_napari_viewer()
    a = AttributionWidget(viewer)
    assert a.run() is None and "no model" in errors[-1] and "no model" in a.status.text()
    viewer.add_image(cells.images[:4, 0], name="DNA")
    viewer.add_image(cells.images[:4, 1, :16, :16], name="Marker")
    t = TrainWidget(viewer)
    t.picker.set_checked(["DNA", "Marker"])
    assert t.start_training() is None
    assert "differ in shape" in errors[-1] and "Combine" in errors[-1]
    w = _widget(viewer, bundle)  # the model needs 4 channels: DNA, Marker, Membrane, Noise
    w.picker.set_checked(["DNA"])
    assert w.run() is None and "Marker" in errors[-1]


def test_layer_removed_mid_run(make_napari_viewer, qtbot, cells, bundle, errors):
    viewer = make_napari_viewer()
    _add(viewer, cells, n=8)
    w = _widget(viewer, bundle)
    w.steps.setValue(30)
    assert w.run() is not None
    viewer.layers.remove("Marker")
    _wait(qtbot, w)
    assert errors == []
    assert w.last_layers and w.last_layers[0].data.shape == (1, SIZE, SIZE)


def test_closing_the_viewer_mid_run_returns_fast(make_napari_viewer, qtbot, cells, bundle):
    """Closing mid-run costs at most 1 s more than closing an idle viewer (napari's own
    teardown takes about a second here) and leaves no thread behind."""
    from qtpy.QtCore import QThreadPool

    def viewer_with_widget():
        viewer = make_napari_viewer()
        _add(viewer, cells)
        w = _widget(viewer, bundle)
        viewer.window.add_dock_widget(w, name="Pixel attribution")
        w.scope.setCurrentText("all images")
        w.steps.setValue(500)
        return viewer, w

    idle, _ = viewer_with_widget()
    t0 = time.perf_counter()
    idle.close()
    idle_s = time.perf_counter() - t0
    viewer, w = viewer_with_widget()
    worker = w.run()
    seen = []
    worker.yielded.connect(seen.append)
    qtbot.waitUntil(lambda: len(seen) >= 1, timeout=30000)
    t0 = time.perf_counter()
    viewer.close()
    assert time.perf_counter() - t0 < idle_s + 1.0
    assert not w.runner.running
    assert QThreadPool.globalInstance().waitForDone(20000)


def test_study_report(make_napari_viewer, qtbot, cells, bundle, tmp_path, errors):
    """One HTML file with the importance chart, the confusion matrix and example maps."""
    from napari_attribution._qt import ExportWidget
    from napari_attribution._qt._common import session_for
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.runtime.progress import run_generator

    viewer = make_napari_viewer()
    _add(viewer, cells, n=8)
    result = run_generator(train_dcmix(cells, TrainConfig(epochs=1, width=8, device="cpu")))
    w = _widget(viewer, bundle)
    session = session_for(viewer)
    session.data = cells
    session.set_model(result, result)
    exp = ExportWidget(viewer)
    before = exp.save_report(tmp_path / "before.html")  # no maps yet: chart only
    assert before.read_text().count("data:image/png;base64,") == 1
    w.run()
    _wait(qtbot, w)
    out = exp.save_report(tmp_path / "report")
    assert errors == [] and out.suffix == ".html"
    text = out.read_text()
    assert "Channel importance" in text and "balanced accuracy" in text
    assert "study verdict:" in text and "held out:" in text and "<h2>Findings</h2>" in text
    assert all(html.escape(f.message) in text for f in result.findings)
    n_val = len(result.val_index)
    cm_cells = [int(v) for v in re.findall(r"<td>(\d+)</td>", text)]
    assert sum(cm_cells) == n_val  # every validation image counted once
    assert text.count("data:image/png;base64,") == 2  # importance chart + one map
    assert "PCIM · " in text
    assert "<h2>Last results</h2>" in text  # the session's last explanation


def test_sample_is_large_enough_and_coloured():
    from napari_attribution._sample_data import cell_phenotype_sample

    layers = cell_phenotype_sample()
    images = [ly for ly in layers if ly[2] == "image"]
    assert [kw["name"] for _, kw, _ in images] == ["DNA", "Marker", "Membrane", "Distractor"]
    assert images[0][0].shape == (400, 32, 32)
    assert images[0][1]["colormap"] == "blue" and len(images[0][1]["metadata"]["labels"]) == 400


def test_cost_hint_curves_default_signed_maps_and_well_names(make_napari_viewer, qtbot,
                                                             cells, bundle, errors):
    """Before a run: the expected time (passes x one measured pass); curves on for
    crops, off for a tiled field; a contrastive map gets a symmetric diverging scale
    with a legend, the channels are muted under it, and its name has the well/site."""
    from napari_attribution._qt import AttributionWidget
    from napari_attribution._qt._common import session_for
    from napari_attribution._qt._results import SIGNED_CMAP
    from napari_attribution.core.attribution.cost import (
        cached_pass_seconds,
        extra_passes,
        method_passes,
    )

    viewer = make_napari_viewer()
    wells = {"well": ["A01", "A01", "B02", "B02"], "site": ["1", "2", "1", "2"]}
    for c, name in enumerate(cells.channel_names):
        viewer.add_image(cells.images[:4, c], name=name, blending="additive",
                         metadata=dict(wells))
    session_for(viewer).set_model(bundle)
    w = AttributionWidget(viewer)
    w.scope.setCurrentText("current image")
    assert w.curves.isChecked() and w.evidence.isChecked()     # crops: curves on
    qtbot.waitUntil(lambda: "expected time here" in w.cost.text(), timeout=30000)
    n_ch = len(bundle.channel_names)
    t = cached_pass_seconds((n_ch, SIZE, SIZE), "cpu", str(bundle.sha256 or
                                                           f"id{id(bundle.model)}"))
    assert t is not None and t > 0
    pcim = method_passes("pcim", {"steps": w.steps.value()}) + extra_passes(True, True)
    assert np.isclose(w.cost.seconds, t * pcim)
    w.method.setCurrentText("rise")
    qtbot.waitUntil(lambda: np.isclose(w.cost.seconds, t * (
        method_passes("rise", {}) + extra_passes(True, True))), timeout=5000)
    w.scope.setCurrentText("all images")
    qtbot.waitUntil(lambda: "x 4 images" in w.cost.text(), timeout=5000)
    w.scope.setCurrentText("current image")
    w.method.setCurrentText("pcim")
    # a whole field larger than the model's input: tiled, curves off by default
    field = np.tile(cells.images[0], (1, 3, 3))
    for c, name in enumerate(cells.channel_names):
        viewer.add_image(field[c], name=f"{name} field", metadata={"image_id": "01-C-03"})
    w.picker.set_checked([f"{n} field" for n in cells.channel_names])
    qtbot.waitUntil(lambda: not w.curves.isChecked(), timeout=5000)
    qtbot.waitUntil(lambda: "tiles" in w.cost.text(), timeout=30000)
    # back to the crops: on again, and the field's messages are gone
    w.say("a message about the field")
    w.picker.set_checked(list(cells.channel_names))
    qtbot.waitUntil(lambda: w.curves.isChecked() and w.status.text() == "", timeout=5000)
    # a contrastive run on crop 1 (well A01, site 2)
    viewer.dims.set_point(0, 1)
    w.curves.setChecked(False)
    w.steps.setValue(2)
    a, b = bundle.class_names[:2]
    w.target.setCurrentText(f"{a} vs {b}")
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running and w.plot.idle, timeout=60000)
    assert errors == []
    (layer,) = w.last_layers
    assert "A01 s2 [1]" in layer.name and f"{a} vs {b}" in layer.name
    assert layer.colormap.name == SIGNED_CMAP
    lo, hi = layer.contrast_limits
    assert hi > 0 and np.isclose(lo, -hi)
    assert w.colour_bar.signed and f"rather than {b}" in w.colour_bar.legend
    channels = [viewer.layers[n] for n in cells.channel_names]
    assert all(ly.opacity < 0.6 for ly in channels)
    layer.visible = False
    assert all(ly.opacity == 1.0 for ly in channels)
    # a predicted-class PCIM run keeps the evidence colormap
    layer.visible = True
    w.target.setCurrentIndex(0)
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running and w.plot.idle, timeout=60000)
    (pcim,) = w.last_layers
    assert pcim.colormap.name != SIGNED_CMAP and pcim.contrast_limits[0] == 0.0
    assert not w.colour_bar.signed and "bright: evidence for" in w.colour_bar.legend


def test_sample_opened_in_napari_gets_the_command_lines_study_verdict(make_napari_viewer):
    """File > Open Sample > Cell phenotype, all images labelled from the layer metadata:
    the Train widget's dataset is judged like `train --sample cells` (its images are
    independent generated cells), not cautioned for missing wells."""
    from napari_attribution._qt import TrainWidget
    from napari_attribution._sample_data import cell_phenotype_sample
    from napari_attribution.core.data.synthetic import make_cell_phenotype
    from napari_attribution.core.study.design import check_study_design

    viewer = make_napari_viewer()
    for data, kw, kind in cell_phenotype_sample():
        if kind == "image":
            viewer.add_image(data, **kw)
    w = TrainWidget(viewer)
    w.picker.refresh()
    data, _ = w.dataset()
    codes = {f.code for f in check_study_design(data).findings}
    cli = {f.code for f in check_study_design(make_cell_phenotype(400, 32, seed=0)).findings}
    assert "design-no-groups" not in codes and codes == cli
