"""Is the cell scope's evidence check calibrated? False-positive and hit rates of
``evidence_check(..., within=cell)`` on maps of known quality (a script, not a test).

Point and explain's cell scope checks a map *within the clicked cell*: deleting the
map's top 10 % / 30 % of the cell's pixels must lower the target's log-odds more than
each of 6 null deletions of as many pixels of the same cell, by at least ``min_gain``.
This script measures how often it says "localised" for

* **negative controls**, maps that carry no model evidence: ``random`` (uniform noise:
  a scattered top mask), ``smooth`` (noise blurred with sigma 1.5 px at the model's
  scale: compact blobs at random places of the cell) and, on the synthetic cells,
  ``anti-truth`` (1 on the cell's pixels *outside* the marker's compartment, where the
  class evidence is not);
* **positive controls**: ``pcim`` (the dock's map: PCIM within the cell, 4 steps) and,
  on the synthetic cells, ``truth`` (1 on the marker's compartment inside the cell:
  the nucleus for class *nuclear*, the cytoplasm for *cytoplasmic*; the answer is known
  by construction);
* the model-free ``image`` map (the crop summed over channels, as
  ``core.evaluation.model_free``): not a negative control on these data (the bright
  nucleus is where a nuclear marker's evidence is), reported beside them.

Cells: the synthetic cell-phenotype sample (``core.data.synthetic``, 32 px, 4 channels,
Marker informative) with a DCMIX model trained on its own seed-0 images, cells
explained in test images of other seeds; and BBBC013 dose-series fields never used
before (neither in training nor in earlier benchmarks), nuclei segmented as the dock
does, cells explained with the BBBC013 bundle. Each part is split in a *tune* half and a
*report* half (synthetic seeds 1 and 2; different fields): the null and ``min_gain`` are
chosen on the tune half only, and rates are reported on the report half with 95 %
Wilson intervals. Each null is run once without a threshold; states for a threshold
follow from the gains (as benchmarks/evidence_check.py).

    OMP_NUM_THREADS=1 python benchmarks/evidence_within.py [--model BUNDLE] [--quick]
        [--json FILE]

Without ``--model`` the BBBC013 part is skipped unless the bundle is trained first with
the command line (``--train``, about a minute on 2 cores).
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PLATE = ROOT.parent / "shared" / "data" / "bbbc013"
sys.path.insert(0, str(ROOT / "src"))

from napari_attribution.core.attribution.evidence import (  # noqa: E402
    WITHIN_NULLS,
    EvidenceConfig,
    evidence_check,
)
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_check import wilson  # noqa: E402

#: BBBC013 fields never used before (image-row-col; dose 8-9 and dose 1-2 of the dose
#: series, which the bundle is not trained on), split tune / report
FIELDS = {"tune": ("34-C-10", "27-C-03"),
          "report": ("47-D-11", "58-E-10", "40-D-04", "51-E-03")}
#: ``--confirm``: a report half looked at by nobody before the null and threshold were
#: set from the runs above (synthetic seed 3, four more dose-series fields)
CONFIRM_FIELDS = ("70-F-10", "71-F-11", "63-F-03", "64-F-04")
CONFIRM_SEED = 3
NEGATIVE = ("random", "smooth", "anti-truth")
POSITIVE = ("pcim", "truth")


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.5
                 ) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(rng.random(shape[-2:]), sigma)
                     for _ in range(shape[0])]).astype(np.float32)


def cell_maps(clf, prep, labels: np.ndarray, ids, steps: int, rng,
              truth: np.ndarray | None = None) -> dict:
    """Explain the objects ``ids`` of ``labels`` within their cells (as the dock) and
    build every map of the module docstring for them; crops, regions and targets too."""
    from napari_attribution.core.attribution.point import (
        _crops,
        cell_regions,
        explain_labels,
    )
    from napari_attribution.core.evaluation.model_free import model_free_maps

    res = run_generator(explain_labels(clf, prep, labels, ids=ids, scope="cell",
                                       steps=steps, evidence=False, threads=1,
                                       crop_channels=False))
    x = _crops(prep, res.origins, clf)
    regions = cell_regions(labels, res.labels, prep, res.origins) > 0
    n = len(res)
    maps = {"pcim": res.maps,
            "random": rng.random((n, *x.shape[-2:])).astype(np.float32),
            "smooth": smooth_noise(rng, (n, *x.shape[-2:])),
            "image": model_free_maps("image", x)}
    if truth is not None:
        from napari_attribution.core.attribution.point import mask_fraction

        s, f = prep.crop, prep.factor
        tm = np.stack([mask_fraction(truth[y * f:(y + s) * f, xx * f:(xx + s) * f], f)
                       for y, xx in res.origins]) > 0.5
        maps["truth"] = (tm & regions).astype(np.float32)
        maps["anti-truth"] = (~tm & regions).astype(np.float32)
    return {"x": x, "regions": regions, "targets": res.targets, "maps": maps,
            "probabilities": res.probabilities, "labels": res.labels}


def synthetic_cells(steps: int, n_images: int, epochs: int, seed_of: dict) -> dict:
    """A DCMIX model on the synthetic sample; cells of test images of other seeds."""
    from scipy import ndimage as ndi

    from napari_attribution.core.attribution.point import prepare_field
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.data.synthetic import make_cell_phenotype
    from napari_attribution.core.models.inference import ModelScale
    from napari_attribution.io.models import from_train_result

    size = 32
    train = make_cell_phenotype(n_images=400, size=size, seed=0)
    t0 = time.perf_counter()
    res = run_generator(train_dcmix(train, TrainConfig(epochs=epochs, batch_size=32,
                                                       device="cpu", seed=0, width=16)))
    clf = from_train_result(res)
    print(f"synthetic model: {time.perf_counter() - t0:.0f} s, val balanced accuracy "
          f"{res.val_balanced_accuracy:.3f}", flush=True)
    out = {}
    for half, seed in seed_of.items():
        data = make_cell_phenotype(n_images=n_images, size=size, seed=seed)
        rng = np.random.default_rng(100 + seed)
        parts: list[dict] = []
        for i in range(n_images):
            lab, k = ndi.label(data.metadata["nuclei"][i])
            if k == 0:
                continue
            prep = prepare_field(clf, data.images[i], ModelScale(1, size))
            part = cell_maps(clf, prep, lab, None, steps, rng, truth=data.masks[i])
            part["true_class"] = np.full(len(part["targets"]), data.labels[i])
            parts.append(part)
        out[half] = _concat(parts)
        acc = float(np.mean(out[half]["targets"] == out[half]["true_class"]))
        print(f"synthetic/{half}: {len(out[half]['targets'])} cells of {n_images} images "
              f"(seed {seed}), predicted class right for {acc:.2f}", flush=True)
    return {"clf": clf, "halves": out, "val_balanced_accuracy": res.val_balanced_accuracy}


def bbbc013_cells(clf, fields: dict, steps: int, per_field: int) -> dict:
    import tifffile

    from napari_attribution.core.attribution.point import prepare_field, segment_field
    from napari_attribution.core.data.segmentation import object_centres
    from napari_attribution.core.models.inference import ModelScale

    scale = ModelScale.from_provenance(clf.provenance)
    if scale.input_size is None and clf.input_size:
        scale = ModelScale(scale.downsample, int(clf.input_size))
    out = {}
    for half, wells in fields.items():
        parts = []
        for n, well in enumerate(wells):
            t0 = time.perf_counter()
            field = np.stack([tifffile.imread(PLATE / f"Channel{c}-{well}.tif")
                              for c in (1, 2)])
            prep = prepare_field(clf, field, scale)
            seg = segment_field(field, clf.channel_names, scale)
            ids, centres = object_centres(seg.labels)
            rng = np.random.default_rng(7 + n + (0 if half == "tune" else 50))
            pick = rng.permutation(ids)[:per_field]
            part = cell_maps(clf, prep, seg.labels, pick, steps, rng)
            part["field"] = np.array([well] * len(part["targets"]))
            parts.append(part)
            print(f"bbbc013/{half} {well}: {len(pick)} of {len(ids)} cells, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        out[half] = _concat(parts)
    return out


def _concat(parts: list[dict]) -> dict:
    out: dict = {}
    for key in parts[0]:
        if key == "maps":
            out["maps"] = {m: np.concatenate([p["maps"][m] for p in parts])
                           for m in parts[0]["maps"]}
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def run_checks(clf, cells: dict, null: str) -> dict:
    """The within-cell check (no threshold) of every map of ``cells`` with ``null``."""
    from napari_attribution.core.models.classifier import frozen

    cfg = EvidenceConfig(within_null=null, min_gain=-1e9)
    out = {}
    with frozen(clf.module, "cpu") as model:
        for name, m in cells["maps"].items():
            out[name] = evidence_check(model, cells["x"], m, cells["targets"], cfg,
                                       within=cells["regions"])
    return out


def states(ev: dict, min_gain: float, saturation: float = 0.99) -> np.ndarray:
    gain, beats = np.asarray(ev["gain"]), np.asarray(ev["beats_all_random"])
    sat = np.asarray(ev["p_min"]) >= saturation
    return np.where((gain >= min_gain) & beats, "localised",
                    np.where(sat, "undetermined", "none"))


def rate(st: np.ndarray, what: str = "localised") -> dict:
    k, n = int((st == what).sum()), int(st.size)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci": [lo, hi]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a BBBC013-trained bundle")
    ap.add_argument("--train", action="store_true",
                    help="train a BBBC013 bundle first when --model is not given")
    ap.add_argument("--steps", type=int, default=None, help="PCIM steps (dock's default)")
    ap.add_argument("--images", type=int, default=40, help="synthetic images per half")
    ap.add_argument("--per-field", type=int, default=40, help="BBBC013 cells per field")
    ap.add_argument("--epochs", type=int, default=10, help="synthetic model epochs")
    ap.add_argument("--quick", action="store_true", help="12 images, 12 cells per field")
    ap.add_argument("--confirm", action="store_true",
                    help="report on fresh cells (synthetic seed 3, fields "
                         f"{', '.join(CONFIRM_FIELDS)}) instead of the usual report half")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                    "evidence_within.json")
    args = ap.parse_args()
    from napari_attribution.core.attribution.point import POINT_STEPS

    steps = args.steps or POINT_STEPS
    if args.quick:
        args.images, args.per_field, args.epochs = 12, 12, 6
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    fields = dict(FIELDS)
    report_seed = 2
    if args.confirm:
        fields["report"], report_seed = CONFIRM_FIELDS, CONFIRM_SEED
    syn = synthetic_cells(steps, args.images, args.epochs, {"tune": 1,
                                                            "report": report_seed})
    data = {"synthetic": (syn["clf"], syn["halves"])}
    model = args.model
    if model is None and args.train and (PLATE / "1049_Metadata.csv").exists():
        model = Path(tempfile.mkdtemp()) / "bbbc013.safetensors"
        subprocess.run([sys.executable, "-m", "napari_attribution.cli", "train", "--plate",
                        str(PLATE), "--bbbc013", "--epochs", "6", "--per-image", "32",
                        "-o", str(model), "--overwrite", "-q"], check=True,
                       stdout=subprocess.DEVNULL)
    if model is not None and (PLATE / "1049_Metadata.csv").exists():
        from napari_attribution.io.models import load_model

        clf = load_model(model)
        data["bbbc013"] = (clf, bbbc013_cells(clf, fields, steps, args.per_field))
    else:
        print("BBBC013 part skipped (no --model/--train, or the plate is absent)")

    # every null on every part and half, once, without a threshold
    checks = {null: {part: {half: run_checks(clf, cells, null)
                            for half, cells in halves.items()}
                     for part, (clf, halves) in data.items()}
              for null in WITHIN_NULLS}

    # tune: per null, min_gain = the largest 95th percentile of one negative control's
    # gains (each kind of map, each part) on the tune half, at least the library's
    # 0.5 nats; then how many positives pass. The null with the most positives passing
    # at its own min_gain is chosen.
    tuning = {}
    for null in WITHIN_NULLS:
        q95s = {f"{p}/{m}": float(np.quantile(checks[null][p]["tune"][m]["gain"], 0.95))
                for p in checks[null] for m in NEGATIVE if m in checks[null][p]["tune"]}
        q95 = max(q95s.values())
        chosen = round(max(EvidenceConfig().min_gain, q95), 2)
        tuning[null] = {"negative_gain_q95": {k: round(v, 3) for k, v in q95s.items()},
                        "min_gain": chosen}
        for mg in sorted({EvidenceConfig().min_gain, chosen}):
            pos = np.concatenate([states(checks[null][p]["tune"][m], mg)
                                  for p in checks[null] for m in POSITIVE
                                  if m in checks[null][p]["tune"]])
            negs = np.concatenate([states(checks[null][p]["tune"][m], mg)
                                   for p in checks[null] for m in NEGATIVE
                                   if m in checks[null][p]["tune"]])
            tuning[null][f"at_{mg}"] = {"positives_localised": rate(pos),
                                        "negatives_localised": rate(negs)}
        print(f"tune {null}: negatives' gain q95 up to {q95:.2f} -> min_gain {chosen}; "
              f"{json.dumps({k: v for k, v in tuning[null].items() if k.startswith('at')})}",
              flush=True)

    best = max(WITHIN_NULLS, key=lambda nl: tuning[nl][f"at_{tuning[nl]['min_gain']}"][
        "positives_localised"]["rate"])
    print(f"chosen on the tune half: null {best}, min_gain {tuning[best]['min_gain']}",
          flush=True)

    # report half: every null at the library's min_gain and at its tuned one
    table = []
    for null in WITHIN_NULLS:
        for mg in sorted({EvidenceConfig().min_gain, tuning[null]["min_gain"]}):
            for part in checks[null]:
                ev_all = checks[null][part]["report"]
                for m, ev in ev_all.items():
                    st = states(ev, mg)
                    kind = ("negative" if m in NEGATIVE else "positive" if m in POSITIVE
                            else "model-free")
                    row = {"null": null, "min_gain": mg, "part": part, "map": m,
                           "kind": kind, "localised": rate(st),
                           "undetermined": rate(st, "undetermined"),
                           "median_gain": round(float(np.median(ev["gain"])), 3)}
                    table.append(row)
    print("\nReport half (cells never used for tuning):")
    print("| null | min_gain | cells | map | control | n | 'localised' [95 % CI] | "
          "'undetermined' | median gain (nats) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        lo, hi = r["localised"]["ci"]
        print(f"| {r['null']} | {r['min_gain']} | {r['part']} | {r['map']} | {r['kind']} "
              f"| {r['localised']['n']} | {r['localised']['rate']:.2f} [{lo:.2f}, {hi:.2f}]"
              f" | {r['undetermined']['rate']:.2f} | {r['median_gain']:+.2f} |")
    extra: dict = {"by_class": []}
    print("\nBy predicted class (report half; the library's null and min_gain, and the "
          "tuned ones):")
    print("| null | min_gain | cells | class | map | n | 'localised' [95 % CI] | "
          "median gain |")
    print("|---|---|---|---|---|---|---|---|")
    dflt = EvidenceConfig()
    for null, mg in sorted({(dflt.within_null, dflt.within_min_gain or dflt.min_gain),
                            (best, tuning[best]["min_gain"])}):
        for part, (clf, halves) in data.items():
            tg = halves["report"]["targets"]
            for c, cname in enumerate(clf.class_names):
                sel = tg == c
                if not sel.any():
                    continue
                for m, ev in checks[null][part]["report"].items():
                    r = rate(states(ev, mg)[sel])
                    g = float(np.median(np.asarray(ev["gain"])[sel]))
                    extra["by_class"].append({"null": null, "min_gain": mg, "part": part,
                                              "class": cname, "map": m, "localised": r,
                                              "median_gain": round(g, 3)})
                    print(f"| {null} | {mg} | {part} | {cname} | {m} | {r['n']} | "
                          f"{r['rate']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] | "
                          f"{g:+.2f} |")
    syn_rep = data["synthetic"][1]["report"]
    pc = syn_rep["maps"]["pcim"]
    truth = syn_rep["maps"]["truth"] > 0
    pos = np.clip(pc, 0, None)
    share = (pos * truth).sum((1, 2)) / np.maximum(pos.sum((1, 2)), 1e-12)
    extra["synthetic_pcim_share_in_truth"] = round(float(np.median(share)), 3)
    extra["synthetic_truth_share_of_cell"] = round(float(np.median(
        truth.sum((1, 2)) / np.maximum(syn_rep["regions"].sum((1, 2)), 1))), 3)
    print(f"\nsynthetic report: median share of PCIM's positive evidence on the marker's "
          f"compartment {extra['synthetic_pcim_share_in_truth']} (the compartment is "
          f"{extra['synthetic_truth_share_of_cell']} of the cell)")
    out = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": platform.machine(), "torch": torch.__version__,
           "args": {k: str(v) for k, v in vars(args).items()}, "steps": steps,
           "fields": fields, "synthetic_seeds": {"tune": 1, "report": report_seed},
           "library_default": {"within_null": EvidenceConfig().within_null,
                               "within_min_gain": EvidenceConfig().within_min_gain},
           "synthetic_val_balanced_accuracy":
           syn["val_balanced_accuracy"], "tuning": tuning, "chosen": {
               "within_null": best, "min_gain": tuning[best]["min_gain"]},
           "report": table, **extra,
           "seconds": round(time.perf_counter() - t_all, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=float))
    print(f"{time.perf_counter() - t_all:.0f} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
