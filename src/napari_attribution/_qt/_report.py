"""A study report as one self-contained HTML file: channel importance with error bars,
validation confusion matrix and balanced accuracy, the session's last results (explanation
with its curves, prediction, clicked cell), example maps, provenance.

Figures are PNGs embedded as base64, so the file can be mailed or pasted as it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _importance_figure(imp) -> str:
    from matplotlib.figure import Figure

    names = list(imp.channel_names)
    fig = Figure(figsize=(4.5, 2.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    ax.bar(x - 0.2, imp.overall, 0.4, label="DCMIX weight", color="#3b6fff")
    drop = getattr(imp, "ablation_accuracy_drop", None)
    if drop is not None:
        drop = np.asarray(drop, float)
        interval = getattr(imp, "ablation_drop_interval", None)
        yerr = None
        if interval is not None:  # 95 % bootstrap interval as error bars
            iv = np.asarray(interval, float)
            yerr = np.abs(np.stack([drop - iv[:, 0], iv[:, 1] - drop]))
        ax.bar(x + 0.2, drop, 0.4, yerr=yerr, capsize=3,
               label="ablation: balanced-accuracy drop", color="none", edgecolor="#333",
               hatch="///")
    ax.set_xticks(x, names)
    ax.set_ylabel("importance")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    return _png(fig)


def confusion(session) -> tuple[np.ndarray, list[str]] | None:
    """Validation confusion matrix (rows: true class) of the session's trained model:
    from the training result when it holds one, else computed on its validation split."""
    result = session.train_result
    if result is None:
        return None
    names = list(result.class_names)
    validation = getattr(result, "validation", None) or {}
    cm = validation.get("confusion_matrix", getattr(result, "confusion_matrix", None))
    if cm is not None:
        return np.asarray(cm), names
    data = session.data
    if data is None or result.val_index is None or len(result.val_index) == 0:
        return None
    idx = np.asarray(result.val_index)
    probs = session.bundle.predict_proba(data.images[idx])
    pred = probs.argmax(1)
    k = len(names)
    out = np.zeros((k, k), int)
    np.add.at(out, (data.labels[idx], pred), 1)
    return out, names


def _confusion_html(cm: np.ndarray, names: list[str]) -> str:
    recall = cm.diagonal() / np.maximum(cm.sum(1), 1)
    rows = "".join(
        f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{v}</td>" for v in cm[i])
        + f"<td>{recall[i]:.2f}</td></tr>" for i, n in enumerate(names))
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    from ..core.study.classification import balanced_accuracy_interval

    iv = balanced_accuracy_interval(cm)
    ci = "" if iv is None else f" [{iv[0]:.2f}, {iv[1]:.2f}] (95 %)"
    n = ", ".join(f"{html.escape(c)} {int(s)}" for c, s in zip(names, cm.sum(1), strict=True))
    return (f"<table><tr><th>true \\ predicted</th>{head}<th>recall</th></tr>{rows}</table>"
            f"<p>balanced accuracy (validation): <b>{recall.mean():.3f}</b>{ci}; held out: "
            f"{n}</p>")


def _map_figure(layer) -> str:
    from matplotlib.figure import Figure

    from ._layers import full_data

    data = np.asarray(full_data(layer))
    plane = data.reshape(-1, *data.shape[-2:])[0]
    fig = Figure(figsize=(2.4, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = layer.contrast_limits
    im = ax.imshow(plane, cmap="inferno", vmin=lo, vmax=hi)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(layer.name, fontsize=9)
    ax.axis("off")
    return _png(fig)


def _findings_html(session) -> list[str]:
    """The study's verdict, the channel verdict's sentence and every finding (warnings,
    then notes): the same findings as ``train`` and ``channels`` print."""
    from ..core.channels.verdict import ChannelVerdict
    from ..core.study.findings import VERDICT_TEXT, split, verdict
    from ._findings import has_study, model_findings

    findings = model_findings(session)   # the same findings the widgets show
    if not has_study(session):
        return ["<h2>Findings</h2>", "<p>this model carries no recorded study (no "
                "findings to show): train it here or load a bundle saved by training</p>"]
    out = ["<h2>Findings</h2>",
           f"<p>study verdict: <b>{html.escape(VERDICT_TEXT[verdict(findings)])}</b></p>"]
    cv = getattr(session.train_result, "verdict", None)
    wrapped = getattr(session.bundle, "bundle", None) or session.bundle
    checks = getattr(wrapped, "checks", None) or {}
    if cv is None and checks.get("channel_verdict"):
        cv = ChannelVerdict.from_dict(checks["channel_verdict"])
    if cv is not None:
        out.append(f"<p>channels: {html.escape(cv.sentence)}</p>")
    warnings, notes = split(findings)
    for title, items in (("Warnings", warnings), ("Notes", notes)):
        if items:
            out += [f"<h3>{title}</h3><ul>"] + [
                f"<li><b>{html.escape(f.severity)}</b> <code>{html.escape(f.code)}</code> "
                f"{html.escape(f.message)}</li>" for f in items] + ["</ul>"]
    return out


def _results_html(session) -> list[str]:
    """The session's last results: the Explain run (method, maps, evidence, curve AUCs),
    the prediction (mean class probabilities, input findings), the clicked cell."""
    out: list[str] = []
    model = session.model
    classes = [str(c) for c in getattr(model, "class_names", None) or []]
    res = session.attribution
    if res is not None:
        targets = sorted({classes[int(t)] if int(t) < len(classes) else str(t)
                          for t in np.asarray(res.targets).ravel()})
        none = res.no_evidence()
        line = (f"{html.escape(res.method)}: {len(res.maps)} map(s) of "
                f"{html.escape(', '.join(targets))} in {res.seconds:.1f} s")
        if res.evidence:
            line += (f"; localised evidence in {len(res.maps) - len(none)} of "
                     f"{len(res.maps)}")
        out.append(f"<p>last explanation: {line}</p>")
        aucs = []
        for mode, c in (session.curves or {}).items():
            mean = np.asarray(c, float).mean(0)
            auc = float(np.trapezoid(mean, np.linspace(0, 1, mean.size)))
            aucs.append(f"{html.escape(mode)} AUC {auc:.3f}")
        if aucs:
            out.append(f"<p>curves (mean over the images): {'; '.join(aucs)}</p>")
    if session.probabilities is not None:
        p = np.asarray(session.probabilities, float)
        mean = p.reshape(len(p), -1).mean(0)
        names = classes if len(classes) == mean.size else [str(i) for i in range(mean.size)]
        out.append("<p>last prediction (mean of {} image(s)): {}</p>".format(
            len(p), ", ".join(f"{html.escape(n)} {v:.2f}" for n, v in zip(names, mean,
                                                                           strict=True))))
        out += [f"<p><code>{html.escape(f.code)}</code> {html.escape(f.message)}</p>"
                for f in session.findings or []]
    cell = session.point
    if cell is not None and len(cell):
        probs = np.asarray(cell.probabilities[0], float)
        best = cell.class_names[int(probs.argmax())]
        label = int(cell.labels[0])
        evidence = ", ".join(f"{html.escape(c)} {v:+.3f}" for c, v in zip(
            cell.channel_names, cell.channel_evidence[0], strict=True))
        if cell.channel_log_odds is not None:
            evidence += "; log-odds drop (nats): " + ", ".join(
                f"{html.escape(c)} {v:+.2f}" for c, v in zip(
                    cell.channel_names, cell.channel_log_odds[0], strict=True))
        out.append(f"<p>last clicked cell ({'label ' + str(label) if label else 'no label'}):"
                   f" {html.escape(best)} {probs.max():.2f}; channel evidence "
                   f"({html.escape(cell.channel_method)}): {evidence}</p>")
    return ["<h2>Last results</h2>", *out] if out else []


def write_report(path: str | Path, session, layers: list[Any]) -> Path:
    """Write the report for ``session`` (model, training result, last results) and
    result ``layers``."""
    bundle = session.bundle
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        path = path.with_suffix(".html")
    parts = ["<html><head><meta charset='utf-8'><title>napari-attribution study</title>"
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em}"
             "td,th{border:1px solid #ccc;padding:3px 8px}table{border-collapse:collapse}"
             "img{margin:4px}</style></head><body>",
             "<h1>napari-attribution study report</h1>",
             f"<p>model: {html.escape(str(bundle.path or 'trained in this session'))}; "
             f"channels {html.escape(', '.join(bundle.channel_names))}; classes "
             f"{html.escape(', '.join(bundle.class_names))}</p>"]
    importance = session.importance
    if importance is not None:
        parts += ["<h2>Channel importance</h2>",
                  f"<img src='{_importance_figure(importance)}'>",
                  "<p>ranking: " + html.escape(" > ".join(importance.ranking()))
                  + "</p>"]
    cm = confusion(session)
    if cm is not None:
        parts += ["<h2>Validation</h2>", _confusion_html(*cm)]
    parts += _findings_html(session)
    parts += _results_html(session)
    if layers:
        parts += ["<h2>Example maps</h2>"] + [f"<img src='{_map_figure(ly)}'>"
                                               for ly in layers]
    prov = dict(bundle.provenance)
    prov["model_sha256"] = bundle.sha256
    parts += ["<h2>Provenance</h2><pre>"
              + html.escape(json.dumps(prov, indent=1, default=str)) + "</pre>"]
    for ly in layers:
        p = (ly.metadata.get("napari_attribution") or {}).get("provenance")
        if p:
            parts += [f"<h3>{html.escape(ly.name)}</h3><pre>"
                      + html.escape(json.dumps({k: v for k, v in p.items()
                                                if k != "probabilities"}, indent=1,
                                               default=str)) + "</pre>"]
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
