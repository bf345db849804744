"""Plates the default path used to get wrong: one well per class, per-field normalisation,
the held-out unit and the warnings that come with it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_attribution.cli import main
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.plate import Plate
from plate_factory import PATTERN, nfkb_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return nfkb_pair(tmp_path_factory.mktemp("nfkb"), size=160, n=24)


def test_one_well_per_class_falls_back_to_half_fields_with_a_warning(pair):
    import napari_attribution as na

    plate = Plate.scan(pair, PATTERN, ["DNA", "NFKB"], plate_map=pair / "map.csv")
    data = plate.sample(masks=False)
    md = data.metadata
    assert md["split_by"] == "half" and md["normalization"]["mode"] == "per_field"
    assert len(md["warnings"]) == 1 and "not by well" in md["warnings"][0]
    assert "TNF (1 well: A01)" in md["warnings"][0]
    # crops never cross the cut: each lies wholly left or right of the field's middle
    full = md["crop_size"] * md["downsample"]
    side = np.array([g[-1] for g in data.groups])
    assert set(side) == {"L", "R"}
    assert np.all(np.where(side == "L", md["x"] + full <= 80, md["x"] >= 80))
    assert md["dropped_crossing_crops"] > 0
    res = na.train(data, epochs=1, device="cpu", ablation_check=False, cv=1)
    val_classes = set(data.labels[res.val_index].tolist())
    assert val_classes == {0, 1} and set(data.labels[res.train_index].tolist()) == {0, 1}
    assert not set(data.groups[res.val_index]) & set(data.groups[res.train_index])
    # the split warning is kept (a caution with its own code); alarms come first
    assert set(md["warnings"]) <= set(res.provenance()["warnings"])
    codes = {f.code: f.severity for f in res.findings}
    assert codes["split-not-by-well"] == "caution"
    assert codes["design-class-is-well"] == "alarm"
    assert res.findings[0].severity == "alarm"
    assert any("class and well coincide" in w for w in res.warnings)
    assert res.normalizer.mode == "per_field"


def test_cli_default_path_warns_and_stores_the_warning(pair, tmp_path, capsys):
    from napari_attribution.io.bundle import load_bundle

    out = tmp_path / "m.safetensors"
    args = ["train", "--plate", str(pair), "--pattern", PATTERN, "--channels", "DNA,NFKB",
            "--plate-map", str(pair / "map.csv"), "--epochs", "1", "--device", "cpu", "-q",
            "--cv", "1", "-o", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "held out by half" in text and "split by half, not by well" in text
    b = load_bundle(out)
    assert b.normalizer.mode == "per_field"
    assert any("not by well" in w for w in b.provenance["warnings"])
    assert b.provenance["data"]["split_by"] == "half"
    assert b.provenance["data"]["geometry"].startswith("from the median nucleus diameter")
    groups = b.provenance["validation_groups"]
    assert {g[:3] for g in groups} == {"A01", "A02"}  # both classes validated

    # a split by well cannot validate both classes: a clear error with the remedy
    assert main([*args, "--overwrite", "--split-by", "well"]) == 1
    err = capsys.readouterr().err
    assert "out of" in err and "--split-by" in err and "Traceback" not in err
    # quadrants work too
    assert main([*args, "--overwrite", "--split-by", "quadrant", "--crop-size", "24",
                 "--downsample", "2"]) == 0
    assert "held out by quadrant" in capsys.readouterr().out


def test_val_wells_and_bad_split_options(tmp_path):
    import napari_attribution as na

    root = nfkb_pair(tmp_path / "a", size=96, n=10)
    # add a second well per class
    nfkb_pair(tmp_path / "b", size=96, n=10, seed=1)
    for p in (tmp_path / "b").glob("A0*_s1_*.tif"):
        p.rename(root / p.name.replace("A01", "B01").replace("A02", "B02"))
    (root / "map.csv").write_text("well,class\nA01,TNF\nA02,ctrl\nB01,TNF\nB02,ctrl\n")
    plate = na.load_plate(root, PATTERN, channels=["DNA", "NFKB"], plate_map=root / "map.csv")
    data = plate.sample(crop_size=24, downsample=2, masks=False)
    assert data.metadata["split_by"] == "well" and data.metadata["warnings"] == []
    fixed = plate.sample(crop_size=24, downsample=2, masks=False, val_wells=["b1", "B02"])
    assert fixed.metadata["val_groups"] == ["B01", "B02"]
    res = na.train(fixed, epochs=1, device="cpu", ablation_check=False)
    assert set(fixed.metadata["well"][res.val_index]) == {"B01", "B02"}
    with pytest.raises(InputError, match="whole wells"):
        plate.sample(crop_size=24, downsample=2, masks=False, val_wells=["B01"],
                     split_by="half")
    with pytest.raises(InputError, match="no crops"):
        plate.sample(crop_size=24, downsample=2, masks=False, val_wells=["H12"])
    with pytest.raises(InputError, match="split unit"):
        plate.sample(crop_size=24, downsample=2, masks=False, split_by="plate")


def test_plate_map_class_without_images_is_an_error(tmp_path):
    root = nfkb_pair(tmp_path, size=96, n=10)
    plate = Plate.scan(root, PATTERN, ["DNA", "NFKB"], plate_map=root / "map.csv")
    with pytest.raises(InputError, match="TNF.*no crops|no crops"):
        plate.sample(crop_size=24, downsample=2, masks=False, wells=["A02"],
                     class_names=["TNF", "ctrl"])
    (root / "map2.csv").write_text("well,class\nA01,TNF\nA02,ctrl\nC05,other\n")
    with pytest.raises(InputError, match="no image"):
        Plate.scan(root, PATTERN, plate_map=root / "map2.csv")


def test_crops_too_large_for_a_spatial_split(tmp_path):
    root = nfkb_pair(tmp_path, size=96, n=10)
    plate = Plate.scan(root, PATTERN, ["DNA", "NFKB"], plate_map=root / "map.csv")
    with pytest.raises(InputError, match="cross the cut.*smaller crops"):
        plate.sample(crop_size=64, masks=False, split_by="half")


def test_per_field_normalisation_removes_a_well_brightness_batch_effect(pair):
    """DNA is 2.2x brighter in one well: raw crops separate the wells by DNA alone,
    per-field crops do not (the NF-kB pattern is what is left to learn)."""
    plate = Plate.scan(pair, PATTERN, ["DNA", "NFKB"], plate_map=pair / "map.csv")

    def dna_ratio(normalization):
        d = plate.sample(crop_size=24, downsample=1, normalization=normalization)
        dna = np.array([img[0][m].mean() for img, m in zip(d.images, d.masks, strict=True)])
        tnf = d.labels == d.class_names.index("TNF")
        return dna[tnf].mean() / dna[~tnf].mean()

    assert dna_ratio("none") == pytest.approx(2.2, rel=0.1)
    assert dna_ratio("per_field") == pytest.approx(1.0, abs=0.1)
