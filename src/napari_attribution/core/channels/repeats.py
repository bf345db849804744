"""Uncertainty and a non-circular check by retraining.

* :func:`train_repeats`: the same training with ``n`` seeds (each seed also draws its
  own grouped split); the spread of the DCMIX importance over the runs.
* :func:`retrain_check`: models retrained on each channel alone and without each
  channel (PXPermute / single-channel style), same split as the full model. It costs
  ``2 C + 1`` trainings; the seconds spent are part of the result.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from ..data.dataset import ImageSet
from ..runtime.errors import InputError
from ..runtime.progress import ProgressGenerator, nested
from .training import TrainConfig, TrainResult, train_dcmix


def train_repeats(data: ImageSet, config: TrainConfig | None = None, n_repeats: int = 3
                  ) -> ProgressGenerator[TrainResult]:
    """Train ``n_repeats`` models with seeds ``seed, seed + 1, ...``; return the first
    (the model you keep) with ``repeats`` holding the importance of every run and its
    mean, std and range per channel. A top channel that changes between runs, or a
    spread above 0.1, adds a ``channels-unstable`` caution (see ``core.channels.verdict``)."""
    cfg = config or TrainConfig()
    if n_repeats < 1:
        raise InputError(f"repeats must be at least 1; got {n_repeats}")
    results: list[TrainResult] = []
    for i in range(n_repeats):
        run_cfg = replace(cfg, seed=cfg.seed + i)
        if i > 0:  # the spread needs the weights only; the checks ran on the first model
            run_cfg = replace(run_cfg, shortcut_check=False, posthoc_check=False)
        res = yield from nested(train_dcmix(data, run_cfg), f"run {i + 1}/{n_repeats}",
                                 i, n_repeats)
        results.append(res)
    first = results[0]
    if first.importance is None:
        return first
    overall = np.array([r.importance.overall for r in results])
    names = list(first.channel_names)
    tops = [names[int(np.argmax(o))] for o in overall]
    first.repeats = {
        "seeds": [cfg.seed + i for i in range(n_repeats)], "channel_names": names,
        "overall": overall.tolist(), "mean": overall.mean(0).tolist(),
        "std": overall.std(0, ddof=1).tolist() if n_repeats > 1 else [0.0] * len(names),
        "min": overall.min(0).tolist(), "max": overall.max(0).tolist(),
        "top_channel": tops,
        "balanced_accuracy": [r.val_balanced_accuracy for r in results],
        "seconds": float(sum(r.seconds for r in results)),
    }
    first.repeats["runs"] = f"{n_repeats} training runs"
    first.refresh_verdict()  # weights with their range; channels-unstable when it moves
    return first


def retrain_check(data: ImageSet, config: TrainConfig | None = None
                  ) -> ProgressGenerator[dict[str, Any]]:
    """Balanced validation accuracy of models trained on all channels, on each channel
    alone and on all channels but one, on the same split (same seed and groups).

    A channel the full model needs gives a clear drop *without* it; a channel that
    carries the phenotype by itself scores well *alone*. Neither reads mixing weights.
    """
    cfg = replace(config or TrainConfig(), design_check=False, shortcut_check=False,
                  posthoc_check=False, ablation_check=False, cv=1)
    c = data.n_channels
    names = list(data.channel_names)
    jobs: list[tuple[str, str | None, list[int]]] = [("all", None, list(range(c)))]
    jobs += [("alone", names[i], [i]) for i in range(c)]
    if c > 1:
        jobs += [("without", names[i], [j for j in range(c) if j != i]) for i in range(c)]
    t0 = time.perf_counter()
    out: dict[str, Any] = {"channel_names": names, "alone": {}, "without": {},
                           "seed": cfg.seed, "n_models": len(jobs)}
    for k, (kind, name, keep) in enumerate(jobs):
        label = "all channels" if name is None else f"{name} {kind}"
        res = yield from nested(train_dcmix(data.select_channels(keep), cfg),
                                 f"retraining {k + 1}/{len(jobs)} ({label})", k, len(jobs))
        if kind == "all":
            out["all_channels"] = res.val_balanced_accuracy
        else:
            out[kind][name] = res.val_balanced_accuracy
    out["seconds"] = time.perf_counter() - t0
    out["seconds_per_model"] = out["seconds"] / len(jobs)
    return out
