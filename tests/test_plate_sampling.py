"""Safe plate defaults: every object up to a budget, the nuclei channel chosen by the names
biologists use (and checked), and the output saying what was used (issue 21, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_attribution.cli import main
from napari_attribution.core.data.segmentation import (
    choose_nuclei_channel,
    nuclear_stain_rank,
    nuclei_plausibility,
)
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.study.findings import CODES
from napari_attribution.io.plate import Plate
from plate_factory import PATTERN, foci_plate


@pytest.mark.parametrize("name", ["DNA", "dna", "Hoechst", "Hoechst33342", "HOECHST",
                                  "DAPI", "DAPI_405", "DRAQ5", "SiR-DNA", "SiRDNA",
                                  "H2B-GFP", "mCherry-H2B", "nuclei", "Nuclear stain",
                                  "NucBlue", "Ch2Hoechst", "w1_DAPI"])
def test_nuclear_stain_names_are_recognised(name):
    assert nuclear_stain_rank(name) is not None


@pytest.mark.parametrize("name", ["H2AX", "gH2AX", "PH3", "GFP", "NF-kB", "NFKB",
                                  "Actin", "CellBody", "ch1", "w2", "nucleolin", "Marker",
                                  "53BP1", "Tubulin"])
def test_other_names_are_not_nuclear_stains(name):
    assert nuclear_stain_rank(name) is None


def test_choice_prefers_a_dye_name_then_order_and_falls_back_to_the_last():
    assert choose_nuclei_channel(["H2AX", "Hoechst"]) == (1, "named")
    assert choose_nuclei_channel(["Hoechst", "H2AX"]) == (0, "named")
    assert choose_nuclei_channel(["nuclei", "GFP", "DAPI"]) == (2, "named")  # dye first
    assert choose_nuclei_channel(["GFP", "ch2"]) == (1, "fallback")
    assert choose_nuclei_channel(["GFP", "DNA"], "gfp") == (0, "given")  # case-insensitive
    assert choose_nuclei_channel(["GFP", "DNA"], 0) == (0, "given")
    with pytest.raises(InputError, match="no channel 'PH3'"):
        choose_nuclei_channel(["GFP", "DNA"], "PH3")


def test_plausibility_flags_foci_not_cell_bodies():
    nuclei = {"objects": 100, "per_field": 50, "median_area": 150.0}
    foci = {"objects": 400, "per_field": 200, "median_area": 20.0}
    body = {"objects": 90, "per_field": 45, "median_area": 600.0}
    assert nuclei_plausibility({"DNA": nuclei, "Body": body}, "DNA") is None
    assert nuclei_plausibility({"DNA": nuclei, "H2AX": foci}, "DNA") is None
    assert "many small objects" in nuclei_plausibility({"w1": nuclei, "w2": foci}, "w2")
    # a dense field: bodies merge into fewer, larger objects; the DNA name is trusted
    merged_bodies = {"objects": 40, "per_field": 20, "median_area": 900.0}
    assert nuclei_plausibility({"DNA": nuclei, "Body": merged_bodies}, "DNA") is None
    merged = {"objects": 95, "per_field": 47, "median_area": 60.0}  # one blob per nucleus
    assert "2.5x smaller" in nuclei_plausibility({"Hoechst": nuclei, "H2AX": merged}, "H2AX")
    assert "no object" in nuclei_plausibility(
        {"DNA": {**nuclei, "objects": 0}, "Body": body}, "DNA")
    assert {"segmentation", "sample-budget"} <= set(CODES)


@pytest.fixture(scope="module")
def foci(tmp_path_factory):
    return foci_plate(tmp_path_factory.mktemp("foci"))


def test_hoechst_plate_is_segmented_on_hoechst(foci):
    """Acceptance (issue 21): DNA stain named Hoechst, foci in H2AX (sorted first)."""
    plate = Plate.scan(foci, PATTERN, plate_map=foci / "map.csv")
    assert plate.channel_names == ["H2AX", "Hoechst"]  # the old default took the last...
    data = plate.sample()
    md = data.metadata
    assert md["nuclei_channel"] == "Hoechst" and md["nuclei"]["choice"] == "named"
    # 4 wells x 2 fields x 12 nuclei of radius 7 (disc area 149-161 px)
    assert md["nuclei"]["objects"] == 96 and 140 <= md["nuclei"]["median_area"] <= 170
    assert md["nuclei"]["summary"].startswith(
        "nuclei: Hoechst (named as a nuclear stain), 96 objects in 8 field(s), median area")
    assert md["findings"] == [] and md["warnings"] == []
    # every object is used (no per-field cap by default), and the counts say so
    s = md["sampling"]
    assert len(data) == s["objects_used"] == s["objects_found"] == 96
    assert (s["fields_used"], s["wells_used"], s["max_objects"]) == (8, 4, 10_000)


def test_foci_channel_chosen_by_hand_gets_a_segmentation_caution(foci):
    plate = Plate.scan(foci, PATTERN, plate_map=foci / "map.csv")
    md = plate.sample(nuclei_channel="H2AX").metadata
    (f,) = md["findings"]
    assert (f.code, f.severity) == ("segmentation", "caution")
    assert "H2AX do not look like nuclei" in f.message and "Hoechst" in f.message
    assert f.evidence["survey"]["Hoechst"]["median_area"] > \
        2 * f.evidence["survey"]["H2AX"]["median_area"]
    assert f.message in md["warnings"]  # shown where warnings are read today


def test_unnamed_channels_fall_back_with_a_caution(tmp_path):
    root = foci_plate(tmp_path / "p", names=("w1", "w2"), sites=1)
    plate = Plate.scan(root, PATTERN, plate_map=root / "map.csv")
    md = plate.sample().metadata
    codes = [(f.code, f.evidence.get("choice")) for f in md["findings"]]
    assert ("segmentation", "fallback") in codes
    assert md["nuclei"]["choice"] == "fallback" and md["nuclei_channel"] == "w2"


def test_object_budget_keeps_a_uniform_sample_and_says_so(foci):
    plate = Plate.scan(foci, PATTERN, plate_map=foci / "map.csv")
    data = plate.sample(max_objects=40, seed=3)
    md = data.metadata
    assert len(data) == md["sampling"]["objects_used"] == 40
    assert md["sampling"]["objects_found"] == 96
    (f,) = [f for f in md["findings"] if f.code == "sample-budget"]
    assert f.severity == "note" and "40 of 96 objects" in f.message
    assert f.message not in md["warnings"]  # a note, not a warning
    # a uniform sample over all fields: every well keeps some, none keeps all
    per_well = {w: int((md["well"] == w).sum()) for w in np.unique(md["well"])}
    assert len(per_well) == 4 and all(3 <= n <= 17 for n in per_well.values())
    # the per-field cap still works, and is reported as the cut
    md = plate.sample(per_image=5).metadata
    assert md["sampling"]["objects_used"] == 40 and "per-field cap (5)" in \
        md["findings"][0].message


def test_time_budget_reads_wells_round_robin(foci):
    plate = Plate.scan(foci, PATTERN, plate_map=foci / "map.csv")
    data = plate.sample(time_budget=1e-9, crop_size=16, downsample=2)
    s = data.metadata["sampling"]
    # one field of every well is always read (so no class is lost), then time is up
    assert s["stopped_by_time"] and s["fields_read"] == 4 and s["fields_total"] == 8
    assert s["wells_used"] == 4 and sorted(set(data.metadata["site"])) == ["1"]
    assert any(f.code == "sample-budget" and "time budget" in f.message
               for f in data.metadata["findings"])
    with pytest.raises(InputError, match="max_objects"):
        plate.sample(max_objects=0)


def test_train_cli_names_the_nuclei_channel_and_records_the_sample(foci, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["train", "--plate", str(foci), "--pattern", PATTERN, "--plate-map",
                 str(foci / "map.csv"), "--epochs", "1", "--device", "cpu", "-q",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nuclei: Hoechst (named as a nuclear stain), 96 objects in 8 field(s)" in text
    assert "used 96 of 96 objects from 8 field(s) in 4 well(s) (at most 10000 objects)" \
        in text
    from napari_attribution.io.bundle import load_bundle

    data_info = load_bundle(out).provenance["data"]
    assert data_info["nuclei"]["channel"] == "Hoechst"
    assert data_info["sampling"]["objects_used"] == 96
    # the settings the flags gave, as SamplingConfig.to_dict() wrote them
    from napari_attribution.io.plate import SamplingConfig

    cfg = SamplingConfig.from_dict(data_info["sampling"]["config"])
    assert (cfg.masks, cfg.max_objects, cfg.crops, cfg.split_by) == (False, 10_000, "nuclei",
                                                                      "auto")
    # the option: the foci channel by hand gives the caution in the output
    out2 = tmp_path / "m2.safetensors"
    assert main(["train", "--plate", str(foci), "--pattern", PATTERN, "--plate-map",
                 str(foci / "map.csv"), "--nuclei-channel", "H2AX", "--max-objects", "30",
                 "--epochs", "1", "--device", "cpu", "-q", "-o", str(out2)]) == 0
    text = capsys.readouterr().out
    assert "nuclei: H2AX (chosen by the user)" in text
    assert "do not look like nuclei" in text
    assert "note (sample-budget): 30 of" in text
    prov = load_bundle(out2).provenance
    assert any("do not look like nuclei" in w for w in prov["warnings"])
    assert [f["code"] for f in prov["data"]["findings"]] == ["segmentation", "sample-budget"]
    json.dumps(prov["data"])
