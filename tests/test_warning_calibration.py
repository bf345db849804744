"""The warning-calibration benchmark's scoring and its findings reader;
the benchmark itself trains dozens of models and is run by hand (docs/benchmarks.md)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import warning_calibration as wc  # noqa: E402


def test_score_counts_allowed_codes_neither_way():
    rows = [
        {"expected": ["a"], "allowed": ["n"], "fired": ["a", "n"]},      # tp a
        {"expected": ["a"], "allowed": [], "fired": []},                 # fn a
        {"expected": [], "allowed": [], "fired": ["a", "n"]},            # fp a, fp n
        {"expected": ["b"], "allowed": [], "fired": ["b"]},              # tp b
    ]
    t = wc.score(rows)
    assert (t["a"]["tp"], t["a"]["fp"], t["a"]["fn"]) == (1, 1, 1)
    assert t["a"]["precision"] == 0.5 and t["a"]["recall"] == 0.5
    assert t["n"]["precision"] == 0.0 and t["n"]["precision_n"] == 1
    assert t["n"]["recall"] is None and t["n"]["recall_n"] == 0
    assert t["b"]["precision"] == t["b"]["recall"] == 1.0
    assert "| `a` | 0.50 (2) | 0.50 (2) | 1 / 1 / 1 |" in wc.format_table(t)


def test_codes_are_read_from_findings_data_first():
    from napari_attribution.core.study.findings import Finding

    class Data:
        metadata = {"findings": [Finding("segmentation", "caution", "seg msg")]}

    class Result:
        warnings = ["seg msg"]
        findings = [Finding("small-validation", "caution", "few"),
                    Finding("segmentation", "caution", "seg msg")]

    assert [f.code for f in wc.findings_of(Result(), Data())] == ["segmentation",
                                                                  "small-validation"]


def test_designs_cover_the_issue_and_split_in_halves(tmp_path):
    ds = wc.designs(tmp_path)
    synthetic = [d for d in ds if d.family not in ("sample data", "real data")]
    assert len(synthetic) >= 20
    assert sum(d.split == "tune" for d in synthetic) == sum(d.split == "report"
                                                             for d in synthetic)
    families = {d.family for d in ds}
    for f in ("clean intensity", "class = well", "rare class", "tiny held-out set",
              "low SNR", "wrong segmentation channel", "sample data", "real data"):
        assert f in families
    assert len({d.name for d in ds}) == len(ds)
