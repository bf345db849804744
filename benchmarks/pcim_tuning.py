"""PCIM formulation study: variants against Integrated Gradients (a script, not a test).

Same models and image sets as ``pixel_attribution.py`` (synthetic cells, MNIST, BBBC013
positive/negative controls); for each PCIM variant the deletion and insertion AUC, the
relevance mass (where masks exist) and ms per image, next to IG on the same images.
This is how the defaults in ``core/pcim.py`` were chosen.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pcim_tuning.py [--sets synthetic,mnist]

Prints a markdown table; writes JSON to benchmarks/results/pcim_tuning.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pixel_attribution as pa  # noqa: E402
from napari_attribution.core.attribution.pcim import PCIMConfig  # noqa: E402
from napari_attribution.core.evaluation.comparison import evaluate_methods  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402

VARIANTS: dict[str, dict] = {
    "defaults (keep on blur + delete to zero)": {},
    "zero substrate for both games": {"preserve_substrate": "zero"},
    "blur substrate for both games": {"substrate": "blur"},
    "preservation game only": {"game": "preserve"},
    "12 steps": {"steps": 12},
    "lr 1.0": {"lr": 1.0},
}
METRICS = ("deletion", "insertion", "relevance_mass")


def score(s: dict, method: str, params: dict, batch: int) -> dict:
    rows, _ = run_generator(evaluate_methods(
        s["model"], s["images"], s["targets"], s["masks"], [method],
        METRICS if s["masks"] is not None else METRICS[:2], batch_size=batch,
        method_params={method: params}))
    return rows[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pa.add_set_arguments(ap)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    metavar="NAME", help=f"variants to run (default: all of {list(VARIANTS)})")
    args = ap.parse_args()
    sets = pa.load_sets(args)
    names = args.variants
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "defaults": PCIMConfig().to_dict(), "sets": {}}
    lines = ["| set | variant | deletion ↓ | insertion ↑ | relevance mass ↑ | ms/image |",
             "|---|---|---|---|---|---|"]
    for set_name, s in sets.items():
        rows = {"integrated_gradients": score(s, "integrated_gradients", {}, args.batch)}
        for v in names:
            t0 = time.perf_counter()
            rows[v] = score(s, "pcim", VARIANTS[v], args.batch)
            print(f"{set_name} / {v}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        report["sets"][set_name] = rows
        for v, r in rows.items():
            lines.append(f"| {set_name} | {v} | {pa.fmt(r['deletion_auc'])} | "
                         f"{pa.fmt(r['insertion_auc'])} | {pa.fmt(r.get('relevance_mass'))} | "
                         f"{r['ms_per_image']:.1f} |")
    table = "\n".join(lines)
    print(table)
    report["markdown"] = table
    out = pa.RESULTS / "pcim_tuning.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
