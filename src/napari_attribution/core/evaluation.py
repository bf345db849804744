"""Methods x metrics: one table comparing attribution methods on the same model and images."""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np
import torch

from .attribution import AttributionResult, available_methods, explain
from .errors import InputError
from .metrics import (
    deletion_auc,
    insertion_auc,
    pointing_game,
    randomize_model,
    relevance_mass,
    sanity_spearman,
)
from .progress import Progress

EvalOutput = tuple[list[dict], dict[str, AttributionResult]]
METRICS = ("deletion", "insertion", "pointing_game", "relevance_mass", "sanity")


def _mean(v: np.ndarray) -> float | None:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def evaluate_methods(model: torch.nn.Module, images: np.ndarray,
                     targets: int | Sequence[int] | None = None,
                     masks: np.ndarray | None = None,
                     methods: Sequence[str] = ("pcim", "integrated_gradients"),
                     metrics: Sequence[str] = METRICS, device: str = "cpu",
                     batch_size: int = 32, method_params: dict[str, dict] | None = None,
                     n_steps: int = 50, seed: int = 0
                     ) -> Generator[Progress, None, EvalOutput]:
    """Run every method on ``images`` and score it with every metric.

    Returns ``(rows, results)``: one dict per method (metric means over images, ms per
    image, batch size; ``None`` where a metric does not apply, e.g. mask metrics
    without ``masks``) and the :class:`AttributionResult` of each method.
    """
    bad = [m for m in methods if m not in available_methods()]
    if bad:
        raise InputError(f"unknown method(s) {bad}; choose from {available_methods()}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"unknown metric(s) {bad}; choose from {list(METRICS)}")
    if masks is not None and np.asarray(masks).shape != (images.shape[0], *images.shape[-2:]):
        raise InputError(f"masks of shape {np.asarray(masks).shape} do not fit images of "
                         f"shape {images.shape}")
    method_params = method_params or {}
    random_model = None
    if "sanity" in metrics:
        try:
            random_model = randomize_model(model, seed=seed)
        except InputError:
            random_model = None
    rows, results = [], {}
    total = len(methods)
    for k, name in enumerate(methods):
        params = dict(method_params.get(name, {}))
        yield Progress(k, total, f"{name}: attribution")
        res = yield from explain(model, images, targets, method=name, device=device,
                                 batch_size=batch_size, **params)
        results[name] = res
        row: dict = {"method": name, "n_images": int(images.shape[0]),
                     "batch_size": int(batch_size),
                     "ms_per_image": 1000.0 * res.seconds / images.shape[0]}
        kw = {"n_steps": n_steps, "device": str(res.params.get("device", "cpu")), "seed": seed}
        yield Progress(k, total, f"{name}: metrics")
        if "deletion" in metrics:
            row["deletion_auc"] = _mean(deletion_auc(model, images, res.maps, res.targets, **kw))
        if "insertion" in metrics:
            row["insertion_auc"] = _mean(insertion_auc(model, images, res.maps, res.targets,
                                                       **kw))
        if "pointing_game" in metrics:
            row["pointing_game"] = None if masks is None else _mean(
                pointing_game(res.maps, masks))
        if "relevance_mass" in metrics:
            row["relevance_mass"] = None if masks is None else _mean(
                relevance_mass(res.maps, masks))
        if "sanity" in metrics:
            if random_model is None:
                row["sanity_spearman"] = None
            else:
                rnd = yield from explain(random_model, images, res.targets, method=name,
                                         device=device, batch_size=batch_size, **params)
                row["sanity_spearman"] = _mean(sanity_spearman(res.maps, rnd.maps))
        rows.append(row)
    yield Progress(total, total, "done")
    return rows, results
