"""Inputs you can trust: large fields region by region, OME-Zarr images and HCS plates."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_attribution.batch import BatchConfig, records_from_plate, run_batch  # noqa: E402
from napari_attribution.batch.records import (  # noqa: E402
    check_records,
    open_record,
    read_record,
    records_from_ngff_plate,
)
from napari_attribution.core.runtime.errors import InputError  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402
from ngff_rules import check_plate  # noqa: E402
from test_batch import CHANNELS, PATTERN, make_bundle, write_plate  # noqa: E402

PCIM = {"pcim": {"steps": 3}}


def config(**kw):
    return BatchConfig(methods=["pcim"], params=PCIM, device="cpu", batch_size=8, **kw)


def run(records, bundle, out, cfg):
    return run_generator(run_batch(records, bundle, out, cfg, n_workers=1, processes=False))


def write_ngff_image(group, arr, labels):
    """A (C, Y, X) NGFF 0.4 image group with omero channel labels."""
    group.create_array("0", data=arr, chunks=(1, 32, 32))
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": "image",
        "axes": [{"name": "c", "type": "channel"},
                 {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.5, 0.5]}]}]}]
    group.attrs["omero"] = {"channels": [{"label": n, "color": "FFFFFF"} for n in labels]}


def write_ngff_plate(path, fields, labels=CHANNELS):
    """An NGFF HCS plate: ``fields`` maps 'A/1' -> list of (C, Y, X) arrays."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    wells = list(fields)
    rows = sorted({w.split("/")[0] for w in wells})
    cols = sorted({w.split("/")[1] for w in wells}, key=int)
    root.attrs["plate"] = {
        "version": "0.4", "name": "test", "field_count": max(map(len, fields.values())),
        "rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in cols],
        "wells": [{"path": w, "rowIndex": rows.index(w.split("/")[0]),
                   "columnIndex": cols.index(w.split("/")[1])} for w in wells]}
    for w, images in fields.items():
        row, col = w.split("/")
        well = root.require_group(row).require_group(col)
        well.attrs["well"] = {"version": "0.4",
                              "images": [{"path": str(i)} for i in range(len(images))]}
        for i, arr in enumerate(images):
            write_ngff_image(well.require_group(str(i)), arr, labels)
    return path


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("model") / "model.safetensors")


@pytest.fixture(scope="module")
def big_plate(tmp_path_factory):
    """Two wells, one 96x80 field each (the 'large' fields of these tests)."""
    root = write_plate(tmp_path_factory.mktemp("big"), wells=("A01", "B01"), sites=(1,),
                       size=96, seed=3)
    from napari_attribution.io.plate import Plate

    return records_from_plate(Plate.scan(root, PATTERN, CHANNELS))


# -- large fields, region by region ---------------------------------------------------------

def test_one_region_equals_the_in_memory_path(tmp_path, big_plate, bundle_path):
    """A region as large as the field: same percentiles, forward pass and maps as the
    whole-field path, so the two stores hold the same numbers."""
    whole = run(big_plate, bundle_path, tmp_path / "whole.zarr", config(input_size=32))
    region = run(big_plate, bundle_path, tmp_path / "region.zarr",
                 config(input_size=32, regions=True, region_size=96))
    a, b = whole.open(), region.open()
    np.testing.assert_allclose(b.probabilities(), a.probabilities(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.targets(), a.targets())
    np.testing.assert_allclose(b.maps("pcim")[:], a.maps("pcim")[:], rtol=1e-4, atol=1e-5)
    assert b.meta["payload_summary"]["regions"] == {"region_size": 96}
    assert "regions" not in a.meta["payload_summary"]  # old runs keep their fingerprint


def test_many_regions_cover_the_field_and_stay_close(tmp_path, big_plate, bundle_path):
    whole = run(big_plate, bundle_path, tmp_path / "whole.zarr",
                config(input_size=32, per_channel=True)).open()
    store = run(big_plate, bundle_path, tmp_path / "region.zarr",
                config(input_size=32, per_channel=True, regions=True,
                       region_size=40)).open()
    maps, ref = store.maps("pcim")[:], whole.maps("pcim")[:]
    assert maps.shape == ref.shape == (2, 2, 96, 96)
    assert np.isfinite(maps).all()  # every region written (the array is NaN-filled)
    share = store.channel_share()[:, 0]
    np.testing.assert_allclose(share.sum(1), 1.0, rtol=1e-5)
    mass = np.abs(maps).sum((2, 3))
    np.testing.assert_allclose(share, mass / mass.sum(1, keepdims=True), rtol=1e-4)
    # probabilities: an area-weighted mean over 3x3 regions, not one pass over the field
    np.testing.assert_allclose(store.probabilities().sum(1), 1.0, rtol=1e-5)
    assert np.abs(store.probabilities() - whole.probabilities()).max() < 0.25
    for i in range(2):  # same maps up to tile layout near region borders
        r = np.corrcoef(maps[i].ravel(), ref[i].ravel())[0, 1]
        assert r > 0.8, r


def test_auto_regions_open_large_fields_lazily(tmp_path, big_plate, bundle_path,
                                               monkeypatch):
    import dask.array as da

    from napari_attribution.batch import regions
    from napari_attribution.io import image_data

    monkeypatch.setattr(image_data, "LAZY_ABOVE_BYTES", 1000)
    monkeypatch.setattr(regions, "LARGE_FIELD_BYTES", 1000)
    arr = open_record(big_plate[0])
    assert isinstance(arr, da.Array) and arr.shape == (2, 96, 96)
    np.testing.assert_array_equal(np.asarray(arr), read_record(big_plate[0]))
    store = run(big_plate, bundle_path, tmp_path / "auto.zarr",
                config(input_size=32, region_size=48)).open()
    assert store.meta["payload_summary"]["regions"] == {"region_size": 48}
    assert store.done_mask().all() and np.isfinite(store.maps("pcim")[:]).all()
    # maps of big fields are chunked, not one chunk per field
    chunks = json.loads((store.path / store.meta["fields"][0] / "0" / ".zarray").read_text())
    assert chunks["chunks"] == [1, 96, 96]  # at most MAP_CHUNK: one chunk here


def test_downsampled_one_region_equals_the_in_memory_path(tmp_path, big_plate, bundle_path):
    whole = run(big_plate, bundle_path, tmp_path / "whole.zarr",
                config(input_size=32, downsample=2)).open()
    region = run(big_plate, bundle_path, tmp_path / "region.zarr",
                 config(input_size=32, downsample=2, regions=True, region_size=48)).open()
    np.testing.assert_allclose(region.probabilities(), whole.probabilities(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(region.maps("pcim")[:], whole.maps("pcim")[:], rtol=1e-4,
                               atol=1e-5)


def test_windows_are_block_averaged_band_by_band():
    import dask.array as da

    from napari_attribution.batch.regions import read_window
    from napari_attribution.io.plate import block_mean

    a = np.random.default_rng(0).integers(0, 1000, (2, 1003, 999)).astype(np.uint16)
    lazy = da.from_array(a, chunks=(1, 128, 128))
    for f in (1, 3, 4):
        full = block_mean(a.astype(np.float32), f) if f > 1 else a.astype(np.float32)
        np.testing.assert_allclose(read_window(lazy, f, 10, 200, 5, 150),
                                   full[:, 10:200, 5:150], rtol=1e-6)


def test_field_percentiles_from_a_subsample(monkeypatch):
    from napari_attribution.batch import regions

    rng = np.random.default_rng(0)
    img = np.stack([rng.gamma(2.0, 50.0, (300, 200)), rng.normal(10, 2, (300, 200))])
    monkeypatch.setattr(regions, "SAMPLE_PIXELS", 6000)  # every 8th pixel in y and x
    lo, hi = regions.field_percentiles(img, 1, (300, 200), 64, 1.0, 99.8)
    exact = np.percentile(img.reshape(2, -1), [1.0, 99.8], axis=1)
    np.testing.assert_allclose(lo, exact[0], rtol=0.1)
    np.testing.assert_allclose(hi, exact[1], rtol=0.1)
    assert regions.region_grid(100, 70, 40) == [(0, 40, 0, 40), (0, 40, 40, 70),
                                                (40, 80, 0, 40), (40, 80, 40, 70),
                                                (80, 100, 0, 40), (80, 100, 40, 70)]


def test_napari_reader_gives_dask_layers_for_large_tiffs(tmp_path, monkeypatch):
    import dask.array as da
    import tifffile

    from napari_attribution._reader import read_layers
    from napari_attribution.io import image_data

    arr = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)
    tifffile.imwrite(tmp_path / "big.tif", arr, tile=(32, 32), metadata={"axes": "CYX"})
    monkeypatch.setattr(image_data, "LAZY_ABOVE_BYTES", 1000)
    layers = read_layers(str(tmp_path / "big.tif"))
    assert len(layers) == 2 and all(isinstance(d, da.Array) for d, _, _ in layers)
    np.testing.assert_array_equal(np.asarray(layers[1][0][10:20, 5:9]), arr[1, 10:20, 5:9])
    # a large lazy image opens as a pyramid (napari would load a single-scale plane whole)
    import napari.layers

    from napari_attribution import _reader
    from napari_attribution._qt._layers import full_data

    monkeypatch.setattr(_reader, "MULTISCALE_ABOVE", 16)
    monkeypatch.setattr(_reader, "PYRAMID_TOP", 16)
    data, kw, _ = read_layers(str(tmp_path / "big.tif"))[0]
    assert kw["multiscale"] and [d.shape for d in data] == [(64, 64), (32, 32), (16, 16)]
    assert isinstance(data[0], da.Array)
    np.testing.assert_array_equal(np.asarray(data[2]), arr[0, ::4, ::4])
    np.testing.assert_array_equal(data[1][3:7, 2:5], arr[0, ::2, ::2][3:7, 2:5])
    # coarse levels are read without napari's chunk cache: it keeps nothing of them
    from dask.cache import Cache

    cache = Cache(1e9)
    cache.register()
    try:
        np.asarray(data[1])
        np.asarray(data[2][:8])
    finally:
        cache.unregister()
    assert cache.cache.total_bytes == 0
    layer = napari.layers.Image(data, multiscale=True, contrast_limits=(0, 8191))
    np.testing.assert_array_equal(np.asarray(full_data(layer)), arr[0])  # what widgets use
    monkeypatch.setattr(image_data, "LAZY_ABOVE_BYTES", 10**9)
    assert all(isinstance(d, np.ndarray) for d, _, _ in read_layers(str(tmp_path / "big.tif")))


# -- OME-Zarr images in plates, NGFF HCS plates as batch input ----------------------------

def test_plate_of_ome_zarr_images(tmp_path, bundle_path):
    from napari_attribution.io.plate import Plate, probe_channels
    from napari_attribution.io.readers import read_image

    rng = np.random.default_rng(1)
    arrays = {}
    for well in ("A01", "B01"):
        arr = rng.integers(0, 4000, (2, 48, 48)).astype(np.uint16)
        g = zarr.open_group(str(tmp_path / f"{well}_s1.ome.zarr"), mode="w", zarr_format=2)
        write_ngff_image(g, arr, ["dna", "gfp"])
        arrays[well] = arr
    img = read_image(tmp_path / "A01_s1.ome.zarr")
    assert img.channel_names == ["dna", "gfp"] and img.pixel_size == (0.5, 0.5)
    np.testing.assert_array_equal(img.data, arrays["A01"])
    assert probe_channels(tmp_path / "A01_s1.ome.zarr") == 2
    plate = Plate.scan(tmp_path, r"(?P<well>[A-H]\d{2})_s(?P<site>\d+)\.ome\.zarr$")
    assert plate.channel_names == ["dna", "gfp"] and plate.wells == ["A01", "B01"]
    np.testing.assert_array_equal(plate.read_field(plate.fields[1]), arrays["B01"])
    records = records_from_plate(plate)
    result = run(records, bundle_path, tmp_path / "out.zarr", config())
    store = result.open()
    from napari_attribution.io.bundle import load_bundle

    ref = load_bundle(bundle_path).predict_proba(np.stack(list(arrays.values())).astype(
        np.float32))
    np.testing.assert_allclose(store.probabilities(), ref, rtol=1e-5, atol=1e-6)


def test_plate_formats_without_bioio_plugin_name_what_to_install(tmp_path):
    pytest.importorskip("bioio")
    from napari_attribution.io.plate import Plate

    (tmp_path / "A01_s1.czi").write_bytes(b"not really a CZI file")
    with pytest.raises(InputError, match="bioio-czi"):
        Plate.scan(tmp_path, r"(?P<well>[A-H]\d{2})_s(?P<site>\d+)\.czi$")


def test_ngff_hcs_plate_records_and_batch_cli(tmp_path, bundle_path, capsys):
    from napari_attribution.cli import main
    from napari_attribution.io.bundle import load_bundle

    rng = np.random.default_rng(2)
    fields = {w: [rng.integers(0, 3000, (2, 40, 40)).astype(np.uint16) for _ in range(n)]
              for w, n in (("A/1", 2), ("A/3", 1), ("B/1", 1))}
    plate = write_ngff_plate(tmp_path / "plate.zarr", fields)
    records = records_from_ngff_plate(plate)
    assert [r.id for r in records] == ["A01_f0", "A01_f1", "A03_f0", "B01_f0"]
    assert all(r.channel_names == ("dna", "gfp") for r in records)
    np.testing.assert_array_equal(read_record(records[1]), fields["A/1"][1])
    out = tmp_path / "result.zarr"
    assert main(["batch", str(plate), "--model", str(bundle_path), "-o", str(out),
                 "--method", "pcim", "--param", "pcim:steps=3", "--workers", "1",
                 "--threads", "--device", "cpu", "-q"]) == 0
    from napari_attribution.batch import open_result

    store = open_result(out)
    assert store.done_mask().all() and [r.id for r in store.records] == \
        [r.id for r in records]
    raw = np.stack([a for images in fields.values() for a in images]).astype(np.float32)
    np.testing.assert_allclose(store.probabilities(), load_bundle(bundle_path)
                               .predict_proba(raw), rtol=1e-5, atol=1e-6)
    assert sorted(check_plate(out)) == ["A/1/0", "A/1/1", "A/3/0", "B/1/0"]
    from napari_attribution.batch.napari_reader import read_batch_store

    layers = {kw["name"]: data for data, kw, _ in read_batch_store(str(out))}
    assert set(layers) == {"plate dna", "plate gfp", "pcim"}
    np.testing.assert_array_equal(np.asarray(layers["plate gfp"][1]), fields["A/1"][1][1])
    assert layers["pcim"].shape == (4, 40, 40)
    rows = (tmp_path / "result.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[1].split(",")[1:3] == ["A01_f0", "A01"]
    assert main(["batch", str(plate), "--model", str(bundle_path), "-o", str(out),
                 "--pattern", "x", "-q"]) != 0
    assert "is an OME-Zarr plate" in capsys.readouterr().err


def test_broken_ngff_plates_give_clear_errors(tmp_path):
    plate = write_ngff_plate(tmp_path / "p.zarr", {"A/1": [np.zeros((2, 8, 8), np.uint16)]})
    (plate / "A" / "1" / ".zattrs").write_text("{}")
    with pytest.raises(InputError, match="lists no field images"):
        records_from_ngff_plate(plate)
    with pytest.raises(InputError, match="not an OME-Zarr HCS plate"):
        records_from_ngff_plate(plate / "A")


def test_ngff_plate_fields_with_missing_chunks_are_refused_or_allowed(tmp_path, bundle_path,
                                                                      capsys, monkeypatch):
    from napari_attribution.cli import main
    from napari_attribution.io.ngff import FILL_MISSING_ENV, MissingChunksWarning

    monkeypatch.delenv(FILL_MISSING_ENV, raising=False)
    rng = np.random.default_rng(4)
    fields = {w: [rng.integers(1, 3000, (2, 64, 64)).astype(np.uint16)]
              for w in ("A/1", "B/1")}
    plate = write_ngff_plate(tmp_path / "holes.zarr", fields)
    (plate / "B" / "1" / "0" / "0" / "1.1.0").unlink()  # chunks (1, 32, 32): 8 per field
    records = records_from_ngff_plate(plate)  # listing reads no chunk
    with pytest.raises(InputError, match=r"1 image\(s\) have missing chunks \(1 in all\): "
                                         r"B01_f0 \(.*holes.zarr/B/1/0\) \(1 of 8 chunks\)"):
        check_records(records)
    out = tmp_path / "out.zarr"
    args = ["batch", str(plate), "--model", str(bundle_path), "-o", str(out), "--workers",
            "1", "--threads", "--device", "cpu", "-q"]
    assert main(args) == 1  # refused before any work: no store
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(1 of 8 chunks)" in err and not out.exists()
    with pytest.warns(MissingChunksWarning, match="B01_f0"):
        check_records(records, fill_missing=True)
    assert main([*args, "--allow-missing-chunks"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("warning: ") and "chunks" in line]
    assert len(printed) == 2 and "1 image(s) have missing chunks" in printed[0]  # the plan
    assert "1 of the 8 chunks of array '0'" in printed[1]  # the worker reading the field
    assert FILL_MISSING_ENV not in os.environ
    from napari_attribution.batch import open_result
    from napari_attribution.io.bundle import load_bundle

    filled = fields["B/1"][0].copy()
    filled[1, 32:, :32] = 0
    ref = load_bundle(bundle_path).predict_proba(
        np.stack([fields["A/1"][0], filled]).astype(np.float32))
    np.testing.assert_allclose(open_result(out).probabilities(), ref, rtol=1e-5, atol=1e-6)


def test_ngff_plate_paths_must_stay_inside_the_plate(tmp_path):
    arr = np.ones((2, 8, 8), np.uint16)
    plate = write_ngff_plate(tmp_path / "p.zarr", {"A/1": [arr]})
    write_ngff_plate(tmp_path / "other.zarr", {"A/1": [arr * 7]})
    attrs = json.loads((plate / ".zattrs").read_text())
    attrs["plate"]["wells"][0]["path"] = "../other.zarr/A/1"
    (plate / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError, match="not row/column"):
        records_from_ngff_plate(plate)
    attrs["plate"]["wells"][0]["path"] = "../1"
    (plate / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError, match=r"well path '\.\./1' .* points outside"):
        records_from_ngff_plate(plate)
    attrs["plate"]["wells"][0]["path"] = "A/1"
    (plate / ".zattrs").write_text(json.dumps(attrs))
    well = json.loads((plate / "A" / "1" / ".zattrs").read_text())
    well["well"]["images"][0]["path"] = "../../../other.zarr/A/1/0"
    (plate / "A" / "1" / ".zattrs").write_text(json.dumps(well))
    with pytest.raises(InputError, match="field path .* points outside"):
        records_from_ngff_plate(plate)
