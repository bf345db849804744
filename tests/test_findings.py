"""Findings: every code documented, calibrated severities on designed cases, honest
uncertainty (intervals, held-out n, small-validation, cross-validation over groups)."""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from napari_attribution.core.study.findings import CODES, verdict

ROOT = Path(__file__).resolve().parents[1]
CHECK_MODULES = (
    "napari_attribution.core.study.design",
    "napari_attribution.core.study.shortcut",
    "napari_attribution.core.study.classification",
    "napari_attribution.core.study.splits",
    "napari_attribution.core.channels.verdict",
    "napari_attribution.core.channels.training",
    "napari_attribution.core.channels.repeats",
    "napari_attribution.io.plate.sampling",
)


def test_every_code_is_documented_with_its_severity():
    for name in CHECK_MODULES:
        importlib.import_module(name)
    doc = (ROOT / "docs" / "study_design.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| (alarm|caution|note) \|", doc, re.M))
    assert len(CODES) >= 15
    for code, (severity, _) in CODES.items():
        assert rows.get(code) == severity, f"{code} ({severity}) missing from the docs table"


def _plate_like(shift_by_well: dict[str, float], classes: dict[str, int], n: int = 30,
                seed: int = 0, sizes: dict[str, int] | None = None):
    """Crops (N, 2, 8, 8): channel 0 'Marker' has a per-well brightness, channel 1 is
    noise; wells map to classes by ``classes``; ``n`` crops per well unless ``sizes``."""
    rng = np.random.default_rng(seed)
    imgs, labels, wells = [], [], []
    for w, shift in shift_by_well.items():
        n = (sizes or {}).get(w, n)
        x = rng.normal(0, 0.2, (n, 2, 8, 8)).astype(np.float32)
        x[:, 0] += shift + rng.normal(0, 0.1, (n, 1, 1))
        imgs.append(x)
        labels += [classes[w]] * n
        wells += [w] * n
    return np.concatenate(imgs), np.array(labels), np.array(wells)


def _check(shifts, classes, val_wells, sizes=None):
    from napari_attribution.core.study.shortcut import shortcut_check

    x, y, wells = _plate_like(shifts, classes, sizes=sizes)
    val = np.flatnonzero(np.isin(wells, val_wells))
    tr = np.flatnonzero(~np.isin(wells, val_wells))
    units = {"well": np.char.add("/", wells)}
    return shortcut_check(x, y, tr, val, ["Marker", "Noise"], units=units)


def test_phenotype_consistent_in_held_out_wells_is_a_note():
    shifts = {"A01": 0, "A02": 0, "A03": 0, "B01": 1, "B02": 1, "B03": 1}
    classes = {w: int(w[0] == "B") for w in shifts}
    check = _check(shifts, classes, ["A03", "B03"])
    assert check.flagged == ["Marker"]
    (f,) = check.findings
    assert (f.code, f.severity) == ("phenotype-intensity", "note")
    assert "consistent in 2 held-out wells" in f.message
    assert check.warnings == [] and verdict(check.findings) == "note"


def test_well_effect_within_a_class_as_large_as_the_classes_is_an_alarm():
    # class B's wells differ as much as the classes do: a batch, not a phenotype
    shifts = {"A01": 0, "A02": 0, "A03": 0, "B01": 1, "B02": 2, "B03": 1}
    classes = {w: int(w[0] == "B") for w in shifts}
    check = _check(shifts, classes, ["A03", "B03"])
    codes = {f.code: f for f in check.findings}
    assert codes["shortcut-batch"].severity == "alarm"
    ev = codes["shortcut-batch"].evidence
    assert ev["within_class_well_effect"] >= 0.8 * ev["class_effect"] > 0


def test_clean_wells_and_a_larger_phenotype_are_no_alarm_even_when_both_separate():
    # every well separates cleanly from its neighbours (a small, tight offset) and the
    # classes separate cleanly too: separations both saturate, sizes do not
    shifts = {"A01": 0, "A02": 0.3, "A03": 0, "B01": 3, "B02": 3.3, "B03": 3}
    classes = {w: int(w[0] == "B") for w in shifts}
    check = _check(shifts, classes, ["A03", "B03"])
    assert [f.code for f in check.findings] == ["phenotype-intensity"]


def test_held_out_well_that_goes_the_other_way_is_a_caution():
    # a small held-out well (too few crops to compare wells with) goes the wrong way
    shifts = {"A01": 0, "A02": 0, "A03": 0, "A04": 0, "A05": 1, "B01": 1, "B02": 1,
              "B03": 1, "B04": 1}
    classes = {w: int(w[0] == "B") for w in shifts}
    check = _check(shifts, classes, ["A04", "A05", "B04"], sizes={"A05": 6})
    (f,) = check.findings
    assert (f.code, f.severity) == ("shortcut-inconsistent", "caution")
    assert "A05" in f.message and "A04" not in f.message


def test_class_is_a_single_well_is_one_alarm_for_all_flagged_channels():
    shifts = {"A01": 0, "B01": 1}
    x, y, wells = _plate_like(shifts, {"A01": 0, "B01": 1})
    from napari_attribution.core.study.shortcut import shortcut_check

    idx = np.arange(len(y))
    check = shortcut_check(x, y, idx[idx % 4 != 0], idx[idx % 4 == 0], ["Marker", "Noise"],
                           units={"well": wells}, per_field=True)
    (f,) = check.findings
    assert (f.code, f.severity) == ("shortcut-batch", "alarm")
    assert f.evidence["channels"] == ["Marker"] and "class = well" in f.message
    # per-field normalisation is on: the advice does not ask for it again
    assert "already on" in f.message and "Normalise per field" not in f.message


def test_wilson_interval_and_small_validation():
    from napari_attribution.core.study.classification import (
        classification_report,
        sample_size_findings,
        wilson_interval,
    )

    lo, hi = wilson_interval(3, 3)
    assert hi == pytest.approx(1.0) and 0.35 < lo < 0.5  # not [1, 1] as a bootstrap
    y = np.array([0] * 60 + [1] * 3)
    rep = classification_report(y, y, ["interphase", "mitotic"])
    assert rep["support"] == {"interphase": 60, "mitotic": 3}
    assert rep["balanced_accuracy"] == 1.0 and rep["balanced_accuracy_95"][0] < 0.75
    (f,) = sample_size_findings(rep, {"interphase": 200, "mitotic": 12})
    assert (f.code, f.severity) == ("small-validation", "caution")
    assert "only 3 held-out mitotic objects" in f.message and "--cv" in f.message
    big = classification_report(np.r_[np.zeros(40), np.ones(40)].astype(int),
                                np.r_[np.zeros(40), np.ones(40)].astype(int), ["a", "b"])
    assert sample_size_findings(big, {"a": 160, "b": 160}) == []
    (t,) = sample_size_findings(big, {"a": 160, "b": 2})
    assert t.code == "small-training"


def test_group_folds_hold_out_every_object_once():
    from napari_attribution.core.study.splits import group_folds

    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(7)], 20)
    labels = (rng.random(groups.size) < 0.1).astype(int)
    folds = group_folds(labels, groups, 5, seed=0)
    held = np.concatenate([va for _, va in folds])
    assert len(folds) == 5 and np.array_equal(np.sort(held), np.arange(groups.size))
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
        assert set(labels[tr]) == {0, 1}


@pytest.fixture(scope="module")
def rare_plate(tmp_path_factory):
    """One field of ~240 segmented nuclei, ~14 mitotic, labelled per object."""
    from napari_attribution.io.synthetic_plates import write_trap_plate

    return write_trap_plate(tmp_path_factory.mktemp("rare"), "rare_mitotic", seed=0)


@pytest.mark.parametrize("cv", ["auto", "1"])
def test_one_field_with_few_positives_is_cross_validated_or_cautioned(rare_plate, tmp_path,
                                                                      capsys, cv):
    from napari_attribution.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["train", "--plate", str(rare_plate.folder), "--pattern", rare_plate.pattern,
                 "--objects", str(rare_plate.objects), "--epochs", "1", "--device", "cpu",
                 "-q", "--cv", cv, "-o", str(out)]) == 0
    train_text = capsys.readouterr().out
    assert "study verdict:" in train_text and "held out: interphase" in train_text
    assert main(["channels", str(out), "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    codes = {f["code"] for f in rep["warnings"] + rep["notes"]}
    n_mitotic = sum(o["label"] == "mitotic" for o in rare_plate.plate.objects)
    held = rep["held_out_per_class"]["mitotic"]
    if cv == "auto":  # below 10 held-out mitotic cells: every object held out once
        assert "cross-validated" in codes and rep["cross_validation"]["k"] >= 2
        from napari_attribution.io.bundle import load_bundle

        n_crops = load_bundle(out).provenance["data"]["n_images"]
        assert sum(rep["held_out_per_class"].values()) == n_crops
        assert 10 <= held <= n_mitotic
        assert rep["validation"]["scope"].startswith("cross-validated")
    else:
        assert held < 10 and "small-validation" in {w["code"] for w in rep["warnings"]}
    lo, hi = rep["balanced_accuracy_95"]
    assert lo <= rep["balanced_accuracy"] <= hi
    assert rep["verdict"] in ("caution", "alarm")


def test_a_held_out_well_is_judged_with_its_interval_not_its_point_estimate():
    # held-out A04 sits halfway between the classes: about half its 30 crops are called
    # right, which is noise at this n (95 % interval reaches above 0.6), not a well
    # going the other way
    shifts = {"A01": 0, "A02": 0, "A03": 0, "A04": 0.5, "B01": 1, "B02": 1, "B03": 1,
              "B04": 1}
    classes = {w: int(w[0] == "B") for w in shifts}
    check = _check(shifts, classes, ["A03", "A04", "B03", "B04"])
    ev = check.evidence["Marker"]
    assert ev["held_out_wells"]["A04"] < 0.6 and ev["held_out_well_n"]["A04"] == 30
    assert [f.code for f in check.findings] == ["phenotype-intensity"]
