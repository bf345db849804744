"""Insertion from zero: PCIM's default games vs ``game="hybrid3"`` vs Integrated Gradients.

IG (50 steps, black baseline) wins insertion from zero on the synthetic cells (0.961 vs
PCIM's 0.801 on fresh images, ``fidelity.py``): PCIM's preservation game keeps the class
on a *blurred* background, never on black. ``hybrid3`` adds a third game, preservation on
a black background, in a cycle of three (same passes per step). Seed 1 = the tuning
images (``pcim_tuning.py``'s), seed 2 = fresh images (``fidelity.py``'s); the model is
trained on seed 0 as in both. Paired 95 % bootstrap intervals of the differences.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/insertion_zero.py --seed 2 [--n-images 64]

Writes benchmarks/results/insertion_zero_seed<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_attribution as pa  # noqa: E402
from napari_attribution.core.attribution.explain import explain  # noqa: E402
from napari_attribution.core.data.synthetic import make_cell_phenotype  # noqa: E402
from napari_attribution.core.evaluation.metrics import FIDELITY_METRICS, bootstrap_interval  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402

VARIANTS = {"PCIM": ("pcim", {}), "PCIM-hybrid3": ("pcim", {"game": "hybrid3"}),
            "IG50": ("integrated_gradients", {"n_steps": 50})}
METRICS = ("insertion_zero", "insertion_mean", "road_morf", "road_lerf", "deletion_mean",
           "deletion_blur", "deletion", "insertion")


def _cell(ci) -> str:
    return f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2, help="1 = tuning images, 2 = fresh")
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = pa._train(make_cell_phenotype(n_images=400, size=48, seed=0), args.epochs)
    test = make_cell_phenotype(n_images=args.n_images, size=48, seed=args.seed)
    x, t, model = res.normalizer(test.images), test.labels, res.model.eval()
    scores, secs = {}, {}
    for label, (method, params) in VARIANTS.items():
        t0 = time.perf_counter()
        maps = run_generator(explain(model, x, t, method=method, device="cpu",
                                     **params)).maps
        secs[label] = time.perf_counter() - t0
        scores[label] = {m: FIDELITY_METRICS[m].scores(model, x, maps, t, seed=1)
                         for m in METRICS}
    lines = ["| metric | " + " | ".join(VARIANTS) + " | hybrid3 - PCIM | hybrid3 - IG50 |",
             "|---|" + "---|" * (len(VARIANTS) + 2)]
    out = {}
    for m in METRICS:
        arrow = "↑" if FIDELITY_METRICS[m].higher_is_better else "↓"
        means = {k: bootstrap_interval(scores[k][m], seed=1) for k in VARIANTS}
        d_p = bootstrap_interval(scores["PCIM-hybrid3"][m] - scores["PCIM"][m], seed=1)
        d_i = bootstrap_interval(scores["PCIM-hybrid3"][m] - scores["IG50"][m], seed=1)
        out[m] = {"means": means, "hybrid3_minus_pcim": d_p, "hybrid3_minus_ig50": d_i}
        lines.append(f"| {m} {arrow} | " + " | ".join(f"{means[k][0]:.3f}" for k in VARIANTS)
                     + f" | {_cell(d_p)} | {_cell(d_i)} |")
    table = "\n".join(lines)
    print(f"synthetic cells, generator seed {args.seed} "
          f"({'tuning' if args.seed == 1 else 'fresh'}), {args.n_images} images")
    print(table)
    pa.RESULTS.mkdir(parents=True, exist_ok=True)
    path = pa.RESULTS / f"insertion_zero_seed{args.seed}.json"
    path.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args), "seconds": secs, "results": out, "markdown": table,
        "model_accuracy": pa._accuracy(model, x, t)}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
