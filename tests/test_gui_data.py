"""Getting data in: channel files by name pattern, stain colours, channel axis detection,
the active layer's group as default, combining layers, crop browsing, layout."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("isolated_qt_settings")]
RNG = np.random.default_rng(0)


def test_split_channel_and_stain_colours():
    from napari_attribution._reader import split_channel
    from napari_attribution.layer_style import stain_colormap

    assert split_channel("Channel1-01-A-01") == ("01-A-01", "Channel1")
    assert split_channel("plate_B03_s2_w1DAPI") == ("plate_B03_s2", "w1DAPI")
    assert split_channel("well_A01_GFP") == ("well_A01", "GFP")
    assert split_channel("overview") == ("overview", None)
    assert stain_colormap("Hoechst 33342") == "blue"
    assert stain_colormap("w1DAPI") == "blue"
    assert stain_colormap("GFP") == "green"
    assert stain_colormap("Phalloidin-568") == "red"
    assert stain_colormap("MitoTracker") == "yellow"
    assert stain_colormap("ER") == "cyan" and stain_colormap("merge") != "cyan"
    assert [stain_colormap(f"x{i}", i) for i in range(3)] == ["green", "magenta", "cyan"]


def test_channel_files_become_one_image_per_well(tmp_path):
    import tifffile

    from napari_attribution._reader import read_layers

    rng = np.random.default_rng(0)
    paths = []
    for well in ("01-A-01", "02-A-02"):
        for ch in ("Channel1", "Channel2"):
            p = tmp_path / f"{ch}-{well}.tif"
            tifffile.imwrite(p, rng.random((16, 16), dtype=np.float32))
            paths.append(str(p))
    layers = read_layers(paths)
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["Channel1 (01-A-01)", "Channel2 (01-A-01)", "Channel1 (02-A-02)",
                     "Channel2 (02-A-02)"]
    assert [kw["metadata"]["channel"] for _, kw, _ in layers] == ["Channel1", "Channel2"] * 2
    assert layers[0][1]["metadata"]["image_id"] == "01-A-01"
    single = read_layers(paths[1])  # one file opened alone still gets its channel name
    assert single[0][1]["metadata"]["channel"] == "Channel2"
    assert single[0][1]["metadata"]["image_id"] == "01-A-01"


def test_picker_defaults_to_the_active_group_and_matches_names(make_napari_viewer):
    from napari_attribution._qt._layers import ChannelPicker

    viewer = make_napari_viewer()
    for well in ("A01", "A02"):
        for ch in ("GFP", "DNA"):
            viewer.add_image(RNG.random((8, 8), dtype=np.float32), name=f"{ch} ({well})",
                             metadata={"channel": ch, "image_id": well})
    viewer.layers.selection.active = viewer.layers["DNA (A02)"]
    picker = ChannelPicker(viewer)
    assert picker.checked_names() == ["GFP (A02)", "DNA (A02)"]  # not every layer
    sel = picker.selection(model_channels=["DNA", "GFP"])  # model order, by name
    assert sel.channel_names == ["DNA", "GFP"]
    np.testing.assert_array_equal(sel.images[0, 0], viewer.layers["DNA (A02)"].data)
    assert [ly.name for ly in sel.layers] == ["DNA (A02)", "GFP (A02)"]  # channel order


def test_selection_names_only_the_layers_the_model_uses(make_napari_viewer):
    """A ticked layer that is none of the model's channels (a plain image of the same
    shape added later) is not part of the run: not in its source layers, provenance or
    result-layer key, so a rerun replaces its result instead of adding a second one."""
    from napari_attribution._qt._layers import ChannelPicker

    viewer = make_napari_viewer()
    for ch in ("GFP", "DNA"):
        viewer.add_image(RNG.random((3, 8, 8), dtype=np.float32), name=ch)
    picker = ChannelPicker(viewer)
    viewer.add_image(RNG.random((3, 8, 8), dtype=np.float32), name="notes")
    picker.set_checked(["GFP", "DNA", "notes"])
    sel = picker.selection(model_channels=["DNA", "GFP"])
    assert [ly.name for ly in sel.layers] == ["DNA", "GFP"]
    assert sel.images.shape == (3, 2, 8, 8)


def test_channel_axis_is_detected(make_napari_viewer):
    from napari_attribution._qt._layers import ChannelPicker

    viewer = make_napari_viewer()
    cyx = RNG.random((3, 16, 16), dtype=np.float32)
    viewer.add_image(cyx, name="cyx")
    picker = ChannelPicker(viewer)
    sel = picker.selection()
    assert sel.images.shape == (1, 3, 16, 16) and sel.channel_axis == 0
    viewer2 = make_napari_viewer()
    nczyx = RNG.random((12, 2, 16, 16), dtype=np.float32)
    viewer2.add_image(nczyx, name="stack", metadata={"channel_names": ["GFP", "DNA"]})
    sel = ChannelPicker(viewer2).selection(model_channels=["DNA", "GFP"])
    assert sel.images.shape == (12, 2, 16, 16) and sel.channel_axis == 1
    np.testing.assert_array_equal(sel.images[:, 0], nczyx[:, 1])


def test_combine_layers(make_napari_viewer, errors):
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.ones((4, 8, 8), np.float32), name="DNA")
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="GFP")
    w = TrainWidget(viewer)
    w.picker.set_checked(["DNA", "GFP"])
    layer = w.combine()
    assert errors == [] and layer.data.shape == (2, 4, 8, 8)
    assert layer.metadata["channel_names"] == ["DNA", "GFP"]
    w.picker.refresh()
    w.picker.set_checked([layer.name])
    sel = w.picker.selection()
    assert sel.channel_names == ["DNA", "GFP"] and sel.images.shape == (4, 2, 8, 8)


def test_crop_browsing_and_control_jumps(make_napari_viewer, errors):
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    meta = {"labels": [0, 1, 0, 1, 0], "class_names": ["cytoplasmic", "nuclear"],
            "well": ["A01", "A02", "B01", "B02", "C01"], "site": [1, 1, 2, 1, 1],
            "control": [-1, 1, 0, 1, -1], "y": [0] * 5, "x": [0] * 5, "source": "plate"}
    for ch in ("GFP", "DNA"):
        viewer.add_image(RNG.random((5, 8, 8), dtype=np.float32), name=ch,
                         metadata={**meta, "channel": ch})
    w = TrainWidget(viewer)
    viewer.dims.set_current_step(0, 2)
    w._show_crop()
    assert "crop 2" in w.crop_info.text() and "well B01" in w.crop_info.text()
    assert "cytoplasmic" in w.crop_info.text()
    assert w.jump_to_control(1, 1) == 3
    assert viewer.dims.current_step[0] == 3 and "positive control" in w.crop_info.text()
    assert w.jump_to_control(1, 1) == 1  # wraps around
    assert w.jump_to_control(-1, 1) == 4 and "negative control" in w.crop_info.text()
    assert errors == []


def test_per_object_labels_from_points(make_napari_viewer, errors):
    from napari_attribution._qt import TrainWidget

    viewer = make_napari_viewer()
    stack = np.zeros((2, 2, 64, 64), np.float32)
    stack[1, 0, 40:44, 10:14] = 1.0  # a bright object in image 1, channel 0
    for c, name in enumerate(("GFP", "DNA")):
        viewer.add_image(stack[:, c], name=name)
    pts = np.array([[1, 42, 12], [0, 5, 60], [1, 30, 30]], float)
    viewer.add_points(pts, features={"class": ["bright", "dark", "dark"]}, name="objects")
    w = TrainWidget(viewer)
    w.picker.set_checked(["GFP", "DNA"])
    w.objects.setCurrentText("objects")
    w.object_size.setValue(16)
    data, _ = w.dataset()
    assert data.images.shape == (3, 2, 16, 16)
    assert data.class_names == ["bright", "dark"] and data.labels.tolist() == [0, 1, 1]
    assert data.images[0, 0].sum() == 16.0  # the object is inside its crop
    assert data.images[1].shape == (2, 16, 16) and data.images[2, 0].sum() == 0
    assert w.classes() == ["bright", "dark"] and errors == []
