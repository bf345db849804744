"""Absence classes on BBBC013: the evidence check and contrastive maps (a script, not a test).

BBBC013's negative controls are defined by an *absence* (GFP stays out of the nucleus).
The audit found that on negatives a random map scores as well as any map on every
fidelity metric but deletion to zero. This script measures, on held-out wells:

1. the evidence check (:mod:`napari_attribution.core.attribution.evidence`): its threshold
   ``min_gain`` is calibrated on *tuning wells* as the 95th percentile of the gain a
   random map achieves (so 'localised' means: beats what a random map reaches 95 % of
   the time), then applied on *report wells*: how often 'none' fires on PCIM maps of
   negatives vs positives (and on random maps, the false-'localised' rate), with the
   calibrated threshold and with the library's default (0.05);
2. contrastive PCIM maps for negatives ("negative vs positive", and the reverse
   "positive vs negative": what in a negative image argues for positive) against a
   random map on ROAD (most relevant first) and deletion to the channel means, with
   95 % bootstrap intervals of the mean and of the paired difference.

The model is a DCMIX small CNN retrained without the tuning and report wells.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/absence.py [--quick]

Writes benchmarks/results/absence.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_attribution as pa  # noqa: E402
from napari_attribution.core.attribution.contrast import ContrastModel  # noqa: E402
from napari_attribution.core.attribution.evidence import EvidenceConfig, evidence_check  # noqa: E402
from napari_attribution.core.attribution.explain import explain  # noqa: E402
from napari_attribution.core.evaluation.metrics import FIDELITY_METRICS, bootstrap_interval  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402

METRICS = ("road_morf", "deletion_mean")
DEFAULT = EvidenceConfig()      # the library's threshold, beside the calibrated one


def load(n: int, epochs: int, seed: int) -> dict | None:
    if not (pa.DATA / "bbbc013" / "1049_Metadata.csv").exists():
        return None
    from napari_attribution.io.plate import load_bbbc013, take

    data = load_bbbc013(pa.DATA / "bbbc013", crop_size=48, downsample=2, per_image=24, seed=0)
    wells = np.unique(data.groups)
    label_of = {w: int(data.labels[data.groups == w][0]) for w in wells}
    pos = [w for w in wells if label_of[w] == 1]
    neg = [w for w in wells if label_of[w] == 0]
    rng = np.random.default_rng(seed)
    tune = set(rng.choice(pos, 2, replace=False)) | set(rng.choice(neg, 3, replace=False))
    report = set(rng.choice([w for w in pos if w not in tune], 2, replace=False)) | set(
        rng.choice([w for w in neg if w not in tune], 3, replace=False))
    held = np.isin(data.groups, list(tune | report))
    res = pa._train(take(data, np.flatnonzero(~held)), epochs)
    model = res.model.eval()
    out = {"model": model, "tune_wells": sorted(map(str, tune)),
           "report_wells": sorted(map(str, report))}
    for part, ws in (("tune", tune), ("report", report)):
        for name, label in (("pos", 1), ("neg", 0)):
            idx = np.flatnonzero(np.isin(data.groups, list(ws)) & (data.labels == label))
            idx = np.random.default_rng(seed + label).permutation(idx)[:n]
            out[f"{part}_{name}"] = res.normalizer(data.images[idx])
    return out


def pcim_maps(model, x: np.ndarray, target: int, contrast: int | None = None) -> np.ndarray:
    return run_generator(explain(model, x, target, method="pcim", device="cpu",
                                 batch_size=32, contrast=contrast)).maps


def random_maps(x: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((x.shape[0], *x.shape[-2:])).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=3, help="well choice, bootstrap")
    ap.add_argument("--quick", action="store_true", help="16 images, 3 epochs")
    args = ap.parse_args()
    if args.quick:
        args.n_images, args.epochs = 16, 3
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    d = load(args.n_images, args.epochs, args.seed)
    if d is None:
        print("skipping: ../shared/data/bbbc013 not found")
        return
    model = d["model"]
    print(f"trained in {time.perf_counter() - t0:.0f} s; tuning wells {d['tune_wells']}, "
          f"report wells {d['report_wells']}", flush=True)
    loose = EvidenceConfig(min_gain=-1.0)          # numbers only; the state comes below

    # 1. calibrate min_gain on the tuning wells: the gain random maps reach
    gains_random = []
    for name, label in (("tune_pos", 1), ("tune_neg", 0)):
        x = d[name]
        ev = evidence_check(model, x, random_maps(x, args.seed + 11), np.full(len(x), label),
                            loose)
        gains_random += ev["gain"]
    min_gain = float(np.quantile(gains_random, 0.95))
    cfg = EvidenceConfig(min_gain=min_gain)
    print(f"min_gain (95th percentile of random-map gain on tuning wells) = {min_gain:.4f}")
    tuning = {}
    for name, label in (("tune_pos", 1), ("tune_neg", 0)):
        x = d[name]
        ev = evidence_check(model, x, pcim_maps(model, x, label), np.full(len(x), label), cfg)
        tuning[name] = float(np.mean(np.asarray(ev["state"]) == "none"))
    print(f"tuning wells, PCIM maps, 'none' rate: {tuning}", flush=True)

    # 2. the check on the report wells
    check: dict[str, dict] = {}
    maps: dict[str, np.ndarray] = {}
    for name, label in (("report_pos", 1), ("report_neg", 0)):
        x = d[name]
        t = np.full(len(x), label)
        maps[name] = pcim_maps(model, x, label)
        for kind, m in (("pcim", maps[name]), ("random", random_maps(x, args.seed + 29))):
            ev = evidence_check(model, x, m, t, cfg)
            none = np.asarray(ev["state"]) == "none"
            none_default = ~((np.asarray(ev["gain"]) >= DEFAULT.min_gain)
                             & np.asarray(ev["beats_all_random"]))
            check[f"{name}/{kind}"] = {
                "n": len(x), "none_rate": float(none.mean()),
                "none_rate_default": float(none_default.mean()),
                "gain": bootstrap_interval(np.asarray(ev["gain"]), seed=args.seed),
                "drop_top": bootstrap_interval(np.asarray(ev["drop_top"]), seed=args.seed),
                "p0": bootstrap_interval(np.asarray(ev["p0"]), seed=args.seed)}

    # 3. contrastive maps for negatives vs a random map
    xn = d["report_neg"]
    variants = {"neg-vs-pos": (0, 1), "pos-vs-neg": (1, 0)}
    contrast: dict[str, dict] = {}
    rand = random_maps(xn, args.seed + 31)
    for label, (a, b) in variants.items():
        m = pcim_maps(model, xn, a, contrast=b)
        scorer = ContrastModel(model, a, b).eval()
        t1 = np.ones(len(xn), np.int64)
        row = {}
        for metric in METRICS:
            s_map = FIDELITY_METRICS[metric].scores(scorer, xn, m, t1, seed=args.seed)
            s_rnd = FIDELITY_METRICS[metric].scores(scorer, xn, rand, t1, seed=args.seed)
            row[metric] = {"map": bootstrap_interval(s_map, seed=args.seed),
                           "random": bootstrap_interval(s_rnd, seed=args.seed),
                           "map_minus_random": bootstrap_interval(s_map - s_rnd,
                                                                  seed=args.seed)}
        ev = evidence_check(scorer, xn, m, t1, cfg)
        row["none_rate"] = float(np.mean(np.asarray(ev["state"]) == "none"))
        contrast[label] = row

    lines = [f"min_gain = {min_gain:.4f} (tuning wells {', '.join(d['tune_wells'])}; "
             f"there, PCIM's 'none' rate: positives {tuning['tune_pos']:.2f}, negatives "
             f"{tuning['tune_neg']:.2f}); report wells {', '.join(d['report_wells'])}", "",
             "| report wells | map | n | 'none' rate (calibrated) | 'none' rate (default "
             f"{DEFAULT.min_gain}) | gain [95% CI] | p(target) intact |",
             "|---|---|---|---|---|---|---|"]
    for key, r in check.items():
        part, kind = key.split("/")
        lines.append(f"| {part.replace('report_', '')} | {kind} | {r['n']} | "
                     f"{r['none_rate']:.2f} | {r['none_rate_default']:.2f} | "
                     f"{_cell(r['gain'])} | {_cell(r['p0'])} |")
    lines += ["", "| negatives, contrast | metric | PCIM map | random map | map - random "
              "(paired) | 'none' rate |", "|---|---|---|---|---|---|"]
    for label, row in contrast.items():
        for metric in METRICS:
            r = row[metric]
            lines.append(f"| {label} | {metric} ↓ | {_cell(r['map'])} | {_cell(r['random'])} | "
                         f"{_cell(r['map_minus_random'])} | {row['none_rate']:.2f} |")
    table = "\n".join(lines)
    print(table)
    pa.RESULTS.mkdir(parents=True, exist_ok=True)
    out = pa.RESULTS / ("absence_quick.json" if args.quick else f"absence_seed{args.seed}.json")
    out.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "args": vars(args), "tune_wells": d["tune_wells"], "report_wells": d["report_wells"],
        "min_gain": min_gain, "tuning_none_rate": tuning, "evidence_config": cfg.to_dict(),
        "check": check,
        "contrast": contrast, "seconds": time.perf_counter() - t0, "markdown": table},
        indent=2))
    print(f"written to {out} in {time.perf_counter() - t0:.0f} s")


def _cell(ci: tuple) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


if __name__ == "__main__":
    main()
