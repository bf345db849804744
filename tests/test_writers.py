"""Writers round-trip: data and metadata equal after reading back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_attribution.core.channels.importance import ChannelImportance
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.writers import (
    read_attribution_tiff,
    read_importance_csv,
    write_attribution_tiff,
    write_channel_weights_tiff,
    write_importance_csv,
)


def _importance() -> ChannelImportance:
    return ChannelImportance(
        channel_names=["GFP", "DNA"], weights=np.array([[0.8, 0.2]]),
        head_effect=np.array([1.0]), overall=np.array([0.8, 0.2]),
        ablation_accuracy_drop=np.array([0.4, 0.01]),
        ablation_loss_increase=np.array([0.9, 0.05]), baseline_accuracy=0.93)


@pytest.mark.parametrize("shape,names,axes", [
    ((12, 10), None, "YX"),
    ((3, 12, 10), None, "QYX"),
    ((2, 12, 10), ["GFP", "DNA"], "CYX"),
    ((3, 2, 12, 10), ["GFP", "DNA"], "QCYX"),
])
def test_attribution_tiff_round_trip(tmp_path, shape, names, axes):
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    prov = {"method": "pcim", "target": 1, "params": {"steps": 50, "lr": 0.1},
            "model_sha256": "ab" * 32, "channel_names": names, "normalization": {"mode": "x"}}
    path = write_attribution_tiff(tmp_path / "maps.tif", maps, names, prov, pixel_size=0.65)
    assert path.name == "maps.ome.tif"
    back, meta = read_attribution_tiff(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, maps)
    assert meta["axes"] == axes
    assert meta["channel_names"] == names
    assert meta["pixel_size"] == [0.65, 0.65]
    for k, v in prov.items():
        assert meta["provenance"][k] == v
    assert "package_version" in meta["provenance"] and "written" in meta["provenance"]


def test_attribution_tiff_is_plain_ome(tmp_path):
    """Other OME readers see channel names and pixel size (not only our JSON)."""
    import tifffile

    from napari_attribution.io.readers import read_image

    maps = np.ones((2, 8, 8), np.float32)
    path = write_attribution_tiff(tmp_path / "a", maps, ["GFP", "DNA"], pixel_size=(0.5, 0.25))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert 'Name="GFP"' in tif.ome_metadata
    img = read_image(path)
    assert img.channel_names == ["GFP", "DNA"]
    assert img.pixel_size == (0.5, 0.25)


def test_attribution_tiff_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="channel names"):
        write_attribution_tiff(tmp_path / "a", np.zeros((3, 2, 4, 4)), ["a"])
    with pytest.raises(InputError, match="numeric"):
        write_attribution_tiff(tmp_path / "a", np.array([["a"]]))
    with pytest.raises(InputError, match="2 to 4"):
        write_attribution_tiff(tmp_path / "a", np.zeros(5))


def test_channel_weights_tiff_round_trip(tmp_path):
    imp = _importance()
    path = write_channel_weights_tiff(tmp_path / "w.ome.tif", imp, {"model_sha256": "x"})
    arr, meta = read_attribution_tiff(path)
    assert arr.shape == (1, 2, 1, 1)
    np.testing.assert_allclose(arr[:, :, 0, 0], imp.weights)
    assert meta["channel_names"] == ["GFP", "DNA"]
    again = ChannelImportance.from_dict(meta["provenance"]["channel_importance"])
    np.testing.assert_allclose(again.overall, imp.overall)
    assert meta["provenance"]["method"] == "DCMIX"


def test_importance_csv_round_trip(tmp_path):
    imp = _importance()
    path = write_importance_csv(tmp_path / "imp.csv", imp, provenance={"model": "m"})
    rows = read_importance_csv(path)
    assert [r["channel"] for r in rows] == ["GFP", "DNA"]
    for got, want in zip(rows, imp.rows(), strict=True):
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert got[k] == pytest.approx(v) if isinstance(v, float) else got[k] == v
    side = json.loads((tmp_path / "imp.provenance.json").read_text())
    assert side["model"] == "m"


def test_importance_csv_from_mapping(tmp_path):
    path = write_importance_csv(tmp_path / "i.csv", {"a": 0.25, "b": 0.75})
    assert read_importance_csv(path) == [{"channel": "a", "importance": 0.25},
                                         {"channel": "b", "importance": 0.75}]


def test_overlay_figure_png(tmp_path):
    from matplotlib.image import imread

    from napari_attribution.io.figures import save_overlay_figure

    rng = np.random.default_rng(0)
    images = rng.random((2, 2, 24, 24)).astype(np.float32)
    maps = rng.random((2, 24, 24)).astype(np.float32)
    masks = np.zeros((2, 24, 24), bool)
    masks[:, 8:16, 8:16] = True
    path = save_overlay_figure(tmp_path / "fig.png", images, maps, ["GFP", "DNA"],
                               titles=["a", "b"], masks=masks, dpi=50)
    png = imread(path)
    # 3 columns (2 channels + overlay) by 2 rows at 2.2 inch x 50 dpi each
    assert png.shape[1] == int(3 * 2.2 * 50) and png.shape[0] == int((2 * 2.2 + 0.3) * 50)
    assert png[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(InputError, match="do not match"):
        save_overlay_figure(tmp_path / "bad.png", images, maps[:, :10])
    with pytest.raises(InputError, match="'colormap'"):
        save_overlay_figure(tmp_path / "bad.png", images, maps, colormap="gray")
    from napari_attribution.io.figures import OverlayStyle

    styled = save_overlay_figure(tmp_path / "styled.png", images, maps,
                                 style=OverlayStyle(dpi=40), overlay_channel=1)
    assert imread(styled).shape[1] == int(3 * 2.2 * 40)
