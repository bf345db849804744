"""Readers on generated files: every supported axis order, OME metadata, bad files,
and the npe2 reader/writer hooks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.readers import read_channel_files, read_image

RNG = np.random.default_rng(0)
CYX = RNG.integers(0, 4000, (3, 20, 24)).astype(np.uint16)
NAMES = ["DNA", "GFP", "Actin"]


def _ome(path, arr, axes, names=None, size=None):
    if axes == "YXC":  # OME stores channel-last data as RGB-style samples
        tifffile.imwrite(path, arr.astype(np.uint8), ome=True, photometric="rgb",
                         metadata={"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size})
        return path
    meta = {"axes": axes}
    if names:
        meta["Channel"] = {"Name": names}
    if size:
        meta.update(PhysicalSizeX=size, PhysicalSizeY=size, PhysicalSizeXUnit="µm",
                    PhysicalSizeYUnit="µm")
    tifffile.imwrite(path, arr, ome=True, metadata=meta, photometric="minisblack")
    return path


@pytest.mark.parametrize("axes", ["CYX", "ZCYX", "TCYX", "YXC"])
def test_ome_axis_orders(tmp_path, axes):
    if axes == "CYX":
        arr, expect = CYX, CYX
    elif axes == "YXC":
        arr, expect = np.moveaxis(CYX, 0, -1), CYX
    else:
        arr = np.stack([CYX, CYX + 1])  # (2, C, Y, X)
        expect = np.moveaxis(arr, 1, 0)  # (C, 2, Y, X)
    path = _ome(tmp_path / "img.ome.tif", np.ascontiguousarray(arr), axes, NAMES, 0.325)
    img = read_image(path, channel_names=NAMES if axes == "YXC" else None)
    if axes == "YXC":
        expect = expect.astype(np.uint8)
    assert img.channel_names == NAMES
    assert img.pixel_size == pytest.approx((0.325, 0.325))
    assert img.axes == ("C" + axes.replace("C", "").replace("YX", "") + "YX")
    np.testing.assert_array_equal(img.data, expect)
    chw = img.as_chw("max")
    np.testing.assert_array_equal(chw, expect if expect.ndim == 3 else expect.max(1))
    if expect.ndim == 4:
        np.testing.assert_array_equal(img.as_chw(0), expect[:, 0])
        with pytest.raises(InputError, match="outside"):
            img.as_chw(5)


def test_plain_tiffs(tmp_path):
    # plain multi-page TIFF: pages are channels
    tifffile.imwrite(tmp_path / "pages.tif", CYX, photometric="minisblack")
    img = read_image(tmp_path / "pages.tif")
    np.testing.assert_array_equal(img.data, CYX)
    assert img.channel_names == ["ch0", "ch1", "ch2"] and img.pixel_size is None
    # channel-last samples (RGB-like), with names supplied by the caller
    tifffile.imwrite(tmp_path / "rgb.tif", np.moveaxis(CYX, 0, -1).astype(np.uint8),
                     photometric="rgb")
    img = read_image(tmp_path / "rgb.tif", channel_names=NAMES)
    np.testing.assert_array_equal(img.data, CYX.astype(np.uint8))
    assert img.channel_names == NAMES
    # explicit axes override an ambiguous layout
    tifffile.imwrite(tmp_path / "yxc.tif", np.moveaxis(CYX, 0, -1)[..., :2].copy(),
                     photometric="minisblack", planarconfig="contig")
    img = read_image(tmp_path / "yxc.tif", axes="YXC")
    np.testing.assert_array_equal(img.data, CYX[:2])
    # a single 2-D image is one channel
    tifffile.imwrite(tmp_path / "2d.tif", CYX[0])
    assert read_image(tmp_path / "2d.tif").data.shape == (1, 20, 24)


def test_imagej_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", CYX[None].astype(np.uint16), imagej=True,
                     resolution=(1 / 0.5, 1 / 0.5), metadata={"axes": "ZCYX", "unit": "um"})
    img = read_image(tmp_path / "ij.tif")
    assert img.pixel_size == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(img.data, CYX)


def test_one_file_per_channel(tmp_path):
    paths = []
    for c, name in enumerate(NAMES):
        paths.append(tmp_path / f"{name}.tif")
        tifffile.imwrite(paths[-1], CYX[c])
    img = read_channel_files(paths)
    assert img.channel_names == NAMES
    np.testing.assert_array_equal(img.data, CYX)
    tifffile.imwrite(tmp_path / "small.tif", CYX[0, :10])
    with pytest.raises(InputError, match=r"small\.tif has shape"):
        read_channel_files(paths[:1] + [tmp_path / "small.tif"])
    with pytest.raises(InputError, match=r"pages\.tif holds 3 channels"):
        tifffile.imwrite(tmp_path / "pages.tif", CYX, photometric="minisblack")
        read_channel_files([paths[0], tmp_path / "pages.tif"])


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, CYX, photometric="minisblack")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.tif"):
        read_image(path)


@pytest.mark.parametrize("dtype", [np.complex64, np.float16])
def test_unsupported_dtype(tmp_path, dtype):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, CYX.astype(dtype), photometric="minisblack")
    with pytest.raises(InputError, match=r"odd\.tif: pixel type"):
        read_image(path)


def test_not_a_tiff_and_missing(tmp_path):
    (tmp_path / "x.tif").write_text("hello, not a tiff")
    with pytest.raises(InputError, match=r"x\.tif as TIFF"):
        read_image(tmp_path / "x.tif")
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="axes"):
        tifffile.imwrite(tmp_path / "ok.tif", CYX, photometric="minisblack")
        read_image(tmp_path / "ok.tif", axes="CYXZ")


def test_napari_reader_hook(tmp_path):
    from napari_attribution._reader import get_reader

    path = _ome(tmp_path / "img.ome.tif", np.stack([CYX, CYX]), "ZCYX", NAMES, 0.5)
    assert get_reader(str(tmp_path / "a.png")) is None
    layers = get_reader(str(path))(str(path))
    assert [m["name"] for _, m, _ in layers] == NAMES
    assert [m["colormap"] for _, m, _ in layers] == ["blue", "green", "red"]
    data, meta, kind = layers[1]
    assert kind == "image" and data.shape == (2, 20, 24)
    assert meta["scale"] == [1.0, 0.5, 0.5] and meta["blending"] == "additive"
    np.testing.assert_array_equal(data, np.stack([CYX, CYX])[:, 1])
    files = []
    for c in range(3):
        files.append(str(tmp_path / f"c{c}.tif"))
        tifffile.imwrite(files[-1], CYX[c])
    layers = get_reader(files)(files)
    assert [m["name"] for _, m, _ in layers] == ["c0", "c1", "c2"]


def test_napari_writer_hook_round_trip(tmp_path):
    from napari_attribution._reader import read_layers
    from napari_attribution._writer import write_attribution_layer
    from napari_attribution.io.writers import read_attribution_tiff

    maps = RNG.random((4, 16, 16)).astype(np.float32)
    meta = {"name": "PCIM maps", "scale": [1.0, 0.4, 0.4],
            "metadata": {"provenance": {"method": "pcim", "targets": [1, 0, 1, 1]}}}
    [out] = write_attribution_layer(str(tmp_path / "maps.ome.tif"), maps, meta)
    arr, info = read_attribution_tiff(out)
    np.testing.assert_array_equal(arr, maps)
    assert info["provenance"]["method"] == "pcim" and info["pixel_size"] == [0.4, 0.4]
    assert info["provenance"]["layer_name"] == "PCIM maps"
    # reopening through the reader hook gives one heat-map layer carrying the record
    [(data, lmeta, kind)] = read_layers(out)
    np.testing.assert_array_equal(data, maps)
    assert lmeta["colormap"] == "inferno"
    assert lmeta["metadata"]["attribution"]["provenance"]["targets"] == [1, 0, 1, 1]
    # and writing that layer again keeps the provenance
    [again] = write_attribution_layer(str(tmp_path / "again.ome.tif"), data, lmeta)
    assert read_attribution_tiff(again)[1]["provenance"]["method"] == "pcim"


def test_manifest_declares_reader_and_writer():
    from pathlib import Path

    from npe2 import PluginManifest

    import napari_attribution

    mf = PluginManifest.from_file(Path(napari_attribution.__file__).with_name("napari.yaml"))
    assert any(r.command.endswith("get_reader") for r in mf.contributions.readers)
    assert any(w.command.endswith("write_attribution") for w in mf.contributions.writers)


def test_reader_layers_are_valid_napari_layers(tmp_path):
    """The layer tuples build real napari layers (no viewer or display needed)."""
    from napari.layers import Layer

    from napari_attribution._reader import read_layers

    path = _ome(tmp_path / "img.ome.tif", CYX, "CYX", NAMES, 0.65)
    layers = [Layer.create(*t) for t in read_layers(str(path))]
    assert [ly.name for ly in layers] == NAMES
    assert [ly.colormap.name for ly in layers] == ["blue", "green", "red"]
    np.testing.assert_allclose(layers[0].scale, [0.65, 0.65])
    assert layers[2].blending == "additive"
