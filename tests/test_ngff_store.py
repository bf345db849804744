"""The batch store as standard OME-Zarr: NGFF metadata from ome-zarr-models, validated by
its validators, opened as a plate by napari-ome-zarr, claimed by our reader only when we
wrote it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("ome_zarr_models", reason="ome-zarr-models (batch extra) not installed")

from napari_attribution.batch import ngff  # noqa: E402
from napari_attribution.batch.records import ImageRecord  # noqa: E402
from napari_attribution.batch.store import ATTR, BatchStore, map_rows, run_payload  # noqa: E402
from napari_attribution.core.runtime.errors import InputError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from ngff_rules import check_plate  # noqa: E402

CHANNELS = ["dna", "gfp"]
METHODS = {"pcim": {"steps": 3}, "saliency": {}}
# wells with a gap (no A/2, no B/1) and an unequal number of fields
WELLS = [("A01", 2), ("A03", 1), ("B02", 2)]
H, W = 12, 10


def _records() -> list[ImageRecord]:
    return [ImageRecord(f"{w}_s{s}", w, str(s), (f"/nowhere/{w}_s{s}.tif",))
            for w, n in WELLS for s in range(1, n + 1)]


def _maps(i: int, per_channel: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    shape = (len(CHANNELS), H, W) if per_channel else (H, W)
    return {m: rng.normal(size=shape).astype(np.float32) for m in METHODS}


def write_store(path: Path, per_channel: bool = True, complete: bool = True
                ) -> tuple[BatchStore, list[dict[str, np.ndarray]]]:
    """A small finished store written through BatchStore (no model needed)."""
    records = _records()
    payload = run_payload("0" * 64, records, METHODS, per_channel, None, (H, W),
                          downsample=2)
    store = BatchStore.create(path, payload=payload, records=records,
                              channel_names=CHANNELS, class_names=["neg", "pos"],
                              provenance={"test": True})
    written = []
    for i in range(len(records)):
        maps = _maps(i, per_channel)
        store.write_image(i, np.array([0.3, 0.7]), maps, {m: 1 for m in METHODS}, 0.1)
        written.append(maps)
    if complete:
        store.mark_complete({})
    return store, written


def _planes(maps: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([m if m.ndim == 3 else m[None] for m in maps.values()])


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ngff") / "plate.zarr"
    write_store(path)
    return path


def test_store_validates_as_ngff_hcs_plate(store_path):
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v04.hcs import HCS
    from ome_zarr_models.v04.image import Image
    from ome_zarr_models.v04.well import Well

    hcs = ngff.validate_store(store_path)
    assert isinstance(hcs, HCS)
    plate = hcs.attributes.plate
    assert [r.name for r in plate.rows] == ["A", "B"]
    assert [c.name for c in plate.columns] == ["1", "2", "3"]
    assert [w.path for w in plate.wells] == ["A/1", "A/3", "B/2"]
    assert [(w.rowIndex, w.columnIndex) for w in plate.wells] == [(0, 0), (0, 2), (1, 1)]
    assert plate.field_count == 2
    wells = list(hcs.well_groups)
    assert [w.n_images for w in wells] == [n for _, n in WELLS]
    labels = [m if c is None else f"{m} {c}" for m, c in map_rows(list(METHODS), CHANNELS)]
    for well in wells:
        for image in well.images:
            (ms,) = image.attributes.multiscales
            types = [a.type for a in ms.axes]
            assert types == ["channel", "space", "space"]  # one channel axis: NGFF-legal
            assert ms.datasets[0].coordinateTransformations[0].scale == [1.0, 2.0, 2.0]
            assert [ch.label for ch in image.attributes.omero.channels] == labels
    # every level opens on its own with the library's generic entry point
    assert isinstance(open_ome_zarr(str(store_path / "A/3"), version="0.4"), Well)
    image = open_ome_zarr(str(store_path / "B/2/1"), version="0.4")
    assert isinstance(image, Image)
    assert image.attributes.model_extra[ATTR]["image_index"] == 4
    # the independent check of the 0.4 rules agrees
    assert check_plate(store_path) == {f: [len(labels), H, W] for f in
                                       ["A/1/0", "A/1/1", "A/3/0", "B/2/0", "B/2/1"]}


def test_display_windows_come_from_the_maps(tmp_path):
    path = tmp_path / "w.zarr"
    store, written = write_store(path, complete=False)
    first = json.loads((path / "A/1/0/.zattrs").read_text())["omero"]["channels"]
    assert all((c["window"]["start"], c["window"]["end"]) == ngff.DEFAULT_WINDOW
               for c in first)
    store.mark_complete({})
    want = [ngff.map_window(p) for p in _planes(written[0])]
    for field in ("A/1/0", "B/2/1"):
        attrs = json.loads((path / field / ".zattrs").read_text())
        got = [(c["window"]["start"], c["window"]["end"]) for c in attrs["omero"]["channels"]]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert attrs[ATTR]["image_id"] == store.records[store.meta["fields"].index(field)].id
    assert all(hi > lo for lo, hi in want)
    ngff.validate_store(path)
    assert not list(path.rglob("*.partial"))


def test_single_map_per_method_store_validates(tmp_path):
    path = tmp_path / "single.zarr"
    write_store(path, per_channel=False)
    hcs = ngff.validate_store(path)
    image = next(next(hcs.well_groups).images)
    assert [c.label for c in image.attributes.omero.channels] == list(METHODS)


def _edit(path: Path, rel: str, change) -> None:
    f = path / rel / ".zattrs"
    attrs = json.loads(f.read_text())
    change(attrs)
    f.write_text(json.dumps(attrs))


CORRUPTIONS = {
    "well outside the rows": ("", lambda a: a["plate"]["wells"][0].update(path="Z/1")),
    "row name not alphanumeric": ("", lambda a: a["plate"]["rows"][0].update(name="A-")),
    "one space axis": ("A/1/0", lambda a: a["multiscales"][0]["axes"].pop(1)),
    "scale of the wrong length": (
        "A/1/0", lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
        .update(scale=[1.0, 2.0])),
    "two channel-or-custom axes on a 3-d array": (
        "A/1/0", lambda a: a["multiscales"][0]["axes"].insert(
            0, {"name": "m", "type": "method"})),
    "omero channel without window": (
        "B/2/1", lambda a: a["omero"]["channels"][0].pop("window")),
    "well lists a missing field": ("A/3", lambda a: a["well"]["images"].append({"path": "7"})),
    "no plate": ("", lambda a: a.pop("plate")),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_corrupt_metadata_fails_validation(tmp_path, store_path, what):
    import shutil

    path = tmp_path / "bad.zarr"
    shutil.copytree(store_path, path)
    ngff.validate_store(path)  # the copy is valid
    rel, change = CORRUPTIONS[what]
    _edit(path, rel, change)
    with pytest.raises(InputError, match="NGFF"):
        ngff.validate_store(path)


def test_second_channel_or_custom_axis_is_refused(tmp_path, store_path):
    """NGFF 0.4 allows one channel-or-custom axis; ome-zarr-models counts channel and
    custom axes separately, so validate_store adds the rule: a (method, channel, y, x)
    field that the library accepts is refused."""
    import shutil

    import zarr
    from ome_zarr_models.v04.image import Image

    path = tmp_path / "4d.zarr"
    shutil.copytree(store_path, path)
    zarray = path / "A/1/0/0/.zarray"
    meta = json.loads(zarray.read_text())
    meta["shape"] = [2, 2, H, W]
    meta["chunks"] = [2, 2, H, W]
    zarray.write_text(json.dumps(meta))

    def four_d(a):
        ms = a["multiscales"][0]
        ms["axes"].insert(0, {"name": "m", "type": "method"})
        ms["datasets"][0]["coordinateTransformations"][0]["scale"].insert(0, 1.0)
    _edit(path, "A/1/0", four_d)
    Image.from_zarr(zarr.open_group(str(path / "A/1/0"), mode="r"))  # the library: fine
    with pytest.raises(InputError, match="one channel-or-custom axis"):
        ngff.validate_store(path)


def test_library_validator_itself_rejects_a_bad_plate(tmp_path, store_path):
    """Not only our wrapper: the library's HCS model refuses the corrupt plate."""
    import shutil

    import zarr
    from ome_zarr_models.v04.hcs import HCS

    path = tmp_path / "bad.zarr"
    shutil.copytree(store_path, path)
    HCS.from_zarr(zarr.open_group(str(path), mode="r"))
    _edit(path, "", lambda a: a["plate"]["wells"][0].update(path="Z/1"))
    with pytest.raises(ValueError, match="not in list of rows"):
        HCS.from_zarr(zarr.open_group(str(path), mode="r"))


def test_missing_library_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ome_zarr_models.v04.hcs", None)
    with pytest.raises(InputError, match=r"ome-zarr-models.*napari-attribution\[batch\]"):
        write_store(tmp_path / "none.zarr")
    assert not (tmp_path / "none.zarr").exists()


# -- napari: napari-ome-zarr opens the plate, our reader only our stores ------------------

def _ome_zarr_reader():
    pytest.importorskip("napari_ome_zarr",
                        reason="napari-ome-zarr (ngff-viewer extra) not installed")
    from napari_ome_zarr._reader import napari_get_reader

    return napari_get_reader


def test_napari_ome_zarr_opens_the_store_as_a_plate_of_maps(tmp_path):
    napari_get_reader = _ome_zarr_reader()
    path = tmp_path / "plate.zarr"
    store, written = write_store(path)
    reader = napari_get_reader(str(path))
    assert reader is not None
    (layer,) = reader()
    pyramid, meta, kind = layer
    assert kind == "image"
    labels = [f"{m} {c}" for m in METHODS for c in CHANNELS]
    assert meta["channel_axis"] == 0 and meta["name"] == labels
    assert meta["scale"] == [2.0, 2.0]  # map pixels on the plate images' pixel grid
    # the first field of every well tiled into a rows x columns grid (empty wells zero)
    grid = np.asarray(pyramid[0])
    assert grid.shape == (len(labels), 2 * H, 3 * W)
    fields = store.meta["fields"]
    for well, r, c in [("A/1", 0, 0), ("A/3", 0, 2), ("B/2", 1, 1)]:
        tile = grid[:, r * H:(r + 1) * H, c * W:(c + 1) * W]
        np.testing.assert_array_equal(tile, _planes(written[fields.index(f"{well}/0")]))
    np.testing.assert_array_equal(grid[:, :H, W:2 * W], 0)  # A/2 holds no well
    want = [list(ngff.map_window(p)) for p in _planes(written[0])]
    assert np.allclose(meta["contrast_limits"], want)


def test_napari_ome_zarr_opens_one_field(tmp_path, store_path):
    napari_get_reader = _ome_zarr_reader()
    (layer,) = napari_get_reader(str(store_path / "B/2/1"))()
    pyramid, meta, _ = layer
    store = BatchStore.open(store_path)
    np.testing.assert_array_equal(np.asarray(pyramid[0]),
                                  _planes(_maps(4, per_channel=True)))
    assert np.asarray(pyramid[0])[0].tolist() == store.maps("pcim")[4][0].tolist()
    assert meta["channel_axis"] == 0


def test_our_reader_claims_only_stores_we_wrote(tmp_path, store_path):
    import shutil

    from napari_attribution.batch.napari_reader import get_reader

    assert get_reader(str(store_path)) is not None
    assert get_reader([str(store_path)]) is not None
    # the same plate without our attribute block is someone else's OME-Zarr ...
    other = tmp_path / "other.zarr"
    shutil.copytree(store_path, other)
    _edit(other, "", lambda a: a.pop(ATTR))
    ngff.validate_store(other)  # ... still a valid plate
    assert get_reader(str(other)) is None
    # a block with another format, a field of our store, a folder that is no Zarr
    _edit(other, "", lambda a: a.update({ATTR: {"format": "something-else"}}))
    assert get_reader(str(other)) is None
    assert get_reader(str(store_path / "A/1/0")) is None
    assert get_reader(str(store_path / "A/1")) is None
    (tmp_path / "empty.zarr").mkdir()
    assert get_reader(str(tmp_path / "empty.zarr")) is None
    # ... which napari-ome-zarr then opens
    napari_get_reader = _ome_zarr_reader()
    (layer,) = napari_get_reader(str(other))()
    assert np.asarray(layer[0][0]).shape == (4, 2 * H, 3 * W)


def _plugins(*names: str):
    npe2 = pytest.importorskip("npe2")
    _ome_zarr_reader()
    pm = npe2.PluginManager.instance()
    pm.discover()
    missing = [n for n in names if n not in pm._manifests]
    if missing:
        pytest.skip(f"plugins not installed (entry points): {missing}")
    return pm


def test_npe2_hands_each_store_to_the_right_plugin(tmp_path, store_path):
    """Both plugins offer ``*.zarr``; ours reads only its stores, napari-ome-zarr reads the
    same store as a plate, and a foreign plate only through napari-ome-zarr."""
    import shutil

    from npe2 import io_utils

    from napari_attribution._reader import get_reader as tiff_reader

    _plugins("napari-attribution", "napari-ome-zarr")
    assert tiff_reader(str(store_path)) is None
    ours = io_utils.read([str(store_path)], plugin_name="napari-attribution", stack=False)
    assert [kw["name"] for _, kw, _ in ours] == [f"{m} {c}" for m in METHODS
                                                  for c in CHANNELS]
    (plate,) = io_utils.read([str(store_path)], plugin_name="napari-ome-zarr", stack=False)
    assert plate[1]["name"] == [kw["name"] for _, kw, _ in ours]
    other = tmp_path / "other.zarr"
    shutil.copytree(store_path, other)
    _edit(other, "", lambda a: a.pop(ATTR))
    with pytest.raises(ValueError):
        io_utils.read([str(other)], plugin_name="napari-attribution", stack=False)
    (plate,) = io_utils.read([str(other)], plugin_name="napari-ome-zarr", stack=False)
    assert np.asarray(plate[0][0]).shape == (4, 2 * H, 3 * W)


@pytest.mark.gui
def test_napari_opens_the_store_as_a_plate_with_napari_ome_zarr(make_napari_viewer,
                                                                 store_path):
    _plugins("napari-ome-zarr")
    viewer = make_napari_viewer()
    layers = viewer.open(str(store_path), plugin="napari-ome-zarr")
    names = [f"{m} {c}" for m in METHODS for c in CHANNELS]
    assert [layer.name for layer in layers] == names
    data = [layer.data[0] if layer.multiscale else layer.data for layer in layers]
    assert all(d.shape == (2 * H, 3 * W) for d in data)
    assert all(tuple(layer.scale) == (2.0, 2.0) for layer in layers)
    store = BatchStore.open(store_path)  # well A/1, field 0 is the top-left tile
    np.testing.assert_array_equal(np.asarray(data[1][:H, :W]), store.maps("pcim")[0][1])


@pytest.mark.parametrize("shape,chunks,step", [((2, 37, 53), (2, 8, 16), 3),
                                                ((1, 64, 64), (1, 16, 16), 16),
                                                ((3, 10, 9), (3, 10, 9), 4),
                                                ((1, 20, 20), (1, 7, 5), 1)])
def test_strided_sample_reads_chunk_by_chunk_and_equals_a_strided_read(
        tmp_path, shape, chunks, step):
    import zarr

    from napari_attribution.batch.store import strided_sample

    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=shape, chunks=chunks,
                            dtype="float32")
    arr[:] = values
    reads = []

    class Counting:  # records each read's extent
        shape, chunks, dtype = arr.shape, arr.chunks, arr.dtype

        def __getitem__(self, key):
            reads.append(key)
            return arr[key]

    out = strided_sample(Counting(), step)
    np.testing.assert_array_equal(out, values[:, ::step, ::step])
    for _, ys, xs in reads:  # no read spans more than one chunk
        assert ys.start // chunks[1] == (ys.stop - 1) // chunks[1]
        assert xs.start // chunks[2] == (xs.stop - 1) // chunks[2]
