"""Plate datasets on generated folders: patterns, plate maps, crops, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.study.splits import grouped_split
from napari_attribution.io.plate import (
    Plate,
    normalise_well,
    read_plate_map,
    segment_nuclei,
    take,
)

PATTERN = r"(?P<well>[A-H]\d{2})_s(?P<site>\d)_(?P<channel>w\d)\.tif$"
WELLS = {"A01": ("neg", 0.0, -1), "A02": ("neg", 0.0, -1), "B01": ("pos", 5.0, 1),
         "B02": ("pos", 5.0, 1), "C01": ("", 2.0, 0)}


def _cells(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """A DNA-like image with ``n`` round bright nuclei."""
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(10, 2, (size, size))
    for _ in range(n):
        cy, cx = rng.integers(10, size - 10, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] += 100
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_map(path, wells=WELLS) -> None:
    lines = ["well,class,dose,control"]
    lines += [f"{w},{c},{d},{k}" for w, (c, d, k) in wells.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def plate_dir(tmp_path):
    rng = np.random.default_rng(0)
    for well in WELLS:
        for site in (1, 2):
            dna = _cells(rng, 80, 6)
            tifffile.imwrite(tmp_path / f"{well}_s{site}_w1.tif", dna)
            tifffile.imwrite(tmp_path / f"{well}_s{site}_w2.tif",
                             (rng.random((80, 80)) * 50).astype(np.uint8))
    _write_map(tmp_path / "map.csv")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_normalise_well():
    assert normalise_well("a1") == "A01"
    assert normalise_well("B", "7") == "B07"
    assert normalise_well("H12") == "H12"
    with pytest.raises(InputError, match="well"):
        normalise_well("12")


def test_scan_and_sample_nuclei(plate_dir):
    plate = Plate.scan(plate_dir, PATTERN, {"DNA": "w1", "GFP": "w2"},
                       plate_map=plate_dir / "map.csv")
    assert plate.channel_names == ["DNA", "GFP"]
    assert plate.wells == sorted(WELLS)
    assert len(plate.fields) == 10
    data = plate.sample("nuclei", crop_size=16, per_image=4, nuclei_channel="DNA")
    assert data.class_names == ["neg", "pos"]
    assert data.images.shape[1:] == (2, 16, 16) and data.images.dtype == np.float32
    assert set(data.metadata["well"]) == {"A01", "A02", "B01", "B02"}  # C01 unlabelled
    assert np.all(data.labels == (data.metadata["control"] == 1))
    np.testing.assert_array_equal(data.groups, data.metadata["well"])
    # nuclei crops are centred on a nucleus: the centre pixel lies in the mask mostly
    assert data.masks is not None and data.masks[:, 8, 8].mean() > 0.8
    tr, va = grouped_split(data.labels, data.groups, 0.5, seed=0)
    assert not set(data.groups[tr]) & set(data.groups[va])


def test_sample_grid_random_and_unlabelled(plate_dir):
    plate = Plate.scan(plate_dir, PATTERN, {"DNA": "w1", "GFP": "w2"},
                       plate_map=plate_dir / "map.csv")
    grid = plate.sample("grid", crop_size=40, per_image=None, labelled_only=False,
                        masks=False)
    assert len(grid) == 10 * 4 and grid.masks is None
    lab = grid.metadata["labelled"]
    assert set(grid.metadata["well"][~lab]) == {"C01"}
    assert np.all(grid.metadata["dose"][~lab] == 2.0)
    sub = take(grid, np.flatnonzero(lab))
    assert len(sub) == lab.sum() and sub.metadata["labelled"].all()
    assert np.all(sub.groups == sub.metadata["well"])
    rnd = plate.sample("random", crop_size=20, per_image=3, downsample=2, seed=1)
    assert rnd.images.shape == (8 * 3, 2, 20, 20)
    assert rnd.masks.shape == (24, 20, 20)
    again = plate.sample("random", crop_size=20, per_image=3, downsample=2, seed=1)
    np.testing.assert_array_equal(rnd.images, again.images)


def test_sample_crops_match_field_pixels(plate_dir):
    plate = Plate.scan(plate_dir, PATTERN, {"DNA": "w1", "GFP": "w2"},
                       plate_map=plate_dir / "map.csv")
    data = plate.sample("random", crop_size=24, per_image=2, masks=False, normalization="none")
    i = 3
    fov = [f for f in plate.fields if f.well == data.metadata["well"][i]
           and f.site == data.metadata["site"][i]][0]
    y, x = data.metadata["y"][i], data.metadata["x"][i]
    np.testing.assert_array_equal(data.images[i], plate.read_field(fov)[:, y:y + 24, x:x + 24])
    # the default: each whole field normalised per channel, then cropped
    from napari_attribution.core.data.normalization import PercentileNormalizer

    default = plate.sample("random", crop_size=24, per_image=2, masks=False)
    assert default.metadata["normalization"]["mode"] == "per_field"
    field = PercentileNormalizer("per_field")(plate.read_field(fov))
    np.testing.assert_allclose(default.images[i], field[:, y:y + 24, x:x + 24], atol=1e-6)


@pytest.mark.parametrize("mode", ["per_field", "per_dataset", "per_image", "per_plate"])
def test_sample_normalisation(plate_dir, mode):
    plate = Plate.scan(plate_dir, PATTERN, {"DNA": "w1", "GFP": "w2"},
                       plate_map=plate_dir / "map.csv")
    new = {"per_image": "per_field", "per_plate": "per_dataset"}.get(mode, mode)
    if mode != new:  # old names still work, with a deprecation warning
        with pytest.warns(DeprecationWarning, match=new):
            data = plate.sample("grid", crop_size=40, per_image=None, masks=False,
                                normalization=mode)
    else:
        data = plate.sample("grid", crop_size=40, per_image=None, masks=False,
                            normalization=mode)
    norm = data.metadata["normalization"]
    assert norm["mode"] == new
    raw = plate.sample("grid", crop_size=40, per_image=None, masks=False,
                       normalization="none")
    first = data.metadata["field"] == 0  # the 4 tiles cover field 0 completely
    if new == "per_field":
        for c in range(2):
            lo, hi = np.percentile(data.images[first, c], [1.0, 99.8])
            assert lo == pytest.approx(0, abs=1e-5) and hi == pytest.approx(1, abs=1e-5)
    else:
        lo = np.asarray(norm["lo"], np.float32)[None, :, None, None]
        hi = np.asarray(norm["hi"], np.float32)[None, :, None, None]
        np.testing.assert_allclose(data.images, (raw.images - lo) / (hi - lo), rtol=1e-5,
                                   atol=1e-5)


def test_multichannel_files(tmp_path):
    rng = np.random.default_rng(1)
    for well in ("A01", "A02", "B01", "B02"):
        arr = np.stack([_cells(rng, 64, 5), _cells(rng, 64, 3), _cells(rng, 64, 2)])
        tifffile.imwrite(tmp_path / f"plate_{well}.ome.tif", arr, ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "GFP", "Actin"]}})
    _write_map(tmp_path / "map.csv", {w: WELLS[w] for w in ("A01", "A02", "B01", "B02")})
    plate = Plate.scan(tmp_path, r"plate_(?P<well>[A-H]\d+)\.ome\.tif$",
                       plate_map=tmp_path / "map.csv")
    assert plate.channel_names == ["DNA", "GFP", "Actin"]
    data = plate.sample("grid", crop_size=32, per_image=None)
    assert data.images.shape == (16, 3, 32, 32)


def test_plate_map_with_missing_well(plate_dir):
    wells = dict(WELLS, H12=("pos", 1.0, 1))
    _write_map(plate_dir / "bad.csv", wells)
    with pytest.raises(InputError, match=r"bad\.csv.*H12"):
        Plate.scan(plate_dir, PATTERN, plate_map=plate_dir / "bad.csv")


def test_plate_map_errors(tmp_path):
    (tmp_path / "m.csv").write_text("plate,class\n1,a\n")
    with pytest.raises(InputError, match=r"m\.csv lacks column"):
        read_plate_map(tmp_path / "m.csv")
    (tmp_path / "d.csv").write_text("well,class\nA01,a\nA1,b\n")
    with pytest.raises(InputError, match="twice"):
        read_plate_map(tmp_path / "d.csv")
    with pytest.raises(InputError, match="not found"):
        read_plate_map(tmp_path / "nope.csv")


@pytest.mark.parametrize("sep", [";", "\t"])
def test_plate_maps_separated_by_semicolons_or_tabs(tmp_path, sep):
    """Spreadsheets in many locales save ';'-separated CSV with decimal commas: read the
    same as the ','-separated map (it was a raw TypeError)."""
    (tmp_path / "comma.csv").write_text("well,class,dose,control\nA01,neg,0.5,-1\n"
                                        "B02,pos,12.25,1\nC03,,,\n")
    rows = [["well", "class", "dose", "control"], ["A01", "neg", "0,5", "-1"],
            ["B02", "pos", "12,25", "1"], ["C03", "", "", ""]]
    (tmp_path / "other.csv").write_text("".join(sep.join(r) + "\n" for r in rows))
    ref, got = read_plate_map(tmp_path / "comma.csv"), read_plate_map(tmp_path / "other.csv")
    assert list(got.wells) == ["A01", "B02", "C03"]
    assert got["B02"].dose == 12.25 and got["A01"].control == -1
    assert got["C03"].label is None and np.isnan(got["C03"].dose)
    for w in ref.wells:
        a, b = ref[w], got[w]
        assert (a.label, a.control) == (b.label, b.control)
        assert a.dose == b.dose or (np.isnan(a.dose) and np.isnan(b.dose))


def test_plate_map_rows_longer_than_the_header_are_one_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("well;class\nA01;neg;0,5;oops\n")
    with pytest.raises(InputError, match=r"m\.csv, line 2: 4 fields but the header has 2 "
                                         r"\(columns separated by semicolons"):
        read_plate_map(tmp_path / "m.csv")
    (tmp_path / "short.csv").write_text("well,class,dose\nA01\n")  # trailing cells left out
    assert read_plate_map(tmp_path / "short.csv")["A01"].label is None


def test_wells_with_different_channel_counts(plate_dir, tmp_path):
    (plate_dir / "B02_s2_w2.tif").unlink()
    with pytest.raises(InputError, match=r"B02 site 2 .*B02_s2_w1\.tif.*missing"):
        Plate.scan(plate_dir, PATTERN)
    multi = tmp_path / "multi"
    multi.mkdir()
    tifffile.imwrite(multi / "p_A01.tif", np.zeros((3, 16, 16), np.uint8),
                     photometric="minisblack")
    tifffile.imwrite(multi / "p_A02.tif", np.zeros((2, 16, 16), np.uint8),
                     photometric="minisblack")
    with pytest.raises(InputError, match=r"p_A02\.tif has 2 channel"):
        Plate.scan(multi, r"p_(?P<well>[A-H]\d+)\.tif$")


def test_scan_errors(plate_dir, tmp_path):
    with pytest.raises(InputError, match="named group"):
        Plate.scan(plate_dir, r"(?P<site>\d)")
    with pytest.raises(InputError, match="no file"):
        Plate.scan(plate_dir, r"(?P<well>Z\d\d)x")
    with pytest.raises(InputError, match="not found"):
        Plate.scan(tmp_path / "nope", PATTERN)
    with pytest.raises(InputError, match=r"channel\(s\) \['w9'\]"):
        Plate.scan(plate_dir, PATTERN, {"X": "w9"})
    plate = Plate.scan(plate_dir, PATTERN, plate_map=plate_dir / "map.csv")
    with pytest.raises(InputError, match="crop mode"):
        plate.sample("tiles")
    with pytest.raises(InputError, match="larger than the field"):
        plate.sample("grid", crop_size=200)


def test_segment_nuclei_finds_round_objects():
    img = _cells(np.random.default_rng(3), 96, 0).astype(float)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in [(20, 20), (20, 70), (70, 45)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 120
    lab = segment_nuclei(img)
    assert lab.max() == 3
    assert all(lab[cy, cx] > 0 for cy, cx in [(20, 20), (20, 70), (70, 45)])


def test_sample_holds_one_field_at_a_time(plate_dir, monkeypatch):
    """Crops are copies and each field is released before the next one is read."""
    import gc
    import weakref

    plate = Plate.scan(plate_dir, PATTERN, {"DNA": "w1", "GFP": "w2"},
                       plate_map=plate_dir / "map.csv")
    refs: list[weakref.ref] = []
    alive_at_read: list[int] = []
    original = Plate.read_field

    def tracking(self, fov):
        gc.collect()
        alive_at_read.append(sum(r() is not None for r in refs))
        arr = original(self, fov)
        refs.append(weakref.ref(arr))
        return arr

    monkeypatch.setattr(Plate, "read_field", tracking)
    data = plate.sample("nuclei", crop_size=16, per_image=4, downsample=2)
    gc.collect()
    assert len(refs) == 8 and alive_at_read == [0] * 8
    assert all(r() is None for r in refs)  # no crop keeps its field alive
    assert data.images.base is None or data.images.base.shape[0] == len(data)


def test_iter_crops_scores_unlabelled_wells(plate_dir):
    """Wells without a class (one "class" only) stream as arrays, field by field."""
    plate = Plate.scan(plate_dir, PATTERN, {"DNA": "w1", "GFP": "w2"},
                       plate_map=plate_dir / "map.csv")
    with pytest.raises(InputError, match="one class"):
        plate.sample("grid", crop_size=40, per_image=None, wells=["C01"], labelled_only=False)
    out = list(plate.iter_crops("grid", crop_size=40, per_image=None, wells=["C01"],
                                masks=False))
    assert [(fc.fov.well, fc.fov.site) for fc in out] == [("C01", "1"), ("C01", "2")]
    assert all(fc.images.shape == (4, 2, 40, 40) and fc.masks is None for fc in out)
    assert out[0].info.dose == 2.0 and out[0].info.label is None
    assert out[1].corners == [(0, 0), (0, 40), (40, 0), (40, 40)]
