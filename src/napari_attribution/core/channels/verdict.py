"""One channel verdict: DCMIX weights, ablation and permutation reconciled.

Three readouts answer slightly different questions:

* the **weight** says what the mixing layer passes on to the network;
* **ablation** (channel replaced by its mean) what the model loses without the channel's
  intensity;
* **permutation** (pixels shuffled within each image) what it loses without the channel's
  spatial pattern, keeping its brightness.

A channel is *needed* when taking it away measurably costs balanced accuracy (lower 95 %
bound of the drop above zero) or clearly raises the loss (lower bound above
:data:`NEEDED_LOSS`) in either perturbation. The verdict is one table and ONE sentence:
``channels-disagree`` (caution) when the readouts name different top channels,
``channels-shared`` (note) when they agree that the model combines channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..study.findings import Finding, make, register_code
from .importance import SHARED_WEIGHT, ChannelImportance
from .posthoc import PosthocImportance

#: a loss rise whose lower 95 % bound exceeds this counts as needed
NEEDED_LOSS = 0.05

CHANNELS_DISAGREE = register_code(
    "channels-disagree", "caution",
    "weights, ablation and permutation name different top channels")
CHANNELS_SHARED = register_code(
    "channels-shared", "note",
    "the readouts agree that the model combines channels (no channel has >= 0.8 weight)")
CHANNELS_UNSTABLE = register_code(
    "channels-unstable", "caution",
    "the top channel changes between training runs or folds, or weights vary by > 0.1")


@dataclass
class ChannelVerdict:
    """Rows ``{channel, weight, weight_range, ablation_drop, ablation_95, permutation_drop,
    permutation_95, needed}`` (ranked by weight), the tops per readout, one sentence and
    its findings."""

    rows: list[dict[str, Any]]
    tops: dict[str, str]
    sentence: str
    findings: list[Finding] = field(default_factory=list)
    runs: str = ""  # "3 training runs" / "5 folds" when weights have a range

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "tops": dict(self.tops),
                "sentence": self.sentence, "runs": self.runs,
                "findings": [f.as_dict() for f in self.findings]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelVerdict:
        return cls(rows=[dict(r) for r in d["rows"]], tops=dict(d.get("tops") or {}),
                   sentence=str(d.get("sentence", "")), runs=str(d.get("runs", "")),
                   findings=[Finding.from_dict(f) for f in d.get("findings") or []])


def _best_set(loss: np.ndarray, iv: np.ndarray) -> set[int]:
    """Channels indistinguishable from the top one by loss rise (interval overlap)."""
    top = int(np.argmax(loss))
    return {i for i in range(loss.size) if iv[i, 1] >= iv[top, 0]}


def channel_verdict(importance: ChannelImportance | None,
                    posthoc: list[PosthocImportance] | None = None,
                    spread: dict[str, Any] | None = None) -> ChannelVerdict | None:
    """Reconcile the readouts (see the module docstring). ``spread``: a repeats or
    cross-validation summary with per-run ``overall`` weights (mean/min/max over runs)."""
    perm = next((p for p in posthoc or [] if p.method == "permutation"), None)
    if importance is None and perm is None:
        return None
    names = list(importance.channel_names if importance is not None else perm.channel_names)
    c = len(names)
    weight = (np.asarray(spread["mean"], float) if spread and spread.get("mean")
              else None if importance is None else np.asarray(importance.overall, float))
    readouts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    if importance is not None and importance.ablation_loss_increase is not None:
        readouts["ablation"] = (
            np.asarray(importance.ablation_accuracy_drop, float),
            np.asarray(importance.ablation_drop_interval, float)
            if importance.ablation_drop_interval is not None else np.zeros((c, 2)),
            np.asarray(importance.ablation_loss_increase, float),
            np.asarray(importance.ablation_loss_interval, float)
            if importance.ablation_loss_interval is not None else np.zeros((c, 2)))
    if perm is not None:
        readouts["permutation"] = (perm.balanced_accuracy_drop, perm.drop_interval,
                                   perm.loss_increase, perm.loss_interval)
    needed = np.zeros(c, bool)
    for _drop, div, _loss, liv in readouts.values():
        needed |= (div[:, 0] > 0) | (liv[:, 0] > NEEDED_LOSS)
    order = np.argsort(-(weight if weight is not None else readouts["permutation"][2]),
                       kind="stable")
    rows = []
    for i in order:
        row: dict[str, Any] = {"channel": names[i], "needed": bool(needed[i])}
        if weight is not None:
            row["weight"] = float(weight[i])
            if spread and spread.get("min") and spread.get("max"):
                row["weight_range"] = [float(spread["min"][i]), float(spread["max"][i])]
        for key, (drop, div, _, _) in readouts.items():
            row[f"{key}_drop"] = float(drop[i])
            row[f"{key}_95"] = [float(div[i, 0]), float(div[i, 1])]
        rows.append(row)

    tops: dict[str, str] = {}
    best: dict[str, set[int]] = {}
    if weight is not None:
        tops["weight"] = names[int(np.argmax(weight))]
    for key, (_, _, loss, liv) in readouts.items():
        if (liv[:, 0] > 0).any() or (loss > NEEDED_LOSS).any():
            tops[key] = names[int(np.argmax(loss))]
            best[key] = _best_set(loss, liv)
    used = [names[i] for i in order if needed[i]]
    findings: list[Finding] = []
    w_top = None if weight is None else int(np.argmax(weight))
    disagree = (w_top is not None and any(w_top not in b for b in best.values())) or (
        len(best) == 2 and not set.intersection(*best.values()))
    runs = "" if not spread else str(spread.get("runs", ""))
    if disagree:
        named = ", ".join(f"{k} {v}" for k, v in tops.items())
        sentence = (
            f"The readouts disagree on the top channel ({named}): the weights say what the "
            "mixing layer passes on, ablation what the model loses without a channel's "
            "intensity, permutation what it loses without its spatial pattern. The model "
            "uses " + (", ".join(used) if used else "several channels")
            + " together (or one for brightness, another for shape), so no single channel "
            "is 'the' channel: report the table, not a ranking, and confirm with "
            "--retrain-check.")
        findings.append(make(CHANNELS_DISAGREE, sentence, tops=tops, needed=used))
    elif weight is not None and weight.max() < SHARED_WEIGHT and len(used) > 1:
        sentence = (f"The readouts agree that the model combines {', '.join(used)} "
                    f"(no channel carries {SHARED_WEIGHT:.1f} of the weight; taking any of "
                    "them away costs accuracy): read them together, e.g. a marker with "
                    "its nuclear reference.")
        findings.append(make(CHANNELS_SHARED, sentence, needed=used,
                             weights={names[i]: float(weight[i]) for i in range(c)}))
    else:
        top = tops.get("weight") or tops.get("permutation") or names[int(order[0])]
        i = names.index(top)
        parts = [] if weight is None else [f"weight {weight[i]:.2f}"]
        for key, (drop, div, _, _) in readouts.items():
            parts.append(f"{key} costs {drop[i]:.2f} balanced accuracy "
                         f"[{div[i, 0]:.2f}, {div[i, 1]:.2f}]")
        agree = "All readouts agree" if len(tops) > 1 else "The readout says"
        sentence = f"{agree}: the model needs {top} ({'; '.join(parts)})."
        if used and used != [top]:
            sentence += f" Also measurably used: {', '.join(u for u in used if u != top)}."
        elif not readouts:
            sentence = (f"The weights put {top} first; no ablation or permutation check "
                        "was run to confirm that the model needs it.")
        elif not used:
            sentence = (f"The weights put {top} first, but taking no channel away "
                        "measurably costs accuracy.")
    if spread and spread.get("top_channel") and len(set(spread["top_channel"])) > 1:
        findings.append(make(
            CHANNELS_UNSTABLE,
            f"The top channel changes between {runs or 'runs'} "
            f"({', '.join(spread['top_channel'])}): the ranking is not stable; add images "
            "or independent wells before trusting it.", tops=list(spread["top_channel"])))
    elif spread and spread.get("std") and max(spread["std"]) > 0.1:
        findings.append(make(
            CHANNELS_UNSTABLE,
            f"Channel weights vary by more than 0.1 (std) between {runs or 'runs'}; read "
            "the range, not a single run.", std=list(spread["std"])))
    return ChannelVerdict(rows=rows, tops=tops, sentence=sentence, findings=findings,
                          runs=runs)


def format_verdict(v: ChannelVerdict) -> str:
    """Text table 'channels the model needs' and the one sentence."""
    width = max(8, *(len(r["channel"]) for r in v.rows))
    keys = [k for k in ("ablation", "permutation") if f"{k}_drop" in v.rows[0]]
    rng = f" [range, {v.runs}]" if any("weight_range" in r for r in v.rows) else ""
    head = (f"{'channel':<{width}}  {'weight' + rng:<24}"
            + "".join(f"{k + ' drop [95%]':<27}" for k in keys) + "needed")
    lines = ["channels the model needs (drop: balanced accuracy lost when the channel is "
             "replaced by its mean (ablation) or its pixels are shuffled (permutation))",
             head]
    for r in v.rows:
        w = "-" if "weight" not in r else f"{r['weight']:.3f}"
        if "weight_range" in r:
            w += f" [{r['weight_range'][0]:.2f}, {r['weight_range'][1]:.2f}]"
        cells = ""
        for k in keys:
            lo, hi = r[f"{k}_95"]
            cell = f"{r[k + '_drop']:+.3f} [{lo:+.2f}, {hi:+.2f}]"
            cells += f"{cell:<27}"
        lines.append(f"{r['channel']:<{width}}  {w:<24}{cells}"
                     f"{'yes' if r['needed'] else 'no'}")
    lines.append("verdict: " + v.sentence)
    return "\n".join(lines)
