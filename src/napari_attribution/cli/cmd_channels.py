"""``napari-attribution channels``: bundle -> channel importance table."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from ..core.importance import ChannelImportance
from ._checks import add_overwrite_argument


def format_importance(imp: ChannelImportance, fmt: str = "text") -> str:
    """Render channel importance as an aligned text table, CSV or JSON."""
    rows = imp.rows()
    if fmt == "json":
        return json.dumps({"channels": rows, "ranking": imp.ranking(),
                           "head_effect": imp.head_effect.tolist(),
                           "baseline_accuracy": imp.baseline_accuracy}, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    order = {n: i for i, n in enumerate(imp.ranking())}
    rows = sorted(rows, key=lambda r: order[r["channel"]])
    width = max(8, *(len(r["channel"]) for r in rows))
    lines = [f"{'channel':<{width}}  importance  {'':<20}  ablation (acc drop)"]
    for r in rows:
        bar = "#" * int(round(20 * r["importance"]))
        abl = (f"{r['ablation_importance']:.3f} ({r['ablation_accuracy_drop']:+.3f})"
               if "ablation_importance" in r else "-")
        lines.append(f"{r['channel']:<{width}}  {r['importance']:10.3f}  {bar:<20}  {abl}")
    if imp.weights.shape[0] > 1:
        lines.append("heads' downstream effect: " +
                     ", ".join(f"{e:.3f}" for e in imp.head_effect))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import BundleError
    from ..io.atomic import atomic_write_text, check_output
    from .model_args import load_from_args

    if args.output:
        check_output(args.output, args.overwrite, "channel importance")
    clf = load_from_args(args, "bundle")
    if clf.importance is None:
        raise BundleError(f"{args.bundle} holds no channel importance (only DCMIX bundles "
                          "trained with a mixing layer do; for other models use "
                          "'explain --per-channel')")
    text = format_importance(clf.importance, args.format)
    if args.output:
        atomic_write_text(args.output, text + ("\n" if not text.endswith("\n") else ""),
                          args.overwrite, "channel importance")
        print(f"written to {args.output}")
    else:
        print(text)
    return 0


def register(sub) -> None:
    p = sub.add_parser("channels", help="print a bundle's channel importance",
                       description="Channel importance of a trained DCMIX bundle: mixing "
                                   "weights (effect-weighted over heads) beside the "
                                   "channel-ablation check.")
    from .model_args import MODEL_HELP, add_trust_argument

    p.add_argument("bundle", type=Path, help=MODEL_HELP)
    add_trust_argument(p)
    p.add_argument("--format", choices=("text", "csv", "json"), default="text")
    p.add_argument("-o", "--output", type=Path)
    add_overwrite_argument(p)
    p.set_defaults(func=run)
