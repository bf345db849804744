"""Which DCMIX readout tells the truth? Training options x readouts (a script, not a test).

On data where the answer is known (BBBC013 controls: GFP carries the phenotype, a
DNA-only classifier is at chance; the synthetic cells: only ``Marker`` does), train
DCMIX with and without the entropy prior and channel dropout, with one and two mixing
heads, and report for the informative channel: the raw per-head weights, their plain
average, the head-effect-weighted overall importance (the package's readout), and the
accuracy drop when the channel is ablated.

    python benchmarks/importance_readout.py [--epochs 10] [--seed 0] [--skip-bbbc]

Writes JSON to benchmarks/results/importance_readout.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_attribution.core.channels.training import TrainConfig, train_dcmix
from napari_attribution.core.data.synthetic import make_cell_phenotype
from napari_attribution.core.runtime.progress import run_generator

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

VARIANTS = [  # name, n_heads, entropy_weight, channel_dropout
    ("prototype (no prior, no dropout)", 1, 0.0, 0.0),
    ("entropy prior only", 1, 0.1, 0.0),
    ("channel dropout only", 1, 0.0, 0.2),
    ("defaults (prior + dropout)", 1, 0.1, 0.2),
    ("2 heads, prototype", 2, 0.0, 0.0),
    ("2 heads, defaults", 2, 0.1, 0.2),
]


def run_variants(data, informative: str, epochs: int, seed: int, **common) -> list[dict]:
    rows = []
    ci = data.channel_names.index(informative)
    for name, heads, ent, drop in VARIANTS:
        cfg = TrainConfig(epochs=epochs, seed=seed, n_heads=heads, entropy_weight=ent,
                          channel_dropout=drop, **common)
        t0 = time.perf_counter()
        res = run_generator(train_dcmix(data, cfg))
        imp = res.importance
        rows.append({
            "variant": name, "heads": heads, "entropy_weight": ent, "channel_dropout": drop,
            "val_accuracy": res.val_accuracy,
            "head_weights": [float(w) for w in imp.weights[:, ci]],
            "head_effect": [float(e) for e in imp.head_effect],
            "plain_mean": float(imp.weights[:, ci].mean()),
            "overall": float(imp.overall[ci]),
            "ablation_drop": float(imp.ablation_accuracy_drop[ci]),
            "other_max_ablation_drop": float(np.delete(imp.ablation_accuracy_drop, ci).max()),
            "seconds": round(time.perf_counter() - t0, 1),
        })
        print(f"  {name}: {informative} overall {imp.overall[ci]:.3f}", file=sys.stderr)
    return rows


def table(rows: list[dict], informative: str) -> str:
    out = [f"| variant | val acc | {informative} weight per head | plain mean of heads | "
           f"overall (head-effect weighted) | ablation acc drop {informative} | "
           "largest drop of another channel |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        heads = " / ".join(f"{w:.3f}" for w in r["head_weights"])
        out.append(f"| {r['variant']} | {r['val_accuracy']:.3f} | {heads} | "
                   f"{r['plain_mean']:.3f} | {r['overall']:.3f} | {r['ablation_drop']:.3f} | "
                   f"{r['other_max_ablation_drop']:.3f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-bbbc", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/importance_readout.json")
    args = ap.parse_args()
    report: dict = {"machine": f"{platform.node()} {platform.machine()}",
                    "date": time.strftime("%Y-%m-%d %H:%M"), "epochs": args.epochs,
                    "seed": args.seed}
    cells = make_cell_phenotype(n_images=400, size=48, seed=args.seed)
    report["cells"] = run_variants(cells, "Marker", args.epochs, args.seed, device=args.device)
    print("\nSynthetic cells (DNA, Marker, Membrane, Distractor; Marker informative)")
    print(table(report["cells"], "Marker"))
    if not args.skip_bbbc and (DATA / "bbbc013" / "1049_Metadata.csv").exists():
        from napari_attribution.io.plate import load_bbbc013

        data = load_bbbc013(DATA / "bbbc013", crop_size=48, downsample=2, per_image=48,
                            seed=args.seed)
        report["bbbc013"] = run_variants(data, "GFP", args.epochs, args.seed,
                                         device=args.device, val_fraction=0.25)
        print("\nBBBC013 controls, split by well (GFP informative; DNA-only is at chance)")
        print(table(report["bbbc013"], "GFP"))
    elif not args.skip_bbbc:
        print(f"skipping BBBC013: not found under {DATA}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
