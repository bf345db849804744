"""GUI tests of the Point and explain dock: a real click on the canvas puts the map on the
clicked cell, a second click replaces it, pinning keeps it, a newer click cancels an
older one, and the per-object table writes the Labels layer's features and exports."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_point import _clf, _field  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("isolated_qt_settings")]


def click(viewer, qtbot, world_yx) -> None:
    """A real left click on the canvas at ``world_yx`` (press and release)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas
    view = canvas.view
    xy = (view.transform * view.scene.transform).map([world_yx[1], world_yx[0]])[:2]
    QTest.mouseClick(canvas._scene_canvas.native, Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.NoModifier, QPoint(int(round(xy[0])),
                                                            int(round(xy[1]))))


def _setup(make_napari_viewer, labels=True, scale=(0.5, 0.5), translate=(10.0, 20.0),
           field_labels=None):
    from napari_attribution._qt._common import session_for
    from napari_attribution._qt.point_widget import PointExplainWidget

    field, lab = field_labels if field_labels is not None else _field()
    viewer = make_napari_viewer(show=True)
    for c, name in enumerate(("spot", "noise")):
        viewer.add_image(field[c], name=name, blending="additive", scale=scale,
                         translate=translate, metadata={"image_id": "B-02"})
    if labels:
        viewer.add_labels(lab, name="nuclei", scale=scale, translate=translate)
    clf = _clf()
    session_for(viewer).set_model(clf)
    w = PointExplainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Point and explain")
    if labels:
        w.labels_box.setCurrentText("nuclei")
    viewer.layers.selection.active = viewer.layers["spot"]
    viewer.reset_view()
    return viewer, w, field, lab


def _world(field_yx, scale=(0.5, 0.5), translate=(10.0, 20.0)):
    return tuple(t + p * s for p, s, t in zip(field_yx, scale, translate, strict=True))


def _map_peak_in_field(layer) -> tuple[int, int]:
    """The field pixel (of the image layers) under the map layer's strongest pixel."""
    data = np.asarray(layer.data)
    iy, ix = np.unravel_index(int(np.argmax(data)), data.shape)
    world = np.asarray(layer.data_to_world((iy, ix)))
    field = (world - np.array([10.0, 20.0])) / 0.5
    return int(round(field[0])), int(round(field[1]))


def _point_layers(viewer, kind="point"):
    return [ly for ly in viewer.layers
            if ly.metadata.get("napari_attribution", {}).get("kind") == kind]


def test_a_click_puts_the_map_on_the_clicked_cell_and_a_second_click_replaces_it(
        make_napari_viewer, qtbot, errors):
    viewer, w, field, lab = _setup(make_napari_viewer)
    n_layers = len(viewer.layers)
    click(viewer, qtbot, _world((47, 41)))          # inside spot B (label 2)
    qtbot.waitUntil(lambda: len(w.timings) == 1, timeout=30000)
    assert errors == []
    layers = _point_layers(viewer)
    # map + crop box + the clicked cell's outline
    assert len(layers) == 1 and len(viewer.layers) == n_layers + 3
    assert "cell 2" in layers[0].name and "B-02" in layers[0].name
    assert "on" in layers[0].name
    assert lab[_map_peak_in_field(layers[0])] == 2
    assert "<b>on" in w.result.text() and "spot" in w.result.text()
    # the default: evidence from the clicked cell; the probabilities are the crop's
    res = w.last["res"]
    assert w.scope.currentData() == "cell" and res.scope == "cell"
    from napari_attribution.core.attribution.point import cell_regions

    prep, (y0, x0), s = w.last["prep"], res.origins[0], res.crop
    full = np.asarray(layers[0].data).reshape(prep.x.shape[-2:])
    region = cell_regions(lab, [2], prep, res.origins)[0] > 0
    inner = full[y0:y0 + s, x0:x0 + s]
    assert (inner != 0).any() and (inner[~region] == 0).all()   # nothing off cell 2's cell
    assert np.count_nonzero(full) == np.count_nonzero(inner)
    text = w.result.text()
    assert "evidence from the clicked cell" in text
    assert "prediction for the 32 px crop around it (the model's input, shrunk 2x)" in text
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", text)
    assert heads == ["channel", "cell ΔP", "cell Δlog-odds", "crop ΔP"]   # no DCMIX here
    assert "still ranks the channels" in text
    assert res.crop_channel_evidence is not None
    assert res.channel_log_odds[0, 0] > res.channel_log_odds[0, 1]   # spot over noise
    prov = layers[0].metadata["napari_attribution"]["provenance"]
    assert prov["scope"] == "cell" and set(prov["crop_channel_evidence"]) == {"spot", "noise"}
    assert set(prov["channel_log_odds"]) == {"spot", "noise"}
    (outline,) = _point_layers(viewer, "point_contour")
    edge = np.asarray(outline.data).reshape(lab.shape).astype(bool)
    assert edge.any() and set(np.unique(lab[edge])) == {2}   # on cell 2's own pixels
    assert np.allclose(outline.scale, viewer.layers["spot"].scale)
    # the channels are muted under the map, with a legend saying what bright means
    spot, noise = viewer.layers["spot"], viewer.layers["noise"]
    assert spot.opacity < 0.6 and noise.opacity < 0.6
    assert w.colour_bar.isVisible() and "evidence for on" in w.colour_bar.legend
    layers[0].visible = False           # map hidden: channels as they were
    assert spot.opacity == 1.0 and noise.opacity == 1.0
    layers[0].visible = True
    assert spot.opacity < 0.6
    # second click, on spot A: the same layer now sits on A
    click(viewer, qtbot, _world((14, 16)))
    qtbot.waitUntil(lambda: len(w.timings) == 2, timeout=30000)
    layers = _point_layers(viewer)
    assert len(layers) == 1 and len(viewer.layers) == n_layers + 3
    assert "cell 1" in layers[0].name
    assert lab[_map_peak_in_field(layers[0])] == 1
    # the whole crop, one choice away: same layer, the crop's numbers
    w.scope.setCurrentIndex(w.scope.findData("crop"))
    click(viewer, qtbot, _world((14, 16)))
    qtbot.waitUntil(lambda: len(w.timings) == 3, timeout=30000)
    assert w.last["res"].scope == "crop" and len(_point_layers(viewer)) == 1
    assert "evidence from the whole crop (the model's input" in w.result.text()
    assert re.findall(r"<th[^>]*>([^<]*)</th>", w.result.text()) == [
        "channel", "crop ΔP", "crop Δlog-odds"]
    assert lab[_map_peak_in_field(_point_layers(viewer)[0])] == 1
    w.scope.setCurrentIndex(w.scope.findData("cell"))
    edge = np.asarray(outline.data).reshape(lab.shape).astype(bool)
    assert set(np.unique(lab[edge])) == {1}
    # pinning keeps the result; the next click adds a new set
    w.pin()
    assert _point_layers(viewer) == [] and len(_point_layers(viewer, "point_pinned")) == 1
    click(viewer, qtbot, _world((45, 45)))
    qtbot.waitUntil(lambda: len(w.timings) == 4, timeout=30000)
    assert len(viewer.layers) == n_layers + 6 and errors == []
    # removing every map restores the channels
    for ly in [ly for ly in viewer.layers if ly.name.startswith(("point", "pinned"))]:
        viewer.layers.remove(ly)
    assert spot.opacity == 1.0 and noise.opacity == 1.0
    # painting labels: the click is the brush's, not a request to explain
    viewer.layers.selection.active = viewer.layers["nuclei"]
    viewer.layers["nuclei"].mode = "paint"
    click(viewer, qtbot, _world((14, 16)))
    qtbot.wait(300)
    assert len(w.timings) == 4 and not w.busy


def test_a_drag_explains_nothing_and_a_newer_click_cancels_an_older_one(
        make_napari_viewer, qtbot, errors):
    viewer, w, field, lab = _setup(make_napari_viewer, labels=False)
    w.scope.setCurrentIndex(w.scope.findData("crop"))   # no segmentation: only the crop
    w.steps.setValue(60)                  # slow enough to be overtaken
    w.explain_at(_world((45, 45)))
    w.explain_at(_world((15, 15)))
    assert w.busy
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert errors == [] and len(w.timings) == 1      # only the newest is shown
    res, k = w.last["res"], w.last["k"]
    assert w.session.point is res  # the last clicked cell is the session's
    assert res.labels[k] == 0 and res.centres[k].tolist() == [15.0, 15.0]
    assert res.scope == "crop" and "(the model's input, neighbours included)" in \
        w.result.text()
    assert not any(ly.name.startswith("cells") for ly in viewer.layers)
    # the cancelled run left the model's parameters as they were
    assert all(p.requires_grad for p in w.session.bundle.module.parameters())
    # clicking outside the image explains nothing
    w.explain_at(_world((200, 200)))
    assert not w.busy and "outside" in w.status.text()


def test_points_layer_and_table_features_and_export(make_napari_viewer, qtbot, errors,
                                                    tmp_path):
    viewer, w, field, lab = _setup(make_napari_viewer)
    pts = viewer.add_points(ndim=2, name="picks")
    pts.add(np.array([_world((44, 44))]))           # a new point explains its cell
    qtbot.waitUntil(lambda: len(w.timings) == 1, timeout=30000)
    assert int(w.last["res"].labels[0]) == 2
    # every object of the Labels layer
    w.labels_box.setCurrentText("nuclei")
    w.steps.setValue(3)
    assert w.explain_all() is not None
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert errors == []
    feats = viewer.layers["nuclei"].features
    assert feats["index"].tolist() == [1, 2]
    assert set(feats["predicted"]) == {"on"}
    assert {"p_on", "p_off", "evidence", "channel_spot", "channel_noise",
            "crop_channel_spot", "crop_channel_noise", "log_odds_spot", "log_odds_noise",
            "inside_share"} <= set(feats.columns)
    assert (feats["channel_spot"] > feats["channel_noise"]).all()
    assert (feats["log_odds_spot"] > feats["log_odds_noise"]).all()
    assert w.table.rowCount() == 2 and w.table_result.scope == "cell"   # each cell's own
    headers = [w.table.horizontalHeaderItem(c).text() for c in range(w.table.columnCount())]
    assert "spot (cell)" in headers and "spot (crop)" in headers
    assert "spot (cell, nats)" in headers
    assert "evidence from each cell" in w.status.text()
    # colour by a channel's log-odds drop: the cells take different colours
    w.colour_by.setCurrentText("log_odds_spot")
    cmap = viewer.layers["nuclei"].colormap
    if feats["log_odds_spot"].nunique() > 1:
        assert not np.allclose(cmap.map(np.array([1]))[0], cmap.map(np.array([2]))[0])
    # colour by prediction: both cells take the colour of class "on"
    w.colour_by.setCurrentText("prediction")
    cmap = viewer.layers["nuclei"].colormap
    assert np.allclose(cmap.map(np.array([1]))[0], cmap.map(np.array([2]))[0])
    # selecting a row jumps to the cell and shows its map
    w.table.select_label(1)
    from napari_attribution._qt.point_widget import camera

    assert np.allclose(camera(viewer).center[-2:], _world((14.5, 14.5)))
    assert "cell 1" in _point_layers(viewer)[0].name
    # export with provenance
    files = w.export_table(str(tmp_path / "cells.csv"))
    with open(files[0]) as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["1", "2"]
    prov = json.loads(files[1].read_text())
    assert prov["objects"] == 2 and prov["labels_layer"] == "nuclei"
    assert prov["model"]["class_names"] == ["off", "on"] and prov["image"] == "B-02"
    assert prov["scope"] == "cell" and "crop" in prov["probabilities_of"]
    # the whole crop for every row, one choice away
    w.scope.setCurrentIndex(w.scope.findData("crop"))
    w.explain_all()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert w.table_result.scope == "crop" and errors == []
    assert "crop_channel_spot" not in viewer.layers["nuclei"].features.columns
    headers = [w.table.horizontalHeaderItem(c).text() for c in range(w.table.columnCount())]
    assert "spot (crop)" in headers and "spot (cell)" not in headers


def test_a_click_without_labels_segments_the_field_once_and_explains_the_cell(
        make_napari_viewer, qtbot, errors, monkeypatch):
    from napari.layers import Labels

    import napari_attribution.core.attribution.point as point

    calls = []
    real = point.segment_field
    monkeypatch.setattr(point, "segment_field",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    field, lab = _field()
    field[1][lab > 0] += 0.8        # the nuclei, in a channel not named like a stain
    viewer, w, field, lab = _setup(make_napari_viewer, labels=False,
                                   field_labels=(field, lab))
    assert w.scope.currentData() == "cell" and w.labels_layer() is None
    click(viewer, qtbot, _world((47, 41)))          # inside spot B
    qtbot.waitUntil(lambda: len(w.timings) == 1, timeout=30000)
    assert errors == [] and calls == [1]
    (layer,) = [ly for ly in viewer.layers if isinstance(ly, Labels)]
    assert layer.name == "cells · B-02" and w.labels_box.currentText() == layer.name
    assert np.allclose(layer.scale, [0.5, 0.5]) and np.allclose(layer.translate, [10, 20])
    assert layer.metadata["segmentation"] == "built-in Otsu + watershed on noise"
    assert layer.metadata["segmentation_channel_named"] is False
    assert layer.contour == 1             # outlines: the field stays visible
    seg = np.asarray(layer.data)
    assert seg.max() == 2 and (seg[lab == 2] == seg[47, 41]).all()   # the two spots
    res = w.last["res"]
    assert res.scope == "cell" and int(res.labels[0]) == seg[47, 41] > 0
    assert seg[_map_peak_in_field(_point_layers(viewer)[0])] == seg[47, 41]
    text = w.result.text()
    assert "evidence from the clicked cell" in text
    assert "nuclei segmented on noise" in text and "not named like a nuclear stain" in text
    prov = _point_layers(viewer)[0].metadata["napari_attribution"]["provenance"]
    assert prov["objects_from"] == "built-in Otsu + watershed on noise"
    assert len(_point_layers(viewer, "point_contour")) == 1
    # a second click reuses the segmentation: no new Labels layer, its own cell
    click(viewer, qtbot, _world((14, 16)))
    qtbot.waitUntil(lambda: len(w.timings) == 2, timeout=30000)
    assert calls == [1] and len([ly for ly in viewer.layers if isinstance(ly, Labels)]) == 1
    assert int(w.last["res"].labels[0]) == seg[14, 16] != seg[47, 41]
    assert w.last["res"].scope == "cell"
    # background (label 0): the whole crop, and the line says why
    click(viewer, qtbot, _world((30, 30)))
    qtbot.waitUntil(lambda: len(w.timings) == 3, timeout=30000)
    assert w.last["res"].scope == "crop" and "no object under the click" in w.result.text()
    assert "click on a segmented nucleus" in w.result.text()
    # every cell: the same segmentation, the same layer
    w.steps.setValue(2)
    w.explain_all()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert errors == [] and calls == [1] and w.table_layer is layer
    assert len([ly for ly in viewer.layers if isinstance(ly, Labels)]) == 1
    assert len(layer.features) == 2 and layer.contour == 0   # filled for the colours


def test_explain_every_cell_segments_the_field_without_labels(make_napari_viewer, qtbot,
                                                             errors):
    viewer, w, field, lab = _setup(make_napari_viewer, labels=False)
    w.steps.setValue(2)
    w.explain_all()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert errors == []
    layer = w.table_layer
    assert layer is not None and layer.name == "cells · B-02"
    assert np.allclose(layer.scale, [0.5, 0.5]) and np.allclose(layer.translate, [10, 20])
    assert len(layer.features) == w.table.rowCount() >= 1
    assert w.labels_box.currentText() == layer.name


def test_docks_opened_one_by_one_join_as_tabs(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    from napari_attribution._qt import AttributionWidget, PointExplainWidget, TrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    widgets = [cls(viewer) for cls in (TrainWidget, AttributionWidget, PointExplainWidget)]
    docks = [viewer.window.add_dock_widget(w, name=type(w).__name__, area="right")
             for w in widgets]    # as the Plugins menu does: no tabify asked for
    qtbot.waitUntil(lambda: all(getattr(w, "_tabs_joined", False) for w in widgets),
                    timeout=5000)
    qtbot.wait(50)
    win = viewer.window._qt_window
    assert all(isinstance(d, QDockWidget) for d in docks)
    assert {d for d in win.tabifiedDockWidgets(docks[0])} == set(docks[1:])
    # tabbed, each dock has the area's full height: nothing squeezed to a sliver
    qtbot.wait(300)
    # one tab on top, with the area's full height (docks stacked would get ~118 px each)
    shown = [w for w in widgets if not w.visibleRegion().isEmpty()]
    assert len(shown) == 1 and shown[0].height() > 500


def test_channel_files_opened_one_by_one_are_all_ticked(make_napari_viewer, tmp_path):
    """The reader's layers of one well, opened file by file: each arriving channel of
    the ticked image is ticked; another well's is not."""
    import tifffile

    from napari_attribution._qt._layers import ChannelPicker
    from napari_attribution._reader import read_layers

    rng = np.random.default_rng(0)
    for name in ("Channel1-01-A-01", "Channel2-01-A-01", "Channel1-02-A-02"):
        tifffile.imwrite(tmp_path / f"{name}.tif", rng.integers(0, 255, (32, 32), np.uint8))
    viewer = make_napari_viewer()
    picker = ChannelPicker(viewer)
    colours = []
    for name in ("Channel1-01-A-01", "Channel2-01-A-01", "Channel1-02-A-02"):
        for data, meta, _ in read_layers(str(tmp_path / f"{name}.tif")):
            colours.append(meta["colormap"])
            viewer.add_image(data, **meta)
    assert picker.checked_names() == ["Channel1 (01-A-01)", "Channel2 (01-A-01)"]
    assert colours[0] != colours[1]          # two channels, two colours


def test_renaming_a_layer_renames_its_channel(make_napari_viewer, tmp_path):
    import tifffile

    from napari_attribution._qt._layers import ChannelPicker
    from napari_attribution._reader import read_layers

    rng = np.random.default_rng(0)
    viewer = make_napari_viewer()
    picker = ChannelPicker(viewer)
    for name in ("Channel1-01-A-01", "Channel2-01-A-01"):
        tifffile.imwrite(tmp_path / f"{name}.tif", rng.integers(0, 255, (32, 32), np.uint8))
        for data, meta, _ in read_layers(str(tmp_path / f"{name}.tif")):
            viewer.add_image(data, **meta)
    assert picker.selection().channel_names == ["Channel1", "Channel2"]
    viewer.layers["Channel1 (01-A-01)"].name = "GFP (01-A-01)"
    viewer.layers["Channel2 (01-A-01)"].name = "DNA"
    # the list follows the names and keeps the ticks
    assert picker.checked_names() == ["GFP (01-A-01)", "DNA"]
    sel = picker.selection(model_channels=["DNA", "GFP"])
    assert sel.channel_names == ["DNA", "GFP"]
