"""Per-object labels on plates: object tables (CellProfiler columns too), marker rules,
label images made elsewhere, and the errors for objects that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_attribution.cli import main
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.study.splits import split_dataset
from napari_attribution.io.plate import Plate, parse_label_rule
from plate_factory import PATTERN, disc_labels, marker_plate

CH = ["DNA", "PH3", "BODY"]


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    """One well, 4 fields x 25 nuclei, 5 of them (5 %) bright in PH3."""
    return marker_plate(tmp_path_factory.mktemp("ph3"))


def _table(path, truth, header=("well", "site", "x", "y", "label"), well="B02"):
    lines = [",".join(header)]
    for (site, y, x), pos in truth.items():
        lines.append(f"{well},{site},{x},{y},{'mitotic' if pos else 'interphase'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_object_table_centres_crops_and_labels_them(marked, tmp_path):
    root, truth = marked
    plate = Plate.scan(root, PATTERN, CH)
    data = plate.sample(objects=_table(tmp_path / "o.csv", truth), crop_size=24, masks=False)
    assert data.class_names == ["interphase", "mitotic"]
    assert len(data) == 100 and int(data.labels.sum()) == 5
    md = data.metadata
    got = {(int(s), int(y) + 12, int(x) + 12): bool(lab) for s, y, x, lab in
           zip(md["site"], md["y"], md["x"], data.labels, strict=True)}
    inner = {k: v for k, v in truth.items() if 12 <= k[1] < 116 and 12 <= k[2] < 116}
    assert inner and all(got[k] == v for k, v in inner.items())  # centred, labelled right
    assert md["objects"].endswith("o.csv") and md["split_by"] == "field"


def test_cellprofiler_columns_are_recognised(marked, tmp_path):
    root, truth = marked
    header = ("Metadata_Well", "Metadata_Site", "Nuclei_Location_Center_X",
              "Nuclei_Location_Center_Y", "Phenotype")
    path = _table(tmp_path / "cp.csv", truth, header)
    plate = Plate.scan(root, PATTERN, CH)
    with pytest.raises(InputError, match="label"):  # Phenotype is not a standard name
        plate.sample(objects=path, crop_size=24, masks=False)
    data = plate.sample(objects=path, objects_columns="label=Phenotype", crop_size=24,
                        masks=False)
    assert len(data) == 100 and int(data.labels.sum()) == 5
    # the same through the command line, with the mapping
    out = tmp_path / "m.safetensors"
    assert main(["train", "--plate", str(root), "--pattern", PATTERN, "--channels",
                 ",".join(CH), "--objects", str(path), "--objects-columns",
                 "label=Phenotype", "--crop-size", "24", "--epochs", "1", "--device", "cpu",
                 "-q", "-o", str(out)]) == 0
    from napari_attribution.io.bundle import load_bundle

    b = load_bundle(out)
    assert b.class_names == ["interphase", "mitotic"]
    assert b.provenance["data"]["objects"].endswith("cp.csv")


def test_object_table_by_file_and_bad_objects(marked, tmp_path):
    root, truth = marked
    plate = Plate.scan(root, PATTERN, CH)
    rows = ["file,x,y,label"] + [f"B02_s{s}_DNA.tif,{x},{y},{'m' if p else 'i'}"
                                 for (s, y, x), p in truth.items()]
    (tmp_path / "f.csv").write_text("\n".join(rows) + "\n")
    data = plate.sample(objects=tmp_path / "f.csv", crop_size=24, masks=False)
    assert len(data) == 100 and data.class_names == ["i", "m"]

    (tmp_path / "out.csv").write_text("well,site,x,y,label\nB02,1,10,10,a\nB02,1,300,20,b\n")
    with pytest.raises(InputError, match="outside their image.*x=300"):
        plate.sample(objects=tmp_path / "out.csv", crop_size=24, masks=False)
    (tmp_path / "gone.csv").write_text("well,site,x,y,label\nB02,1,10,10,a\nC03,1,9,9,b\n"
                                       "B02,7,9,9,b\n")
    with pytest.raises(InputError, match="2 object.*line 3 \\(well C03 site 1\\)"):
        plate.sample(objects=tmp_path / "gone.csv", crop_size=24, masks=False)
    (tmp_path / "cols.csv").write_text("w,x,y,label\nB02,1,1,a\n")
    with pytest.raises(InputError, match="--objects-columns"):
        plate.sample(objects=tmp_path / "cols.csv", crop_size=24, masks=False)


def test_marker_rule_finds_the_rare_class(marked):
    root, truth = marked
    plate = Plate.scan(root, PATTERN, CH)
    data = plate.sample(label_rule="PH3>otsu", crop_size=24, masks=False)
    md = data.metadata
    assert data.class_names == ["PH3 negative", "PH3 positive"]
    assert len(data) == 100 and int(data.labels.sum()) == 5  # exactly the 5 % marked
    assert md["label_rule"] == "PH3>otsu" and md["normalization"]["mode"] == "per_field"
    pos_means = md["object_mean"][data.labels == 1]
    assert pos_means.min() > md["label_threshold"] > md["object_mean"][data.labels == 0].max()
    # a stratified split: the rare class is in training and validation
    tr, va = split_dataset(data, 0.2, seed=0)
    assert set(data.labels[va]) == {0, 1} and set(data.labels[tr]) == {0, 1}
    assert not set(data.groups[tr]) & set(data.groups[va])
    # the rule through the command line, no plate map needed
    assert parse_label_rule("PH3 > 250", CH).threshold == 250.0
    with pytest.raises(InputError, match="no channel"):
        parse_label_rule("GFP>otsu", CH)
    with pytest.raises(InputError, match="CHANNEL>otsu"):
        parse_label_rule("PH3 is high", CH)


def test_label_images_replace_the_builtin_segmentation(marked, tmp_path):
    root, truth = marked
    plate = Plate.scan(root, PATTERN, CH)
    # squares elsewhere than the nuclei: crops must follow the given labels, not Otsu
    lab = np.zeros((128, 128), np.int32)
    lab[30:40, 30:40], lab[80:90, 60:70] = 1, 2
    labels = {("B02", s): lab for s in range(1, 5)}
    out = list(plate.iter_crops(labels=labels, crop_size=24))
    assert len(out) == 4 and all(fc.corners == [(22, 22), (72, 52)] for fc in out)
    assert all(fc.masks[:, 12, 12].all() for fc in out)
    # the same through sample(), recorded, with labels by a rule on the given objects
    data = plate.sample(labels=labels, crop_size=24, label_rule="PH3>otsu", masks=False)
    assert data.metadata["segmentation"] == "label images given per field"
    # from files in a folder, matched by a pattern
    lab_dir = tmp_path / "labels"
    lab_dir.mkdir()
    for s in range(1, 5):
        tifffile.imwrite(lab_dir / f"B02_s{s}_cp_masks.tif",
                         disc_labels(np.array([[64, 64]]), 128, 6).astype(np.uint16))
    files = list(plate.iter_crops(labels=lab_dir, crop_size=24,
                                  labels_pattern=r"(?P<well>[A-H]\d\d)_s(?P<site>\d)"))
    assert [fc.corners for fc in files] == [[(52, 52)]] * 4
    with pytest.raises(InputError, match="64x64 but the field of view is 128x128"):
        list(plate.iter_crops(labels={("B02", 1): lab[:64, :64]}, crop_size=24))
    with pytest.raises(InputError, match="no label image for well B02 site 2"):
        list(plate.iter_crops(labels={("B02", 1): lab}, crop_size=24))


def test_crop_geometry_from_the_nucleus_size(marked):
    from napari_attribution.core.data.segmentation import crop_geometry

    root, _ = marked
    plate = Plate.scan(root, PATTERN, CH)
    data = plate.sample(label_rule="PH3>otsu", masks=False)
    md = data.metadata
    assert 11 < md["nucleus_diameter"] < 14  # discs of radius 6
    assert (md["crop_size"], md["downsample"]) == crop_geometry(md["nucleus_diameter"])
    assert crop_geometry(15.7) == (48, 2)  # BBBC013's nuclei: the crops it was tuned on
    assert crop_geometry(18.0) == (56, 2) and crop_geometry(40.0) == (48, 5)
