"""``napari-attribution evaluate``: methods x metrics on one model and image set."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np

from ..core.evaluation.metrics import FIDELITY_METRICS
from ..core.evaluation.sanity import SANITY_MODES
from ..core.runtime.errors import InputError, UsageError
from ._checks import add_overwrite_argument, positive_int
from .model_args import add_model_arguments, load_from_args
from .progress_bar import run_with_bar

FIDELITY_COLUMNS = [f"{m}_auc" for m in FIDELITY_METRICS]
SANITY_COLUMNS = ["sanity_spearman", "sanity_worst", "sanity_abs_median", "sanity_abs_worst",
                  "sanity_labels_median", "sanity_labels_worst", "sanity_failing"]
COLUMNS = ["method", "model_free", *FIDELITY_COLUMNS, "pointing_game", "relevance_mass",
           *SANITY_COLUMNS, "forward_per_image", "backward_per_image", "ms_per_image",
           "peak_mib", "batch_size", "n_images"]
LABELS = {"sanity_spearman": "sanity rho median", "sanity_worst": "sanity rho worst",
          "sanity_abs_median": "sanity |map| rho med.",
          "sanity_abs_worst": "sanity |map| rho worst",
          "sanity_labels_median": "sanity labels rho med.",
          "sanity_labels_worst": "sanity labels rho worst", "sanity_failing": "sanity",
          "model_free": "model-free"}
VERDICT_MARK = {"win": "W", "tie": "=", "lose": "L"}


def load_eval_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None,
                                                      np.ndarray | None]:
    """(images, labels or None, masks or None) from ``--npz`` or ``--sample``."""
    if bool(args.npz) == bool(args.sample):
        raise UsageError("give exactly one of --npz or --sample")
    if args.sample:
        from .cmd_train import load_sample

        data = load_sample(args.sample, args.seed)
        return data.images, data.labels, data.masks
    if not args.npz.exists():
        raise InputError(f"file not found: {args.npz}")
    with np.load(args.npz, allow_pickle=False) as z:
        if "images" not in z:
            raise InputError(f"{args.npz} has no 'images' array (found {list(z.keys())})")
        images = z["images"]
        labels = z["labels"] if "labels" in z else None
        masks = z["masks"] if "masks" in z else None
    return images, labels, masks


def _trained(row: dict, col: str) -> bool:
    return col.removesuffix("_auc") in row.get("trained_on", [])


def _verdict(row: dict, col: str) -> str | None:
    return row.get("verdicts", {}).get(col.removesuffix("_auc"))


def format_rows(rows: list[dict], fmt: str) -> str:
    """Rows as a text table (one metric a line, methods as columns), CSV or JSON.

    A score on a perturbation the method optimises during attribution is marked ``*``
    in the text table and listed in the ``trained_on`` column of the CSV/JSON: it is
    not independent evidence of fidelity. Model-free baselines (maps that never look
    at the model) are marked ``model_free``; a method's verdict against them per metric
    (``W`` win, ``=`` tie, ``L`` lose: paired intervals against every baseline) follows
    its score in the text table and is in ``verdicts`` (JSON) / the ``verdicts`` column
    (CSV). How ties in the maps were broken is in ``ties``.
    """
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        fields = [*cols, "trained_on", "verdicts", "tie_breaking"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({**r, "trained_on": ";".join(r.get("trained_on", [])),
                     "verdicts": ";".join(f"{k}={v}" for k, v in r.get("verdicts", {}).items()),
                     "tie_breaking": _ties(r)} for r in rows)
        return buf.getvalue()
    width = max(12, *(len(r["method"]) + 3 for r in rows))
    lines = [f"{'metric':<24}" + "".join(
        f"{r['method'] + ('†' if r.get('model_free') else ''):>{width}}" for r in rows)]
    for c in cols[1:]:
        if c == "model_free":
            continue
        cells = []
        for r in rows:
            v = r.get(c)
            mark = "*" if _trained(r, c) else " "
            verdict = VERDICT_MARK.get(_verdict(r, c) or "", " ")
            if c == "sanity_failing":
                text = "n/a" if v is None else ("FAIL" if v else "pass")
                cells.append(f"{text:>{width - 1}} ")
            elif v is None:
                cells.append(f"{'n/a':>{width - 1}} ")
            elif isinstance(v, float):
                cells.append(f"{v:>{width - 2}.3f}{verdict}{mark}")
            else:
                cells.append(f"{v:>{width - 1}} ")
        lines.append(f"{_label(c):<24}" + "".join(cells))
    if any(r.get("trained_on") for r in rows):
        lines.append("* the method optimises this perturbation during attribution: "
                     "not independent evidence")
    if any(r.get("model_free") for r in rows):
        lines.append("† model-free baseline (the map never looks at the model); W / = / L: "
                     "the method beats every baseline / ties / loses to one (paired 95 % "
                     "bootstrap intervals over images)")
    if any("sanity_failing" in r for r in rows):
        lines.append("sanity: Spearman rho between the maps of the trained and of randomised "
                     "models (mean over images, per seed; median and worst over seeds); "
                     "FAIL: |rho| > 0.5 in any seed")
    notes = {r["sanity_labels_note"] for r in rows if "sanity_labels_note" in r}
    lines += [f"warning: {n}" for n in sorted(notes)]
    lines += _cascade_lines(rows, width)
    if rows and "ties" in rows[0]:
        lines.append(f"ties in the maps: {_ties(rows[0])} (largest tied share of a map: "
                     + ", ".join(f"{r['method']} {r['ties']['largest_tie_max']:.2f}"
                                 for r in rows if "ties" in r) + ")")
    return "\n".join(lines)


def _cascade_lines(rows: list[dict], width: int) -> list[str]:
    """The cascading randomisation as a block of text: one line per step (0: the trained
    model explained again; then the layers randomised cumulatively from the top, the
    last line every parameter), per method the median over seeds of ρ, signed/|map|."""
    casc = [(r["method"], r["sanity"]["cascade"]) for r in rows
            if "cascade" in r.get("sanity", {})]
    if not casc:
        return []
    out = ["", "sanity cascade: median rho over seeds (signed/|map|) after randomising the "
           "layers from the top down; the last step (every parameter) decides pass/fail",
           f"{'step: + layer':<32}" + "".join(f"{m:>{width}}" for m, _ in casc)]
    for i, st in enumerate(casc[0][1]["steps"]):
        name = "trained (rerun)" if st["randomised"] is None else f"+ {st['randomised']}"
        label = f"{st['step']}: {name}"
        label = label if len(label) <= 31 else label[:14] + "…" + label[-16:]
        out.append(f"{label:<32}" + "".join(
            f"{c['steps'][i]['median']:>{width - 6}.2f}/{c['steps'][i]['abs_median']:<5.2f}"
            for _, c in casc))
    return out


def _ties(row: dict) -> str:
    t = row.get("ties")
    return "" if not t else f"{t['rule']} order, seed {t['seed']}"


def _label(col: str) -> str:
    if col in LABELS:
        return LABELS[col]
    name = col.removesuffix("_auc")
    if name in FIDELITY_METRICS:
        return f"{name} ({'higher' if FIDELITY_METRICS[name].higher_is_better else 'lower'})"
    return col


def run(args: argparse.Namespace) -> int:
    from ..core.evaluation.comparison import evaluate_methods
    from ..core.evaluation.model_free import MODEL_FREE
    from ..io.atomic import atomic_write_text, check_output

    if args.output:
        check_output(args.output, args.overwrite, "evaluation table")  # before computing
    clf = load_from_args(args)
    images, labels, masks = load_eval_data(args)
    if args.n_images:
        images = images[:args.n_images]
        labels = None if labels is None else labels[:args.n_images]
        masks = None if masks is None else masks[:args.n_images]
    x = clf.prepare(np.asarray(images))
    targets = labels if args.target == "label" and labels is not None else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    if args.sanity and metrics is not None and "sanity" not in metrics:
        metrics.append("sanity")
    if args.sanity_labels and labels is None:
        raise InputError("--sanity-labels needs labels (an npz with 'labels', or --sample)")
    model_free = () if args.no_model_free else MODEL_FREE
    rows, _ = run_with_bar(evaluate_methods(clf.module, x, targets, masks, methods, metrics,
                                            device=args.device, batch_size=args.batch_size,
                                            seed=args.seed, model_free=model_free,
                                            sanity_seeds=args.sanity or 1, labels=labels,
                                            sanity_labels=args.sanity_labels,
                                            label_epochs=args.label_epochs,
                                            sanity_mode=args.sanity_mode),
                           quiet=args.quiet)
    text = format_rows(rows, args.format)
    if args.channel_check:
        text = _with_channel_check(text, rows, clf, x, labels, args)
    if args.output:
        atomic_write_text(args.output, text + "\n", args.overwrite, "evaluation table")
        print(f"written to {args.output}")
    else:
        print(text)
    return 0


def channel_check(clf, x: np.ndarray, labels: np.ndarray | None, seed: int = 0) -> dict:
    """Post-hoc channel importance (pixel permutation and Captum feature ablation) of
    any model on labelled images, beside the DCMIX weights when the model is a bundle."""
    from ..core.channels.posthoc import posthoc_channel_importance

    if labels is None:
        raise InputError("the channel check needs labels (an npz with 'labels', or "
                         "--sample)")
    names = list(clf.channel_names) or [f"channel_{i}" for i in range(x.shape[1])]
    out = {"posthoc_importance": [posthoc_channel_importance(
        clf.module, x, labels, names, m, seed=seed).to_dict()
        for m in ("permutation", "feature_ablation")]}
    if clf.importance is not None:
        out["dcmix_weights"] = clf.importance.as_dict()
    return out


def _with_channel_check(text: str, rows: list[dict], clf, x: np.ndarray,
                        labels: np.ndarray | None, args: argparse.Namespace) -> str:
    from ..core.channels.posthoc import PosthocImportance, format_posthoc

    check = channel_check(clf, x, labels, args.seed)
    if args.format == "json":
        return json.dumps({"methods": rows, **check}, indent=2)
    table = format_posthoc([PosthocImportance.from_dict(d)
                            for d in check["posthoc_importance"]])
    if "dcmix_weights" in check:
        table += "\nDCMIX weights: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                  check["dcmix_weights"].items())
    if args.format == "csv":
        return text  # the channel check has its own columns: use --format text or json
    return f"{text}\n\nchannel check (post-hoc, any model):\n{table}"


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="compare attribution methods with metrics",
                       description="Deletion/insertion AUC, ROAD, pointing game, "
                                   "relevance mass and the randomisation sanity check for "
                                   "several attribution methods on one model and image "
                                   "set, beside model-free baselines scored the same way.")
    add_model_arguments(p)
    p.add_argument("--npz", type=Path,
                   help=".npz with images (N,C,H,W)[, labels, masks (N,H,W)]")
    p.add_argument("--sample", choices=("cells", "multi-snr"), help="built-in synthetic data")
    p.add_argument("--methods", default="pcim,integrated_gradients,saliency,occlusion,gradcam",
                   help="comma-separated attribution methods to compare")
    p.add_argument("--metrics",
                   help="comma-separated metrics: road (= road_morf,road_lerf), "
                        f"{','.join(FIDELITY_METRICS)}, pointing_game, relevance_mass, "
                        "sanity (default: ROAD, deletion/insertion to and from the mean, "
                        "insertion from zero, RISE deletion/insertion, mask metrics, sanity)")
    p.add_argument("--target", choices=("predicted", "label"), default="predicted",
                   help="explain each image's predicted class or its label")
    p.add_argument("-n", "--n-images", type=positive_int, default=64,
                   help="score the first N images (default 64)")
    p.add_argument("--format", choices=("text", "csv", "json"), default="text",
                   help="output as a text table (default), CSV or JSON")
    p.add_argument("-o", "--output", type=Path, help="write the table to this file")
    add_overwrite_argument(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images per pass (halved automatically when out of memory)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sample data, random baselines and tie-breaking")
    p.add_argument("--sanity", type=positive_int, metavar="N",
                   help="model-randomisation sanity check over N seeds (every parameter "
                        "re-initialised; median and worst Spearman per method, FAIL when "
                        "|rho| > 0.5 in any seed); adds 'sanity' to --metrics")
    p.add_argument("--sanity-mode", choices=SANITY_MODES, default="full",
                   help="full (default): every parameter re-initialised at once per seed; "
                        "cascade: first layer by layer from the logits down to DCMIX's "
                        "mixing layer, rho after each step (a table; about as many times "
                        "the cost as the model has layers), pass/fail on the last step, "
                        "which is the full randomisation")
    p.add_argument("--sanity-labels", action="store_true",
                   help="also the data-label randomisation check: per seed a randomised "
                        "copy trained --label-epochs epochs on the images with shuffled "
                        "labels (needs labels; costs a short training per seed)")
    p.add_argument("--label-epochs", type=positive_int, default=30,
                   help="epochs of each shuffled-label model (--sanity-labels)")
    p.add_argument("--no-model-free", action="store_true",
                   help="leave out the model-free baselines (image, image excess, random "
                        "map) and the verdicts against them")
    p.add_argument("--channel-check", action="store_true",
                   help="also rank the channels post hoc (pixel permutation and feature "
                        "ablation, loss-based), beside the DCMIX weights of a bundle; "
                        "needs labels")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
