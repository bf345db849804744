"""``napari-attribution channels``: bundle -> channel importance table and study checks."""

from __future__ import annotations

import argparse
import csv
import io
import json
import textwrap
from pathlib import Path
from typing import Any

from ..core.channels.importance import ChannelImportance
from ..core.study.findings import Finding
from ._checks import add_overwrite_argument


def format_importance(imp: ChannelImportance, fmt: str = "text") -> str:
    """Render channel importance as an aligned text table, CSV or JSON.

    The ablation columns are absolute: the drop in balanced validation accuracy and the
    rise in class-balanced loss when the channel is replaced by its mean, each with its
    95 % bootstrap interval.
    """
    rows = imp.rows()
    if fmt == "json":
        return json.dumps(_importance_json(imp), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    order = {n: i for i, n in enumerate(imp.ranking())}
    rows = sorted(rows, key=lambda r: order[r["channel"]])
    width = max(8, *(len(r["channel"]) for r in rows))
    lines = [f"{'channel':<{width}}  DCMIX importance  {'':<20}  ablation: bal. acc drop "
             "[95%]    loss rise [95%]"]
    for r in rows:
        bar = "#" * int(round(20 * r["importance"]))
        abl = "-"
        if "ablation_balanced_accuracy_drop" in r:
            abl = f"{r['ablation_balanced_accuracy_drop']:+.3f}"
            if "ablation_drop_95_low" in r:
                abl += f" [{r['ablation_drop_95_low']:+.3f}, {r['ablation_drop_95_high']:+.3f}]"
            abl = f"{abl:<28}  {r['ablation_loss_increase']:+.3f}"
            if "ablation_loss_95_low" in r:
                abl += f" [{r['ablation_loss_95_low']:+.3f}, {r['ablation_loss_95_high']:+.3f}]"
        lines.append(f"{r['channel']:<{width}}  {r['importance']:16.3f}  {bar:<20}  {abl}")
    if imp.weights.shape[0] > 1:
        lines.append("heads' downstream effect: " +
                     ", ".join(f"{e:.3f}" for e in imp.head_effect))
    return "\n".join(lines)


def _importance_json(imp: ChannelImportance | None) -> dict[str, Any]:
    if imp is None:
        return {"channels": [], "ranking": [], "head_effect": [], "baseline_accuracy": None}
    return {"channels": imp.rows(), "ranking": imp.ranking(),
            "head_effect": imp.head_effect.tolist(),
            "baseline_accuracy": imp.baseline_accuracy}


def channel_verdict_of(imp: ChannelImportance | None, checks: dict[str, Any]):
    """The stored channel verdict, or one computed from the stored readouts (bundles
    written before the verdict existed)."""
    from ..core.channels.posthoc import PosthocImportance
    from ..core.channels.verdict import ChannelVerdict, channel_verdict

    if checks.get("channel_verdict"):
        return ChannelVerdict.from_dict(checks["channel_verdict"])
    posthoc = [PosthocImportance.from_dict(d) for d in checks.get("posthoc_importance") or []]
    spread = checks.get("cross_validation") or checks.get("importance_repeats")
    return channel_verdict(imp, posthoc, spread)


def report_json(imp: ChannelImportance | None, findings: list[Finding],
                checks: dict[str, Any]) -> dict[str, Any]:
    """Everything ``channels --format json`` prints: the DCMIX importance, the one
    ``verdict`` (worst severity), top-level ``warnings`` (alarms and cautions) and
    ``notes`` (each a Finding dict: code, severity, message, evidence), the channel
    verdict, ``balanced_accuracy`` with its interval and held-out n, and the stored
    checks under their keys."""
    from ..core.study.findings import as_json, verdict

    validation = checks.get("validation") or {}
    cv = channel_verdict_of(imp, checks)
    out = _importance_json(imp)
    out.update({
        "verdict": verdict(findings),
        **as_json(findings),
        "channel_verdict": None if cv is None else cv.to_dict(),
        "balanced_accuracy": validation.get("balanced_accuracy"),
        "balanced_accuracy_95": validation.get("balanced_accuracy_95"),
        "held_out_per_class": validation.get("support"),
        "per_class_recall": validation.get("per_class_recall"),
        "confusion_matrix": validation.get("confusion_matrix"),
    })
    for key in ("validation", "cross_validation", "study_design", "shortcut_check",
                "posthoc_importance", "importance_repeats", "retrain_check"):
        out[key] = checks.get(key)
    return out


def format_checks(findings: list[Finding], checks: dict[str, Any],
                  imp: ChannelImportance | None = None) -> str:
    """The study as text: the channel verdict table and its sentence, validation
    metrics (with interval and held-out n), spread over repeats, retraining check,
    shortcut check, then the findings: one verdict line, warnings, notes."""
    from ..core.channels.verdict import format_verdict
    from ..core.study.classification import format_classification_report
    from ..core.study.shortcut import ShortcutCheck, format_shortcut

    parts: list[str] = []
    cv = channel_verdict_of(imp, checks)
    if cv is not None:
        parts.append(format_verdict(cv))
    if checks.get("validation"):
        parts.append(format_classification_report(checks["validation"]))
    if checks.get("importance_repeats"):
        parts.append(format_repeats(checks["importance_repeats"]))
    if checks.get("retrain_check"):
        parts.append(format_retrain(checks["retrain_check"]))
    if checks.get("shortcut_check"):
        parts.append(format_shortcut(ShortcutCheck.from_dict(checks["shortcut_check"])))
    said = {cv.sentence} if cv is not None else set()
    parts.append(format_findings(findings, said))
    return "\n\n".join(p for p in parts if p)


VERDICT_LINES = {
    "ok": "study verdict: OK (no warnings)",
    "note": "study verdict: OK (no warnings; notes below)",
    "caution": "study verdict: CAUTION: the answer may be right but is weak; read the "
               "cautions",
    "alarm": "study verdict: ALARM: the design or data cannot support the answer; fix "
             "the alarm before trusting any ranking",
}


def format_findings(findings: list[Finding], said: set[str] | None = None) -> str:
    """One verdict line, then the warnings (alarms boxed, cautions), then the notes;
    a note whose message is already ``said`` (the channel verdict's sentence, printed
    under its table) is named by its code only."""
    from ..core.study.findings import split, verdict

    warn, notes = split(findings)
    said = said or set()
    lines = [VERDICT_LINES[verdict(findings)]]
    alarms = [f for f in warn if f.severity == "alarm"]
    if alarms:
        bar = "!" * 78
        lines.append(bar)
        lines += [textwrap.fill(f"ALARM [{f.code}] {f.message}", 76, initial_indent="! ",
                                subsequent_indent="!   ") for f in alarms]
        lines.append(bar)
    lines += [textwrap.fill(f"caution [{f.code}] {f.message}", 78,
                            subsequent_indent="    ") for f in warn if f.severity != "alarm"]
    lines += [textwrap.fill(f"note [{f.code}] "
                            + ("(the channel verdict above)" if f.message in said
                               else f.message), 78, subsequent_indent="    ")
              for f in notes]
    return "\n".join(lines)


def format_repeats(rep: dict[str, Any]) -> str:
    names = rep["channel_names"]
    width = max(8, *(len(n) for n in names))
    lines = [f"DCMIX importance over {len(rep['seeds'])} training runs (seeds "
             f"{', '.join(str(s) for s in rep['seeds'])}; split and initialisation vary):",
             f"{'channel':<{width}}  mean    std     range"]
    for i, n in enumerate(names):
        lines.append(f"{n:<{width}}  {rep['mean'][i]:.3f}  {rep['std'][i]:.3f}  "
                     f"[{rep['min'][i]:.3f}, {rep['max'][i]:.3f}]")
    ba = rep.get("balanced_accuracy") or []
    if ba:
        lines.append("balanced validation accuracy per run: " +
                     ", ".join(f"{v:.3f}" for v in ba))
    return "\n".join(lines)


def format_retrain(rc: dict[str, Any]) -> str:
    names = rc["channel_names"]
    width = max(8, *(len(n) for n in names))
    lines = [f"retraining check: balanced accuracy of models retrained on one channel / "
             f"without it (all channels: {rc['all_channels']:.3f}; cost "
             f"{rc['seconds']:.0f} s, {rc['n_models']} trainings)",
             f"{'channel':<{width}}  alone   without"]
    for n in names:
        alone, without = rc["alone"].get(n), rc["without"].get(n)
        lines.append(f"{n:<{width}}  {alone:.3f}   " +
                     ("-" if without is None else f"{without:.3f}"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..core.runtime.errors import BundleError
    from ..io.atomic import atomic_write_text, check_output
    from .model_args import load_from_args

    if args.output:
        check_output(args.output, args.overwrite, "channel importance")
    clf = load_from_args(args, "bundle")
    bundle = clf.bundle
    checks = dict(getattr(bundle, "checks", {}) or {})
    findings = list(getattr(bundle, "findings", []) or [])
    if clf.importance is None and not checks.get("posthoc_importance"):
        raise BundleError(f"{args.bundle} holds no channel importance (only DCMIX bundles "
                          "trained with a mixing layer do; for other models use "
                          "'evaluate --channel-check' or 'explain --per-channel')")
    if args.format == "json":
        text = json.dumps(report_json(clf.importance, findings, checks), indent=2)
    elif args.format == "csv":
        text = "" if clf.importance is None else format_importance(clf.importance, "csv")
    else:
        text = format_checks(findings, checks, clf.importance)
        if clf.importance is not None and clf.importance.weights.shape[0] > 1:
            text += ("\nheads' downstream effect: "
                     + ", ".join(f"{e:.3f}" for e in clf.importance.head_effect))
    if args.output:
        atomic_write_text(args.output, text + ("\n" if not text.endswith("\n") else ""),
                          args.overwrite, "channel importance")
        print(f"written to {args.output}")
    else:
        print(text)
    return 0


def register(sub) -> None:
    p = sub.add_parser("channels", help="print a bundle's channel importance and checks",
                       description="Channel importance of a trained DCMIX bundle: mixing "
                                   "weights (effect-weighted over heads) beside the absolute "
                                   "channel-ablation and pixel-permutation checks, the "
                                   "shortcut check, validation metrics and the study "
                                   "findings (JSON: top-level 'verdict', 'warnings' "
                                   "(alarms and cautions), 'notes', 'channel_verdict' and "
                                   "'balanced_accuracy').")
    from .model_args import MODEL_HELP, add_trust_argument

    p.add_argument("bundle", type=Path, help=MODEL_HELP)
    add_trust_argument(p)
    p.add_argument("--format", choices=("text", "csv", "json"), default="text",
                   help="text table (default), CSV of the channels, or JSON with the findings")
    p.add_argument("-o", "--output", type=Path,
                   help="write the report to this file instead of printing it")
    add_overwrite_argument(p)
    p.set_defaults(func=run)
