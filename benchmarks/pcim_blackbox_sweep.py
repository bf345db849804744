"""Sweep black-box PCIM settings on the tuning split: ROAD-MoRF / gradient PCIM's (a script).

What black-box PCIM's defaults were chosen with (``pcim_blackbox.py`` has the full
report, with intervals and times). For every set and variant: the mean ROAD-MoRF over
the tuning images divided by gradient PCIM's, for each direction seed and their mean,
and the forward passes per image. ``--exact`` scores the variants' parameterisation
optimised with exact gradients instead (``pcim_blackbox.lowdim_gradient``: what a
perfect estimate would reach). Only ``--split tuning`` images are ever loaded.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pcim_blackbox_sweep.py \\
        --variants '{"5x5": {"grid": 5, "samples": 25}}' --sets mnist,bbbc013_pos \\
        --cache /tmp/pcim_blackbox_cache
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pcim_blackbox as pb  # noqa: E402
from napari_attribution.core.evaluation.metrics import FIDELITY_METRICS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", required=True, help="JSON {label: black-box params}")
    ap.add_argument("--sets", default="mnist,synthetic,bbbc013_pos,bbbc013_neg")
    ap.add_argument("--seeds", default="0,1", help="direction seeds")
    ap.add_argument("--n-images", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--exact", action="store_true", help="exact gradients (autograd)")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    road = FIDELITY_METRICS["road_morf"]
    variants = json.loads(args.variants)
    for name in args.sets.split(","):
        s = pb.load_set(name, "tuning", args.n_images, args.epochs, args.cache)
        if s is None:
            print(f"skipping {name}: its data is not in ../shared/data")
            continue
        model, x, t = s["model"], s["images"], s["targets"]
        maps, _ = pb.attribute(model, x, t, "pcim", {}, 32)
        base = float(road.scores(model, x, maps, t, seed=1).mean())
        print(f"{name}: {x.shape[0]} images, gradient PCIM ROAD-MoRF {base:.3f}", flush=True)
        for label, params in variants.items():
            ratios, passes = [], None
            seeds = [int(v) for v in args.seeds.split(",")]
            for seed in seeds[:1] if args.exact else seeds:   # exact: no directions
                p = {**params, "seed": seed}
                if args.exact:
                    maps = pb.lowdim_gradient(model, x, t, p)
                else:
                    maps, cost = pb.attribute(model, x, t, "pcim_blackbox", p, 32)
                    passes = cost["forward_per_image"]
                ratios.append(float(road.scores(model, x, maps, t, seed=1).mean()) / base)
            fwd = "exact gradients" if passes is None else f"{passes:.0f} forward passes"
            print(f"  {label:28s} {np.mean(ratios):.3f} "
                  f"({', '.join(f'{r:.3f}' for r in ratios)}), {fwd}", flush=True)


if __name__ == "__main__":
    main()
