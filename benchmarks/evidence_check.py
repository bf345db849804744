"""The evidence check on BBBC013: how often it says 'none' on maps that localise and on
maps that do not (a script, not a test).

A DCMIX model (small CNN, crops of 48 px at 2x, per-field normalisation) is trained on
the control wells minus ten held-out ones. The held-out material is split in two halves
by well, a *tuning* half and a *report* half; each half holds

* positive crops (nuclear GFP, held-out positive-control wells) and negative crops;
* positive fields: whole 320 x 320 (2x) fields of held-out positive-control wells and
  of high-dose wells (dose 8-9, GFP nuclear: nuclear/cytoplasm ratio 5.5-7), explained
  with field PCIM at the training crop size and checked tile-wise;
* negative fields (held-out negative controls, dose-1 wells).

Maps: PCIM's for the set's class (they localise on positives: GFP in the nuclei), and
random maps (uniform noise: they localise nothing). On the tuning half, for each
candidate configuration (deletion fractions, null deletions, substrate) the threshold ``min_gain``
is the 95th percentile of the random maps' gain on positives (so a random map passes
about 5 % of the time), and the configuration with the fewest non-'localised' PCIM maps
of positives is chosen; the report half is then scored with it, and with the check as
first written (probabilities, random pixels, ``min_gain`` 0.05). Rates come with 95 %
Wilson intervals.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evidence_check.py [--quick]

Writes benchmarks/results/evidence_check.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bbbc013"
sys.path.insert(0, str(ROOT / "src"))

from napari_attribution.core.attribution.evidence import (  # noqa: E402
    EvidenceConfig,
    evidence_check,
    evidence_check_tiled,
)
from napari_attribution.core.attribution.explain import explain  # noqa: E402
from napari_attribution.core.models.inference import shrink  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402

CROP, DOWNSAMPLE = 48, 2
#: name -> (fractions, null deletions, substrate)
CANDIDATES = {"f0.1-0.3/shift/mean": ((0.1, 0.3), "shift", "mean"),
              "f0.1-0.3/shift/blur": ((0.1, 0.3), "shift", "blur"),
              "f0.1-0.3/shift/zero": ((0.1, 0.3), "shift", "zero"),
              "f0.2-0.5/shift/blur": ((0.2, 0.5), "shift", "blur"),
              "f0.1-0.3/pixels/blur": ((0.1, 0.3), "pixels", "blur")}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def split_wells(seed: int) -> dict:
    """Held-out wells per half and the dose wells used as fields."""
    from napari_attribution.io.plate import bbbc013_plate_map

    pm = bbbc013_plate_map(DATA)
    by = {"pos": [], "neg": [], "high": [], "low": []}
    for well, info in sorted(pm.wells.items()):
        if info.control == 1:
            by["pos"].append(well)
        elif info.control == -1:
            by["neg"].append(well)
        elif info.dose in (8, 9):
            by["high"].append(well)
        elif info.dose == 1:
            by["low"].append(well)
    rng = np.random.default_rng(seed)
    pos, neg = rng.permutation(by["pos"]), rng.permutation(by["neg"])
    high, low = rng.permutation(by["high"]), rng.permutation(by["low"])
    halves = {"tune": {"pos": list(pos[:2]), "neg": list(neg[:3]),
                       "high": list(high[::2]), "low": list(low[::2])},
              "report": {"pos": list(pos[2:4]), "neg": list(neg[3:6]),
                         "high": list(high[1::2]), "low": list(low[1::2])}}
    return {"halves": halves, "held": list(pos[:4]) + list(neg[:6])}


def train(held: list[str], epochs: int, per_image: int):
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.io.plate import load_bbbc013, take

    data = load_bbbc013(DATA, crop_size=CROP, downsample=DOWNSAMPLE, per_image=per_image,
                        seed=0)
    keep = np.flatnonzero(~np.isin(data.groups, held))
    cfg = TrainConfig(epochs=epochs, batch_size=32, device="cpu", seed=0, width=16,
                      ablation_check=False)
    res = run_generator(train_dcmix(take(data, keep), cfg))
    return res, data


def crops_of(data, wells: list[str], label: int, n: int, seed: int) -> np.ndarray:
    idx = np.flatnonzero(np.isin(data.groups, wells) & (data.labels == label))
    return data.images[np.random.default_rng(seed).permutation(idx)[:n]]


def fields_of(plate, wells: list[str], normalizer) -> np.ndarray:
    out = [normalizer(shrink(px, DOWNSAMPLE)[None])[0]
           for fov, px in plate.iter_fields(wells)]
    return np.stack(out).astype(np.float32)


def pcim(model, x: np.ndarray, target: int, tiled: bool, steps: int) -> np.ndarray:
    kw = {"input_size": CROP} if tiled else {}
    return run_generator(explain(model, x, target, method="pcim", device="cpu",
                                 batch_size=16, steps=steps, **kw)).maps


def check(model, x, maps, target: int, cfg: EvidenceConfig, tiled: bool) -> dict:
    t = np.full(len(x), target)
    if tiled:
        return evidence_check_tiled(model, x, maps, t, CROP, cfg, batch_size=64)
    return evidence_check(model, x, maps, t, cfg)


def rates(states: list[str]) -> dict:
    n = len(states)
    out = {"n": n}
    for s in ("localised", "none", "undetermined"):
        k = sum(1 for v in states if v == s)
        out[s] = k / n if n else float("nan")
        out[f"{s}_ci"] = wilson(k, n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-crops", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-image", type=int, default=24)
    ap.add_argument("--steps", type=int, default=6, help="PCIM steps")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="12 crops, 3 epochs, 2 fields")
    args = ap.parse_args()
    if not (DATA / "1049_Metadata.csv").exists():
        print(f"skipping: {DATA} not found")
        return
    if args.quick:
        args.n_crops, args.epochs, args.per_image = 12, 3, 12
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    wells = split_wells(args.seed)
    res, data = train(wells["held"], args.epochs, args.per_image)
    model = res.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"trained in {time.perf_counter() - t0:.0f} s (val balanced accuracy "
          f"{res.val_balanced_accuracy:.3f}); held-out wells {wells['held']}", flush=True)
    from napari_attribution.io.plate import open_bbbc013

    plate = open_bbbc013(DATA)
    rng = np.random.default_rng(args.seed + 17)
    sets: dict[str, dict] = {}
    for half, ws in wells["halves"].items():
        pos_f, neg_f = ws["pos"] + ws["high"], ws["neg"] + ws["low"]
        if args.quick:
            pos_f, neg_f = pos_f[:2], neg_f[:1]
        parts = {"pos crops": (crops_of(data, ws["pos"], 1, args.n_crops, 1), 1, False),
                 "neg crops": (crops_of(data, ws["neg"], 0, args.n_crops, 2), 0, False),
                 "pos fields": (fields_of(plate, pos_f, res.normalizer), 1, True),
                 "neg fields": (fields_of(plate, neg_f, res.normalizer), 0, True)}
        for name, (x, target, tiled) in parts.items():
            t1 = time.perf_counter()
            maps = {"pcim": pcim(model, x, target, tiled, args.steps),
                    "random": rng.random((len(x), *x.shape[-2:])).astype(np.float32)}
            sets[f"{half}/{name}"] = {"x": x, "target": target, "tiled": tiled,
                                      "maps": maps}
            print(f"{half}/{name}: {len(x)} images, PCIM {time.perf_counter() - t1:.0f} s",
                  flush=True)

    def run_config(cfg: EvidenceConfig, half: str) -> dict:
        out = {}
        for key, s in sets.items():
            if not key.startswith(half + "/"):
                continue
            for kind, m in s["maps"].items():
                out[f"{key.split('/', 1)[1]}/{kind}"] = check(model, s["x"], m, s["target"],
                                                              cfg, s["tiled"])
        return out

    # Every configuration runs once per half with no threshold; states for a threshold
    # follow from the numbers (gain, beats_all_random, p_min): restate().
    def restate(ev: dict, min_gain: float, saturation: float) -> list[str]:
        gain, beats = np.asarray(ev["gain"]), np.asarray(ev["beats_all_random"])
        sat = np.asarray(ev["p_min"]) >= saturation
        return np.where((gain >= min_gain) & beats, "localised",
                        np.where(sat, "undetermined", "none")).tolist()

    # Tuning half: min_gain per candidate from random maps of positives; pick the best.
    tuning, numbers = {}, {}
    for name, (fractions, null, substrate) in CANDIDATES.items():
        t1 = time.perf_counter()
        loose = EvidenceConfig(fractions=fractions, null=null, substrate=substrate,
                               min_gain=-1e9)
        ev = run_config(loose, "tune")
        rand_gain = np.concatenate([ev[k]["gain"] for k in ev if k.startswith("pos")
                                    and k.endswith("/random")])
        min_gain = round(max(0.1, float(np.quantile(rand_gain, 0.95))), 2)
        cfg = EvidenceConfig(fractions=fractions, null=null, substrate=substrate,
                             min_gain=min_gain)
        states = {k: restate(v, min_gain, cfg.saturation) for k, v in ev.items()}
        miss = np.concatenate([np.asarray(states[k]) != "localised" for k in states
                               if k.startswith("pos") and k.endswith("/pcim")])
        tuning[name] = {"min_gain": min_gain, "config": cfg.to_dict(),
                        "pcim_pos_not_localised": float(miss.mean()),
                        "rates": {k: rates(v) for k, v in states.items()},
                        "median_gain": {k: float(np.median(v["gain"])) for k, v in ev.items()}}
        numbers[name] = ev
        print(f"tuning {name}: min_gain {min_gain}, PCIM positives not localised "
              f"{miss.mean():.2f} ({time.perf_counter() - t1:.0f} s); median gains "
              f"{ {k: round(v, 2) for k, v in tuning[name]['median_gain'].items()} }",
              flush=True)
    best = min(tuning, key=lambda k: tuning[k]["pcim_pos_not_localised"])
    chosen = EvidenceConfig(**{**tuning[best]["config"],
                               "fractions": tuple(tuning[best]["config"]["fractions"])})
    print(f"chosen: {best} (min_gain {chosen.min_gain})", flush=True)

    report = {}
    for label, cfg in (("tuned", chosen), ("legacy", EvidenceConfig.legacy())):
        ev = run_config(cfg, "report")
        report[label] = {"config": cfg.to_dict(),
                         "rates": {k: rates(v["state"]) for k, v in ev.items()},
                         "per_image": {k: {f: v[f] for f in ("state", "gain", "p0", "p_min",
                                                             "beats_all_random")}
                                       for k, v in ev.items()},
                         "median_gain": {k: float(np.median(v["gain"])) for k, v in ev.items()},
                         "median_p0": {k: float(np.median(v["p0"])) for k, v in ev.items()}}
        if label == "tuned":   # the library's default threshold on the same numbers
            dflt = EvidenceConfig()
            if (dflt.fractions, dflt.null, dflt.n_random, dflt.substrate) == (
                    cfg.fractions, cfg.null, cfg.n_random, cfg.substrate):
                report["default"] = {
                    "config": dflt.to_dict(), "median_gain": report[label]["median_gain"],
                    "median_p0": report[label]["median_p0"],
                    "rates": {k: rates(restate(v, dflt.min_gain, dflt.saturation))
                              for k, v in ev.items()}}

    def ci(r: dict, s: str) -> str:
        lo, hi = r[f"{s}_ci"]
        return f"{r[s]:.2f} [{lo:.2f}, {hi:.2f}]"

    print("\nReport half (wells not used for training or tuning):")
    print("| check | images | map | n | median p(target) | 'none' | 'undetermined' | "
          "'localised' |")
    print("|---|---|---|---|---|---|---|---|")
    for label, rep in report.items():
        for key, r in rep["rates"].items():
            part, kind = key.rsplit("/", 1)
            print(f"| {label} | {part} | {kind} | {r['n']} | {rep['median_p0'][key]:.3f} | "
                  f"{ci(r, 'none')} | {ci(r, 'undetermined')} | {ci(r, 'localised')} |")
    out = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": platform.machine(), "torch": torch.__version__, "args": vars(args),
           "wells": wells, "val_balanced_accuracy": res.val_balanced_accuracy,
           "tuning": tuning, "chosen": best, "report": report,
           "seconds": time.perf_counter() - t0}
    path = ROOT / "benchmarks" / "results" / "evidence_check.json"
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"\n{time.perf_counter() - t0:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
