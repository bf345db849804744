"""BBBC013 end to end: train DCMIX on the controls, score the dose series, explain with PCIM.

    python benchmarks/bbbc013_end_to_end.py [--data ../shared/data/bbbc013] [--epochs 15]

Steps (see docs/bbbc013.md):
1. Crops centred on nuclei (segmented on DNA) from the 24 control wells; DCMIX trained with
   the package defaults, split by well. Reports GFP vs DNA importance (weights, ablation).
2. Every one of the 96 wells scored, one field at a time: the well's probability of
   "nuclear GFP" is the sigmoid of the mean crop log-odds (crop probabilities saturate
   near 0 and 1; wells are ranked by the log-odds; the mean probability is reported
   too). Spearman with dose over the 72 dose-series wells; plotted (probability and
   log-odds) to docs/images/bbbc013_dose_response.png.
3. PCIM maps for control crops of the validation wells: relevance mass inside the nuclei
   and in the GFP-positive cytoplasm, each against the area fraction of that mask; an
   overlay figure to docs/images/bbbc013_pcim.png.
Writes JSON to benchmarks/results/bbbc013_end_to_end.json plus the bundle, importance CSV and
attribution OME-TIFF under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bbbc013"


def _cytoplasm_masks(gfp: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """GFP-positive cytoplasm per crop: blurred GFP above its Otsu threshold, minus nuclei."""
    from skimage.filters import gaussian, threshold_otsu

    out = []
    for g, n in zip(gfp, nuclei, strict=True):
        sm = gaussian(g, sigma=1.0, preserve_range=True)
        out.append((sm > threshold_otsu(sm) if sm.max() > sm.min() else sm > 0) & ~n)
    return np.stack(out)


def _dose_plot(path: Path, table: list[dict], rho: float) -> None:
    """Well score against dose: the probability (left) and the mean log-odds it comes
    from (right), where the plateaus of the probability still show their order."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), dpi=110)
    axes = fig.subplots(1, 2)
    series = [r for r in table if r["control"] == 0]
    doses = sorted({r["dose"] for r in series})
    for ax, key, ylabel in ((axes[0], "p_nuclear", "P(nuclear GFP) of the well"),
                            (axes[1], "log_odds", "mean crop log-odds of nuclear GFP")):
        rng = np.random.default_rng(0)
        for control, colour, label in [(0, "tab:blue", "dose series"),
                                       (-1, "tab:orange", "negative controls"),
                                       (1, "tab:green", "positive controls")]:
            rows = [r for r in table if r["control"] == control]
            jitter = rng.uniform(-0.15, 0.15, len(rows))
            ax.scatter([r["dose"] + j for r, j in zip(rows, jitter, strict=True)],
                       [r[key] for r in rows], s=18, c=colour, label=label, alpha=0.8)
        means = [np.mean([r[key] for r in series if r["dose"] == d]) for d in doses]
        ax.plot(doses, means, "k-", lw=1, label="mean per dose")
        ax.set_xlabel("dose (SBS_Doses)")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"BBBC013: the well score rises with dose (Spearman {rho:.3f} over the "
                 f"{len(series)} dose-series wells)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=ROOT / "demo_output" / "bbbc013")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--crop-size", type=int, default=48, help="crop side after downsampling")
    p.add_argument("--downsample", type=int, default=2)
    p.add_argument("--per-image", type=int, default=48, help="training crops per control well")
    p.add_argument("--score-per-image", type=int, default=0,
                   help="crops scored per well (0 = every nucleus)")
    p.add_argument("--pcim-per-class", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    p.add_argument("--results", type=Path,
                   default=ROOT / "benchmarks" / "results" / "bbbc013_end_to_end.json")
    args = p.parse_args(argv)
    if not (args.data / "1049_Metadata.csv").exists():
        print(f"BBBC013 not found at {args.data}; nothing to do")
        return 1

    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.evaluation.metrics import relevance_mass, spearman
    from napari_attribution.core.runtime.progress import run_generator
    from napari_attribution.io.bundle import load_bundle, save_training_result
    from napari_attribution.io.figures import save_overlay_figure
    from napari_attribution.io.plate import load_bbbc013, open_bbbc013, take
    from napari_attribution.io.writers import (
        write_attribution_tiff,
        write_channel_weights_tiff,
        write_importance_csv,
    )

    t0 = time.perf_counter()
    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v
                                 for k, v in vars(args).items()},
                    "machine": {"python": platform.python_version(),
                                "platform": platform.platform()},
                    "date": time.strftime("%Y-%m-%d")}
    common = dict(crop_size=args.crop_size, downsample=args.downsample, crops="nuclei",
                  seed=args.seed)

    # 1. train on the controls
    data = load_bbbc013(args.data, controls_only=True, per_image=args.per_image, **common)
    print(f"loaded {len(data)} control crops {data.images.shape[1:]} from "
          f"{np.unique(data.groups).size} wells in {time.perf_counter() - t0:.1f} s")
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device)
    result = run_generator(train_dcmix(data, cfg),
                           lambda ev: print(ev.message) if "validation" in ev.message else None)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle_path = save_training_result(args.out / "bbbc013_dcmix.safetensors", result)
    bundle = load_bundle(bundle_path)
    imp = result.importance
    write_importance_csv(args.out / "bbbc013_channel_importance.csv", imp,
                         provenance=result.provenance())
    write_channel_weights_tiff(args.out / "bbbc013_dcmix_weights.ome.tif", imp,
                               {**result.provenance(), "model_sha256": bundle.sha256})
    report["training"] = {
        "crops": len(data), "val_wells": sorted(set(data.groups[result.val_index])),
        "val_accuracy": result.val_accuracy, "seconds": round(result.seconds, 1),
        "importance": imp.as_dict(),
        "val_balanced_accuracy": result.val_balanced_accuracy,
        "ablation_balanced_accuracy_drop": dict(zip(
            imp.channel_names, imp.ablation_accuracy_drop.tolist(), strict=True)),
        "warnings": result.warnings,
    }
    print(f"validation accuracy {result.val_accuracy:.3f}; importance {imp.as_dict()}; "
          f"ablation (balanced accuracy drop) "
          f"{report['training']['ablation_balanced_accuracy_drop']}")

    # 2. score every well, one field at a time; Spearman with dose over the dose series
    table = []
    plate = open_bbbc013(args.data)
    for fc in plate.iter_crops("nuclei", crop_size=args.crop_size,
                               per_image=args.score_per_image or None,
                               downsample=args.downsample, seed=args.seed):
        # crops of per-field normalised fields: the bundle uses them as they are
        z = bundle.predict_logits(fc, device=args.device).astype(np.float64)
        logit = z[:, 1] - z[:, 0]  # log-odds of "nuclear GFP", unclipped
        proba = 1 / (1 + np.exp(-logit))
        # the assay's hand-crafted readout, for reference: GFP inside / outside nuclei
        gfp = fc.images[:, plate.channel_names.index("GFP")]
        ratio = [g[m].mean() / max(g[~m].mean(), 1e-6) for g, m in zip(gfp, fc.masks,
                                                                       strict=True) if m.any()]
        table.append({"well": fc.fov.well, "dose": float(fc.info.dose),
                      "control": int(fc.info.control),
                      "log_odds": float(logit.mean()),
                      "p_nuclear": float(1 / (1 + np.exp(-logit.mean()))),
                      "p_nuclear_mean": float(proba.mean()), "crops": len(proba),
                      "gfp_nuclear_ratio": float(np.median(ratio))})
    series = [r for r in table if r["control"] == 0]
    dose = np.array([r["dose"] for r in series])
    # ranked by the mean log-odds (the same order as P, without float saturation ties)
    rho = spearman(dose, np.array([r["log_odds"] for r in series]))
    rho_mean = spearman(dose, np.array([r["p_nuclear_mean"] for r in series]))
    rho_ratio = spearman(dose, np.array([r["gfp_nuclear_ratio"] for r in series]))
    mid = (dose >= 3) & (dose <= 6)
    rho_mid = spearman(dose[mid], np.array([r["log_odds"] for r in series])[mid])
    per_dose = {d: float(np.mean([r["p_nuclear"] for r in series if r["dose"] == d]))
                for d in sorted(set(dose.tolist()))}
    report["dose_series"] = {"spearman_wells": rho, "spearman_wells_mean_p": rho_mean,
                             "spearman_wells_gfp_ratio_reference": rho_ratio,
                             "spearman_doses_3_to_6": rho_mid,
                             "wells": len(series), "mean_p_by_dose": per_dose,
                             "table": table}
    _dose_plot(args.images / "bbbc013_dose_response.png", table, rho)
    print(f"dose series: Spearman(dose, P(nuclear)) over {len(series)} wells = {rho:.3f} "
          f"(well P = sigmoid of the mean crop logit; with the mean crop P: {rho_mean:.3f})")
    print(f"  within doses 3-6: {rho_mid:.3f}; reference GFP nuclear/cytoplasm ratio: "
          f"{rho_ratio:.3f}")
    print("  P by dose: " + ", ".join(f"{d:g}:{v:.2f}" for d, v in per_dose.items()))

    # 3. PCIM on control crops of the validation wells
    val = take(data, result.val_index)
    rng = np.random.default_rng(args.seed)
    pick: list[int] = []
    for cls in (0, 1):
        idx = np.flatnonzero(val.labels == cls)
        pick += sorted(rng.choice(idx, min(args.pcim_per_class, idx.size), replace=False))
    sub = take(val, np.asarray(pick))
    res = run_generator(explain(bundle.model, bundle.prepare(sub), targets=sub.labels,
                                method="pcim", device=args.device))
    nuclei = sub.masks.astype(bool)
    cytoplasm = _cytoplasm_masks(sub.images[:, sub.channel_names.index("GFP")], nuclei)
    pcim: dict = {"seconds": round(res.seconds, 1), "params": res.params}
    for cls, name in ((1, "positive"), (0, "negative")):
        s = sub.labels == cls
        m_nuc = float(np.nanmean(relevance_mass(res.maps[s], nuclei[s])))
        m_cyt = float(np.nanmean(relevance_mass(res.maps[s], cytoplasm[s])))
        a_nuc = float(nuclei[s].mean())
        a_cyt = float(cytoplasm[s].mean())
        pcim[name] = {"crops": int(s.sum()), "mass_in_nuclei": m_nuc, "nuclei_area": a_nuc,
                      "nuclei_ratio": m_nuc / a_nuc, "mass_in_cytoplasm": m_cyt,
                      "cytoplasm_area": a_cyt, "cytoplasm_ratio": m_cyt / a_cyt}
        print(f"PCIM {name}: mass in nuclei {m_nuc:.3f} (area {a_nuc:.3f}, ratio "
              f"{m_nuc / a_nuc:.2f}); in GFP+ cytoplasm {m_cyt:.3f} (area {a_cyt:.3f}, ratio "
              f"{m_cyt / a_cyt:.2f})")
    report["pcim"] = pcim
    prov = {**res.provenance(), "model_sha256": bundle.sha256,
            "normalization": bundle.normalizer.to_dict(), "wells": sub.metadata["well"],
            "data": "BBBC013 control crops of validation wells"}
    write_attribution_tiff(args.out / "bbbc013_pcim_maps.ome.tif", res.maps, provenance=prov)
    show = np.r_[np.flatnonzero(sub.labels == 1)[:3], np.flatnonzero(sub.labels == 0)[:3]]
    save_overlay_figure(args.images / "bbbc013_pcim.png", sub.images[show], res.maps[show],
                        sub.channel_names, masks=nuclei[show], overlay_channel=0,
                        titles=[f"{sub.class_names[sub.labels[i]]}\n{sub.metadata['well'][i]}"
                                for i in show])
    report["seconds_total"] = round(time.perf_counter() - t0, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2, default=str))
    print(f"done in {report['seconds_total']} s; report {args.results}")
    neg = pcim["negative"]
    ok = (rho >= 0.9 and pcim["positive"]["nuclei_ratio"] >= 2
          and neg["mass_in_cytoplasm"] > neg["mass_in_nuclei"])
    print("targets met" if ok else "targets NOT met (Spearman >= 0.9, positives' nuclei ratio "
          ">= 2, negatives' mass in cytoplasm > in nuclei)")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
