"""Warning calibration: do the study checks' findings fire where they should, and only there?

Designed studies with a known answer are run through the documented path (the ``train``
command's own loading and training functions, default checks, CPU, few epochs); each
design lists the finding codes that SHOULD fire (``expected``) and those that may fire
without being wrong (``allowed``, e.g. the ``phenotype-intensity`` note where intensity
is the phenotype). Any other code that fires is a false positive. Per code the script
reports precision (fired where expected / fired where not allowed) and recall (fired /
expected), each with its n.

Designs (built from the synthetic generators, so the answer is known):

* clean intensity phenotypes with several wells per class (no warning should fire);
* batch-effect traps: one well per class and a stain 2.2x brighter in one of them
  (class = well: ``design-class-is-well`` and ``shortcut-batch``);
* rare classes (5 % mitotic cells in one well: ``small-validation`` among others);
* tiny held-out sets (a few crops per class held out: ``small-validation``);
* low signal-to-noise (nothing to warn about the design);
* plates on disk read like real ones: the trap plates, a DNA-damage plate whose DNA
  stain is called Hoechst (segmented right: no warning), the same plate with
  uninformative channel names or with the foci channel forced as nuclei
  (``segmentation``), an object budget that cuts (``sample-budget``);
* the demo data, the napari sample, the multi-SNR sample and BBBC013's default path
  (``--bbbc013``; skipped with a message when the data are absent): no alarm.

Half of the synthetic designs are for tuning the checks (``--split tune``), the other
half for reporting (``--split report``; real and sample data are report-only).

Codes are read through findings (:class:`~napari_attribution.core.study.findings.Finding`):
``TrainResult.findings`` (every study check), plus the plate's own
``metadata["findings"]`` (segmentation, sample budget).

    PYTHONPATH=src python benchmarks/warning_calibration.py --split report \\
        [--epochs 3] [--json benchmarks/results/warning_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_BBBC013 = ROOT.parent / "shared" / "data" / "bbbc013"


@dataclass
class Design:
    """One designed study: how to build its ``train`` arguments, what should fire."""

    name: str
    family: str
    split: str  # "tune" or "report"
    build: Callable[[Path], list[str]]  # folder -> train arguments (data part)
    expected: set[str]
    allowed: set[str] = field(default_factory=set)
    note: str = ""


# ------------------------------------------------------------------------------ data

def _npz(folder: Path, data, name: str = "data.npz") -> list[str]:
    """Write an ImageSet as the documented ``--npz`` input (per-crop well, site, plate;
    groups; the normalisation already applied: none)."""
    md = data.metadata or {}
    extra = {k: np.asarray(md[k]).astype(str) for k in ("well", "site", "plate")
             if k in md and np.ndim(md[k]) == 1}
    path = folder / name
    np.savez(path, images=data.images.astype(np.float32), labels=data.labels,
             channel_names=np.asarray(data.channel_names),
             class_names=np.asarray(data.class_names),
             groups=np.asarray(data.groups).astype(str) if data.groups is not None
             else np.arange(len(data)).astype(str),
             normalization=np.asarray("none"), **extra)
    return ["--npz", str(path)]


def _clean(seed: int, n: int = 192, wells: int = 3) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        from napari_attribution.core.study.traps import make_low_snr_trap

        return _npz(folder, make_low_snr_trap(n_images=n, seed=seed, noise=0.0,
                                              wells_per_class=wells))
    return build


def _low_snr(seed: int) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        from napari_attribution.core.study.traps import make_low_snr_trap

        return _npz(folder, make_low_snr_trap(n_images=192, seed=seed, noise=0.6))
    return build


def _batch(seed: int) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        from napari_attribution.core.study.traps import make_batch_effect_trap

        return _npz(folder, make_batch_effect_trap(n_images=192, seed=seed))
    return build


def _rare(seed: int, n: int = 400, fraction: float = 0.05) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        from napari_attribution.core.study.traps import make_rare_class_trap

        return _npz(folder, make_rare_class_trap(n_images=n, seed=seed,
                                                 rare_fraction=fraction))
    return build


def _trap_plate(kind: str, seed: int, *extra: str, rename: dict[str, str] | None = None,
                objects: bool = False, **kwargs) -> Callable[[Path], list[str]]:
    if kind == "dna_damage":
        kwargs.setdefault("sites", 1)  # 4 wells x 60 nuclei

    def build(folder: Path) -> list[str]:
        from napari_attribution.io.synthetic_plates import write_trap_plate

        w = write_trap_plate(folder / kind, kind, seed=seed, rename=rename, **kwargs)
        args = ["--plate", str(w.folder), "--pattern", w.pattern]
        if objects or w.plate_map is None:
            args += ["--objects", str(w.objects)]
        else:
            args += ["--plate-map", str(w.plate_map)]
        return args + list(extra)
    return build


def _sample(name: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["--sample", name]


def _napari_sample(folder: Path) -> list[str]:
    from napari_attribution._sample_data import CELL_IMAGES, CELL_SIZE
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    return _npz(folder, make_cell_phenotype(n_images=CELL_IMAGES, size=CELL_SIZE, seed=0))


def designs(bbbc013: Path | None, bbbc013_extra: tuple[str, ...] = ()) -> list[Design]:
    """The designed studies; synthetic families alternate tune / report by seed."""
    ok_intensity = {"phenotype-intensity", "class-imbalance"}
    out: list[Design] = []
    for i, seed in enumerate((0, 1, 2, 3)):
        split = ("tune", "report")[i % 2]
        out.append(Design(f"clean-3wells-s{seed}", "clean intensity", split, _clean(seed),
                          set(), ok_intensity,
                          "Marker moves into the nucleus; 3 wells per class"))
        out.append(Design(f"batch-effect-s{seed}", "class = well", split, _batch(seed),
                          {"design-class-is-well", "shortcut-batch"},
                          {"split-not-by-well", "phenotype-intensity", "channels-shared",
                           "channels-disagree"},
                          "one well per class, DNA 2.2x brighter in one"))
    for i, seed in enumerate((0, 1)):
        split = ("tune", "report")[i % 2]
        out.append(Design(f"rare-5pct-s{seed}", "rare class", split, _rare(seed),
                          {"small-validation", "design-single-well", "class-imbalance"},
                          {"phenotype-intensity", "channels-shared", "channels-disagree"},
                          "400 cells, 5 % mitotic, one well"))
        out.append(Design(f"tiny-val-s{seed}", "tiny held-out set", split,
                          _clean(seed + 10, n=48, wells=3), {"small-validation"},
                          ok_intensity | {"channels-shared", "channels-disagree"},
                          "48 crops, 3 wells per class: ~8 held out per class"))
        out.append(Design(f"low-snr-s{seed}", "low SNR", split, _low_snr(seed), set(),
                          ok_intensity | {"channels-shared", "channels-disagree",
                                          "small-validation"},
                          "Marker noise 0.6 (signal steps ~0.5), 3 wells per class"))
    out.append(Design("rare-12pct-600-s2", "rare class", "tune", _rare(2, 600, 0.12),
                      {"design-single-well", "class-imbalance"},
                      {"phenotype-intensity", "channels-shared", "channels-disagree"},
                      "600 cells, 12 % mitotic: ~14 held out, enough"))
    out.append(Design("rare-12pct-600-s3", "rare class", "report", _rare(3, 600, 0.12),
                      {"design-single-well", "class-imbalance"},
                      {"phenotype-intensity", "channels-shared", "channels-disagree"},
                      "600 cells, 12 % mitotic: ~14 held out, enough"))
    # plates on disk, through plate scanning, segmentation and crops
    seg_ok = ok_intensity | {"channels-shared", "channels-disagree"}
    out += [
        Design("plate-confounded-pair", "class = well (plate)", "tune",
               _trap_plate("confounded_pair", 0, cells_per_field=40),
               {"design-class-is-well", "shortcut-batch", "split-not-by-well"},
               {"phenotype-intensity", "channels-shared", "channels-disagree"},
               "NF-kB pair, one well per class, DNA 2.2x brighter in one"),
        Design("plate-confounded-pair-s1", "class = well (plate)", "report",
               _trap_plate("confounded_pair", 1, cells_per_field=40),
               {"design-class-is-well", "shortcut-batch", "split-not-by-well"},
               {"phenotype-intensity", "channels-shared", "channels-disagree"},
               "NF-kB pair, one well per class, DNA 2.2x brighter in one"),
        Design("plate-rare-mitotic", "rare class (plate)", "report",
               _trap_plate("rare_mitotic", 0, objects=True),
               {"small-validation", "design-single-well", "class-imbalance",
                "split-not-by-well"},
               {"phenotype-intensity", "channels-shared", "channels-disagree"},
               "one field, ~300 nuclei, 5 % mitotic (object table)"),
        Design("plate-low-snr", "low SNR (plate)", "tune",
               _trap_plate("low_snr", 0, cells_per_field=30),
               set(), seg_ok, "4 wells per class, Marker at low SNR"),
        Design("plate-dna-damage-hoechst", "segmentation", "tune",
               _trap_plate("dna_damage", 0), set(), seg_ok,
               "DNA stain named Hoechst, H2AX foci: segmented on Hoechst"),
        Design("plate-dna-damage-hoechst-s1", "segmentation", "report",
               _trap_plate("dna_damage", 1), set(), seg_ok,
               "DNA stain named Hoechst, H2AX foci: segmented on Hoechst"),
        Design("plate-dna-damage-unnamed", "wrong segmentation channel", "tune",
               _trap_plate("dna_damage", 2, rename={"Hoechst": "w2", "H2AX": "w1"}),
               {"segmentation"}, seg_ok, "channels w1 (foci) and w2: fallback choice"),
        Design("plate-dna-damage-unnamed-s3", "wrong segmentation channel", "report",
               _trap_plate("dna_damage", 3, rename={"Hoechst": "ch2", "H2AX": "ch1"}),
               {"segmentation"}, seg_ok, "channels ch1 (foci) and ch2: fallback choice"),
        Design("plate-dna-damage-foci-forced", "wrong segmentation channel", "tune",
               _trap_plate("dna_damage", 4, "--nuclei-channel", "H2AX"),
               {"segmentation"}, seg_ok, "nuclei forced on the H2AX foci channel"),
        Design("plate-dna-damage-foci-forced-s5", "wrong segmentation channel", "report",
               _trap_plate("dna_damage", 5, "--nuclei-channel", "H2AX"),
               {"segmentation"}, seg_ok, "nuclei forced on the H2AX foci channel"),
        Design("plate-low-snr-budget", "sample budget", "report",
               _trap_plate("low_snr", 1, "--max-objects", "150", cells_per_field=30,
                           sites=1),
               {"sample-budget"}, seg_ok, "240 objects, budget 150"),
        Design("plate-dna-damage-per-image", "sample budget", "tune",
               _trap_plate("dna_damage", 6, "--per-image", "20"),
               {"sample-budget"}, seg_ok, "60 nuclei per field, capped at 20"),
        # sample and real data: report only, no alarm expected
        Design("demo-cells", "sample data", "report", _sample("cells"), set(),
               ok_intensity | {"channels-shared", "channels-disagree"},
               "the demo's data (train --sample cells)"),
        Design("napari-sample", "sample data", "report", _napari_sample, set(),
               ok_intensity | {"channels-shared", "channels-disagree"},
               "the napari sample (cell phenotype, 400 x 32 px)"),
        Design("sample-multi-snr", "sample data", "report", _sample("multi-snr"), set(),
               ok_intensity | {"channels-shared", "channels-disagree"},
               "three channels at different SNR"),
    ]
    if bbbc013 is not None:
        out.append(Design("bbbc013-default", "real data", "report",
                          lambda folder: ["--plate", str(bbbc013), "--bbbc013",
                                          *bbbc013_extra], set(),
                          {"phenotype-intensity", "sample-budget"},
                          "BBBC013 controls, default path (GFP translocation)"))
    return out


# ------------------------------------------------------------------- findings


def findings_of(result, data) -> list:
    """The data's own findings (plate sampling) and the training checks' findings."""
    from napari_attribution.core.study.findings import dedupe

    own = [f for f in (data.metadata.get("findings") or []) if hasattr(f, "code")]
    return dedupe([*own, *result.findings])


# --------------------------------------------------------------------------- running

def run_design(d: Design, epochs: int, seed: int) -> dict:
    """Load the design's data and train as ``napari-attribution train`` does."""
    from napari_attribution.cli import build_parser
    from napari_attribution.cli.cmd_train import config_from_args, load_training_data
    from napari_attribution.core.channels.training import train_dcmix
    from napari_attribution.core.runtime.progress import run_generator

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        argv = ["train", *d.build(Path(tmp)), "--epochs", str(epochs), "--device", "cpu",
                "--seed", str(seed), "-q"]
        args = build_parser().parse_args(argv)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()) as printed:
            data = load_training_data(args)
        result = run_generator(train_dcmix(data, config_from_args(args)))
        seconds = time.perf_counter() - t0
    found = findings_of(result, data)
    fired = sorted({f.code for f in found})
    return {"name": d.name, "family": d.family, "split": d.split, "note": d.note,
            "argv": [a if not a.startswith(tmp) else "<tmp>" + a[len(tmp):] for a in argv],
            "n_images": len(data), "expected": sorted(d.expected),
            "allowed": sorted(d.allowed), "fired": fired,
            "severities": {f.code: f.severity for f in found},
            "alarms": sorted({f.code for f in found if f.severity == "alarm"}),
            "false_positives": sorted(set(fired) - d.expected - d.allowed),
            "missed": sorted(d.expected - set(fired)),
            "balanced_accuracy": round(float(result.val_balanced_accuracy), 3),
            "top_channel": result.importance.ranking()[0] if result.importance else None,
            "seconds": round(seconds, 1),
            "messages": [str(f) for f in found],
            "printed": printed.getvalue().strip().splitlines()[:3]}


def score(rows: list[dict]) -> dict[str, dict]:
    """Per code: precision (n = times fired where not allowed-only) and recall (n = times
    expected)."""
    codes = sorted({c for r in rows for c in (*r["expected"], *r["fired"])})
    table = {}
    for c in codes:
        tp = sum(c in r["fired"] and c in r["expected"] for r in rows)
        fp = sum(c in r["fired"] and c not in r["expected"] and c not in r["allowed"]
                 for r in rows)
        fn = sum(c in r["expected"] and c not in r["fired"] for r in rows)
        table[c] = {"tp": tp, "fp": fp, "fn": fn,
                    "precision": None if tp + fp == 0 else round(tp / (tp + fp), 3),
                    "precision_n": tp + fp,
                    "recall": None if tp + fn == 0 else round(tp / (tp + fn), 3),
                    "recall_n": tp + fn}
    return table


def format_table(table: dict[str, dict]) -> str:
    lines = ["| code | precision (n) | recall (n) | fired where expected / not allowed / "
             "missed |", "|---|---|---|---|"]
    for c, t in table.items():
        p = "–" if t["precision"] is None else f"{t['precision']:.2f}"
        r = "–" if t["recall"] is None else f"{t['recall']:.2f}"
        lines.append(f"| `{c}` | {p} ({t['precision_n']}) | {r} ({t['recall_n']}) | "
                     f"{t['tp']} / {t['fp']} / {t['fn']} |")
    return "\n".join(lines)


def _git_state() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        branch = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--abbrev-ref",
                                 "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"{branch}@{rev}{' (uncommitted changes)' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--split", choices=("tune", "report", "all"), default="report")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--bbbc013", type=Path, default=DEFAULT_BBBC013)
    p.add_argument("--bbbc013-max-objects", type=int, default=0,
                   help="object budget for BBBC013 (default 0: the train default)")
    p.add_argument("--only", nargs="+", help="run only these designs (by name)")
    p.add_argument("--json", type=Path, help="write every row and the table here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    bbbc = args.bbbc013 if (args.bbbc013 / "1049_Metadata.csv").exists() else None
    if bbbc is None:
        print(f"BBBC013 not found at {args.bbbc013}: its design is skipped")
    extra = ("--max-objects", str(args.bbbc013_max_objects)) if args.bbbc013_max_objects \
        else ()
    todo = [d for d in designs(bbbc, extra) if args.split in ("all", d.split)
            and (not args.only or d.name in args.only)]
    print(f"{len(todo)} designs ({args.split} split), {args.epochs} epochs each, CPU, "
          f"{args.threads} threads; branch {_git_state()}")
    rows, t0 = [], time.perf_counter()
    for d in todo:
        row = run_design(d, args.epochs, args.seed)
        rows.append(row)
        flag = ""
        if row["false_positives"] or row["missed"]:
            flag = (f"  <- false {row['false_positives']}" if row["false_positives"] else
                    "") + (f"  <- missed {row['missed']}" if row["missed"] else "")
        print(f"{d.name:<34} {row['seconds']:6.1f} s  n={row['n_images']:<5} fired "
              f"{row['fired']}{flag}", flush=True)
    table = score(rows)
    alarms_real = {r["name"]: r["alarms"] for r in rows if r["family"] in
                   ("sample data", "real data")}
    print()
    print(format_table(table))
    print()
    print("alarms on the demo, sample and real data: "
          + ", ".join(f"{k} {len(v)}{' ' + str(v) if v else ''}"
                      for k, v in alarms_real.items()))
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s over {len(rows)} designs")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "split": args.split, "epochs": args.epochs, "seed": args.seed,
            "threads": args.threads, "branch": _git_state(),
            "machine": platform.platform(), "seconds": round(total, 1),
            "table": table, "alarms_on_sample_and_real_data": alarms_real,
            "designs": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
