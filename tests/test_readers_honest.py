"""Readers that never guess: damaged or mismatched files are refused, bad pixel sizes are
ignored with a warning, oversized images are refused before allocation or read lazily."""

import time
import warnings

import numpy as np
import pytest
import tifffile

from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.readers import (
    MAX_BYTES_ENV,
    max_image_bytes,
    read_array,
    read_image,
)


@pytest.fixture()
def two_channel(tmp_path):
    arr = np.random.default_rng(0).integers(0, 1000, (2, 64, 64)).astype(np.uint16)
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(path, arr, ome=True, metadata={"axes": "CYX",
                                                    "Channel": {"Name": ["A", "B"]}})
    return path, arr


def _ome_xml(path):
    with tifffile.TiffFile(path) as tif:
        return tif.ome_metadata


def test_two_channel_ome_cut_in_half_is_refused(tmp_path, two_channel):
    path, _ = two_channel
    blob = path.read_bytes()
    cut = tmp_path / "half.ome.tif"
    cut.write_bytes(blob[:len(blob) // 2 + 200])
    with pytest.raises(InputError, match="damaged|truncated|missing"):
        read_image(cut)


def test_ome_declaring_more_planes_than_pages_is_refused(tmp_path, two_channel):
    path, arr = two_channel
    one = tmp_path / "one_of_two.ome.tif"
    tifffile.imwrite(one, arr[0], description=_ome_xml(path).encode(), metadata=None)
    with pytest.raises(InputError, match="OME metadata"):
        read_image(one)
    three = tmp_path / "three.ome.tif"
    tifffile.imwrite(three, arr, metadata=None,
                     description=_ome_xml(path).replace('SizeC="2"', 'SizeC="3"').encode())
    with pytest.raises(InputError, match="OME metadata"):
        read_image(three)


def test_pages_of_different_shapes_are_refused_or_chosen(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(np.zeros((64, 64), np.uint16))
        w.write(np.ones((32, 32), np.uint16))
    with pytest.raises(InputError, match="2 images of different shapes.*series="):
        read_image(path)
    assert read_image(path, series=1).raw.shape == (32, 32)
    assert read_image(path, series=1).raw.max() == 1
    with pytest.raises(InputError, match="series 5 does not exist"):
        read_image(path, series=5)


@pytest.mark.parametrize("value", ["0", "nan", "-0.5", "inf", "abc"])
def test_bad_physical_size_is_ignored_with_a_warning(tmp_path, two_channel, value):
    path, arr = two_channel
    tifffile.imwrite(path, arr, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.5,
                                                    "PhysicalSizeY": 0.5})
    xml = _ome_xml(path).replace('PhysicalSizeX="0.5"', f'PhysicalSizeX="{value}"')
    bad = tmp_path / "bad.ome.tif"
    tifffile.imwrite(bad, arr, description=xml.encode(), metadata=None)
    with pytest.warns(UserWarning, match="PhysicalSizeX.*ignored"):
        img = read_image(bad)
    assert img.pixel_size is None
    np.testing.assert_array_equal(img.data, arr)


def test_good_physical_size_kept_without_warning(tmp_path, two_channel):
    path, arr = two_channel
    tifffile.imwrite(path, arr, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.5,
                                                    "PhysicalSizeY": 0.25})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path).pixel_size == (0.25, 0.5)


def _big_declared(path, side, tile=256):
    """A zlib TIFF declaring side x side uint16 pixels, written tile by tile (all zero,
    so a few KB on disk)."""
    n = (side // tile) ** 2
    tiles = (np.zeros((tile, tile), np.uint16) for _ in range(n))
    tifffile.imwrite(path, tiles, shape=(side, side), dtype=np.uint16, tile=(tile, tile),
                     compression="zlib")


def test_size_limit_refuses_before_allocating(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    _big_declared(path, 2048)  # 8 MiB declared
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"2048 x 2048 uint16.*8.0 MiB.*1.0 MiB limit"):
        read_image(path, max_bytes="1M")
    assert time.perf_counter() - t0 < 1.0
    monkeypatch.setenv(MAX_BYTES_ENV, "2M")
    assert max_image_bytes() == 2 * 1024**2
    with pytest.raises(InputError, match=MAX_BYTES_ENV):
        read_image(path)
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(InputError, match="not a number of bytes"):
        read_image(path)
    monkeypatch.setenv(MAX_BYTES_ENV, "16M")
    assert read_image(path).raw.shape == (2048, 2048)


def test_lazy_read_gives_the_same_pixels(tmp_path, monkeypatch):
    pytest.importorskip("dask")
    import napari_attribution.io.image_data as image_data

    arr = np.random.default_rng(1).integers(0, 4000, (2, 512, 512)).astype(np.uint16)
    path = tmp_path / "lazy.ome.tif"
    tifffile.imwrite(path, arr, ome=True, tile=(128, 128), metadata={"axes": "CYX"})
    monkeypatch.setattr(image_data, "LAZY_ABOVE_BYTES", 1024)
    img = read_image(path, lazy=True, max_bytes="1K")
    assert img.extra["lazy"] and type(img.raw).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(img.data), arr)
    chw = read_array(path, lazy=True)
    assert chw.shape == (2, 512, 512)
    np.testing.assert_array_equal(np.asarray(chw[1, 100:110, 200:210]),
                                  arr[1, 100:110, 200:210])
    assert not read_image(path).extra["lazy"]


def test_batch_reader_claims_only_its_own_stores(tmp_path):
    zarr = pytest.importorskip("zarr")
    from napari_attribution.batch.napari_reader import get_reader

    other = zarr.open_group(str(tmp_path / "image.zarr"), mode="w", zarr_format=2)
    other.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}],
                                   "datasets": [{"path": "0"}]}]
    other.create_array("0", shape=(4, 4), dtype="uint8")
    assert get_reader(str(tmp_path / "image.zarr")) is None  # left to napari-ome-zarr
    assert get_reader(str(tmp_path / "missing.zarr")) is None


# -- OME-Zarr images: whole or refused ------------------------------------------------------

def _ngff_image(path, arr, dataset="0", chunks=(1, 32, 32)):
    """A (C, Y, X) NGFF 0.4 image group whose multiscales name ``dataset``."""
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    if arr is not None:
        g.create_array("0", data=arr, chunks=chunks)
    g.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                   {"name": "y", "type": "space"},
                                   {"name": "x", "type": "space"}],
        "datasets": [{"path": dataset}]}]
    return path


def _bundle(tmp_path, n_channels):
    """A small untrained model bundle (for the command line)."""
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(0)
    return save_bundle(tmp_path / "m.safetensors",
                       DCMIXClassifier(ModelConfig(n_channels, 2, width=8)).eval(),
                       ["dna", "gfp"][:n_channels], ["neg", "pos"],
                       PercentileNormalizer(mode="per_crop"))


def test_ngff_missing_chunks_are_refused_or_filled_with_a_named_warning(tmp_path,
                                                                         monkeypatch, capsys):
    from napari_attribution.io.ngff import FILL_MISSING_ENV, MissingChunksWarning

    monkeypatch.delenv(FILL_MISSING_ENV, raising=False)
    arr = np.random.default_rng(0).integers(1, 4000, (2, 64, 64)).astype(np.uint16)
    path = _ngff_image(tmp_path / "img.ome.zarr", arr)
    np.testing.assert_array_equal(read_image(path).data, arr)  # whole: read as written
    (path / "0" / "1.0.1").unlink()  # channel 1, rows 0-31, columns 32-63
    (path / "0" / "0.1.1").unlink()
    for lazy in (False, True):
        with pytest.raises(InputError, match=r"img.ome.zarr: 2 of the 8 chunks of array "
                                             r"'0' are missing.*fill_missing=True"):
            read_image(path, lazy=lazy)
    with pytest.warns(MissingChunksWarning, match="2 of the 8 chunks of array '0'"):
        img = read_image(path, fill_missing=True)
    expected = arr.copy()
    expected[1, :32, 32:] = 0
    expected[0, 32:, 32:] = 0
    np.testing.assert_array_equal(img.data, expected)
    assert img.extra["missing_chunks"] == 2
    monkeypatch.setenv(FILL_MISSING_ENV, "1")  # the batch workers' way of being told
    with pytest.warns(MissingChunksWarning):
        np.testing.assert_array_equal(np.asarray(read_image(path, lazy=True).data), expected)
    with pytest.raises(InputError, match="are missing"):  # an explicit False wins
        read_image(path, fill_missing=False)
    monkeypatch.delenv(FILL_MISSING_ENV)
    from napari_attribution.cli import main  # explain: exit 2, or the flag and a warning

    args = ["explain", str(_bundle(tmp_path, 2)), str(path), "-o", str(tmp_path / "m.ome.tif"),
            "-m", "saliency", "--no-evidence-check", "--device", "cpu", "-q"]
    capsys.readouterr()
    assert main(args) == 1 and not (tmp_path / "m.ome.tif").exists()
    assert "2 of the 8 chunks of array '0' are missing" in capsys.readouterr().err
    assert main([*args, "--allow-missing-chunks"]) == 0 and (tmp_path / "m.ome.tif").exists()
    out = capsys.readouterr().out
    assert "warning: " in out and "read as the fill value (0)" in out


def test_zarr_declaring_40000_squared_is_refused_quickly(tmp_path, capsys):
    """A few hundred bytes on disk declaring 40000 x 40000 pixels: refused in well under
    a second (missing chunks, or the size limit) with nothing allocated."""
    import tracemalloc

    zarr = pytest.importorskip("zarr")
    from napari_attribution.cli import main

    one = _ngff_image(tmp_path / "one.ome.zarr", None)
    zarr.open_group(str(one), mode="a").create_array(
        "0", shape=(1, 40000, 40000), chunks=(1, 1024, 1024), dtype="uint16")
    two = _ngff_image(tmp_path / "two.ome.zarr", None)
    zarr.open_group(str(two), mode="a").create_array(
        "0", shape=(2, 40000, 40000), chunks=(1, 1024, 1024), dtype="uint16")
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="1600 of the 1600 chunks"):  # 3.0 GiB < 4 GiB
        read_image(one)
    with pytest.raises(InputError, match=r"2 x 40000 x 40000 uint16.*6.0 GiB.*4.0 GiB limit"):
        read_image(two, fill_missing=True)
    with pytest.raises(InputError, match=r"3.0 GiB\), more than the 1.0 GiB limit"):
        read_image(one, fill_missing=True, max_bytes="1G")  # size before chunks
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 20 * 1024**2
    model = _bundle(tmp_path, 1)
    assert main(["explain", str(model), str(one), "-o", str(tmp_path / "m.ome.tif"),
                 "--device", "cpu", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1600 of the 1600 chunks of array '0'" in err
    assert "--allow-missing-chunks" in err and not (tmp_path / "m.ome.tif").exists()


def test_ngff_dataset_paths_must_stay_inside_the_store(tmp_path):
    arr = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    outside = _ngff_image(tmp_path / "secret.ome.zarr", arr)
    store = tmp_path / "store"
    store.mkdir()
    for bad in ("../secret.ome.zarr/0", str(outside / "0"), "0/../../secret.ome.zarr/0"):
        _ngff_image(store / "evil.ome.zarr", None, dataset=bad)
        with pytest.raises(InputError, match=r"dataset path .* points outside the store"):
            read_image(store / "evil.ome.zarr")
    # a link inside the store that leads out is refused as well
    link = _ngff_image(store / "link.ome.zarr", None, dataset="data")
    (link / "data").symlink_to(outside / "0", target_is_directory=True)
    with pytest.raises(InputError, match="leads outside the store"):
        read_image(link)
    ok = _ngff_image(store / "ok.ome.zarr", arr, dataset="./0")
    np.testing.assert_array_equal(read_image(ok).data, arr)
