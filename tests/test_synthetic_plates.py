"""Trap plates: fields with per-object truth, written the way real plates come."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from napari_attribution.core.data.synthetic_plates import make_trap_plate
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.synthetic_plates import write_trap_plate


def _mean_in_nuclei(plate, well, channel):
    img = plate.fields[(well, 1)][plate.channel_names.index(channel)]
    return float(np.percentile(img, 95))


def test_confounded_pair_has_one_well_per_class_and_a_dna_batch_effect():
    p = make_trap_plate("confounded_pair", seed=3)
    assert p.well_classes == {"B02": "stimulated", "B03": "unstimulated"}
    ratio = _mean_in_nuclei(p, "B02", "DNA") / _mean_in_nuclei(p, "B03", "DNA")
    assert 1.8 < ratio < 2.6                            # the 2.2x stain difference
    assert p.confound_channel == "DNA" and p.informative_channel == "NF-kB"
    again = make_trap_plate("confounded_pair", seed=3)
    np.testing.assert_array_equal(again.fields[("B03", 2)], p.fields[("B03", 2)])


def test_rare_mitotic_is_about_five_percent_and_ph3_marks_it():
    p = make_trap_plate("rare_mitotic", seed=0)
    labels = np.array([o["label"] for o in p.objects])
    share = (labels == "mitotic").mean()
    assert 0.02 < share < 0.1 and len(labels) > 150
    img = p.fields[("C05", 1)][p.channel_names.index("PH3")]
    mit = [o for o in p.objects if o["label"] == "mitotic"]
    inter = [o for o in p.objects if o["label"] == "interphase"]
    at = [np.median([img[int(o["y"]), int(o["x"])] for o in group]) for group in (mit, inter)]
    assert at[0] > 4 * at[1]


def test_written_plate_reads_back(tmp_path):
    w = write_trap_plate(tmp_path / "plate", "low_snr", seed=1, sites=1)
    files = sorted(p.name for p in w.folder.glob("*.tif"))
    assert len(files) == 8 * 3 and "D02_s1_Marker.tif" in files
    assert tifffile.imread(w.folder / "D02_s1_Marker.tif").dtype == np.uint16
    with open(w.plate_map) as f:
        rows = list(csv.DictReader(f))
    assert {r["class"] for r in rows} == {"control", "treated"} and len(rows) == 8
    with open(w.objects) as f:
        obj = list(csv.DictReader(f))
    assert set(obj[0]) == {"well", "site", "x", "y", "label"} and len(obj) == len(w.plate.objects)


def test_unknown_trap_is_refused():
    with pytest.raises(InputError, match="unknown trap"):
        make_trap_plate("nope")


def test_dna_damage_plate_has_hoechst_and_foci_in_damaged_wells(tmp_path):
    p = make_trap_plate("dna_damage", seed=0, sites=1)
    assert p.channel_names == ["Hoechst", "H2AX"] and p.informative_channel == "H2AX"
    assert sorted(p.well_classes.values()) == ["control", "control", "damaged", "damaged"]
    bright = {w: float((p.fields[(w, 1)][1] > 0.6).sum()) for w in p.well_classes}
    damaged = [bright[w] for w, c in p.well_classes.items() if c == "damaged"]
    control = [bright[w] for w, c in p.well_classes.items() if c == "control"]
    assert min(damaged) > 4 * max(control)  # 5-8 foci per nucleus against 0-1
    w = write_trap_plate(tmp_path / "p", "dna_damage", seed=0, sites=1,
                         rename={"Hoechst": "w2", "H2AX": "w1"})
    assert sorted(f.name for f in w.folder.glob("E02_*.tif")) == ["E02_s1_w1.tif",
                                                                 "E02_s1_w2.tif"]
