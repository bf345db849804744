"""Study-design traps and BBBC013 through the documented command line (a script, not a test).

For each trap plate of ``core.synthetic_plates`` (written as a plate folder with a plate
map or an object table, the way real plates come) and each seed, runs exactly what
docs/study_design.md tells a user to run:

    napari-attribution train --plate DIR --pattern P (--plate-map MAP | --objects OBJ) -o M
    napari-attribution channels M --format json

and records the top channel and its DCMIX weight, the informative channel's weight, the
warnings, the balanced held-out accuracy, the training time and the time the
study-design and shortcut checks took. Where the default path does not rank the
informative channel first and a warning fired, the remedy the warning suggests is run
too. BBBC013 (when ../shared/data is present) runs with ``--bbbc013`` the same way.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/study_design.py [--seeds 0,1,2] [--quick]

Prints a markdown table; writes JSON to benchmarks/results/study_design.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from napari_attribution.io.bundle import load_bundle
from napari_attribution.io.synthetic_plates import write_trap_plate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-m", "napari_attribution.cli"]

#: trap -> (labels option, what a careful analysis finds)
TRAPS = {
    "confounded_pair": "--plate-map",
    "rare_mitotic": "--objects",
    "low_snr": "--plate-map",
}


def run_cli(args: list[str]) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0


def channels_json(model: Path) -> dict:
    rc, out, _ = run_cli(["channels", str(model), "--format", "json"])
    if rc != 0:
        raise RuntimeError(f"channels failed:\n{out}")
    return json.loads(out[out.index("{"):])


def summarise(model: Path, report: dict, informative: str, seconds: float) -> dict:
    weights = {r["channel"]: float(r["importance"]) for r in report["channels"]}
    top = max(weights, key=weights.get)
    prov = load_bundle(model).provenance
    checks = prov.get("check_seconds") or {}
    train_s = float(prov.get("train_seconds") or seconds)
    design_s = (float(checks.get("study_design", 0.0))
                + float(checks.get("shortcut_check", checks.get("shortcut", 0.0))))
    return {"top_channel": top, "top_weight": weights[top],
            "informative_weight": weights.get(informative),
            "informative_first": top == informative,
            "warnings": report.get("warnings", []),
            "balanced_accuracy": report.get("balanced_accuracy"),
            "train_seconds": train_s, "check_seconds": checks,
            "design_and_shortcut_share": design_s / train_s if train_s else None,
            "wall_seconds": seconds}


def run_trap(kind: str, seed: int, work: Path, extra: list[str]) -> dict:
    plate = write_trap_plate(work / f"{kind}_{seed}", kind, seed=seed,
                             sites=1 if kind == "low_snr" else 2)
    informative = plate.plate.informative_channel.replace("-", "")
    label_opt = TRAPS[kind]
    labels = plate.plate_map if label_opt == "--plate-map" else plate.objects
    model = work / f"{kind}_{seed}.safetensors"
    args = ["train", "--plate", str(plate.folder), "--pattern", plate.pattern, label_opt,
            str(labels), "--seed", str(seed), "-o", str(model), "-q", *extra]
    rc, out, seconds = run_cli(args)
    if rc != 0:
        return {"trap": kind, "seed": seed, "error": out.strip().splitlines()[-1]}
    row = {"trap": kind, "seed": seed, "informative": informative, "options": extra,
           **summarise(model, channels_json(model), informative, seconds)}
    return row


def run_bbbc013(seed: int, work: Path, extra: list[str]) -> dict | None:
    if not (DATA / "bbbc013" / "1049_Metadata.csv").exists():
        return None
    model = work / f"bbbc013_{seed}.safetensors"
    rc, out, seconds = run_cli(["train", "--plate", str(DATA / "bbbc013"), "--bbbc013",
                                "--seed", str(seed), "-o", str(model), "-q",
                                *extra])
    if rc != 0:
        return {"trap": "bbbc013", "seed": seed, "error": out.strip().splitlines()[-1]}
    return {"trap": "bbbc013", "seed": seed, "informative": "GFP", "options": extra,
            **summarise(model, channels_json(model), "GFP", seconds)}


def markdown(rows: list[dict]) -> str:
    lines = ["| set | seed | options | top channel (weight) | informative weight | "
             "balanced acc. | warnings | checks / training time | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['trap']} | {r['seed']} | | error: {r['error']} | | | | | |")
            continue
        bal = r["balanced_accuracy"]
        share = r["design_and_shortcut_share"]
        lines.append(
            f"| {r['trap']} | {r['seed']} | {' '.join(r['options']) or 'defaults'} | "
            f"{r['top_channel']} ({r['top_weight']:.3f}) | {r['informative_weight']:.3f} | "
            f"{'n/a' if bal is None else f'{bal:.3f}'} | {len(r['warnings'])} | "
            f"{'n/a' if share is None else f'{100 * share:.1f} %'} | "
            f"{r['train_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sets", default="confounded_pair,rare_mitotic,low_snr,bbbc013")
    ap.add_argument("--quick", action="store_true", help="one seed, 3 epochs (smoke run)")
    args = ap.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    extra = ["--epochs", "3"] if args.quick else []
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in seeds:
            for kind in args.sets.split(","):
                t0 = time.perf_counter()
                row = (run_bbbc013(seed, work, extra) if kind == "bbbc013"
                       else run_trap(kind, seed, work, extra))
                if row is None:
                    print("skipping BBBC013: ../shared/data/bbbc013 not found")
                    continue
                rows.append(row)
                print(f"{kind} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = markdown(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("study_design_quick.json" if args.quick else "study_design.json")
    out.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{sys.version.split()[0]}",
        "args": vars(args), "rows": rows, "markdown": table}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
