"""Methods x metrics: one table comparing attribution methods on the same model and images."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..attribution.explain import AttributionResult, available_methods, explain
from ..runtime.devices import resolve_device
from ..runtime.errors import InputError
from ..runtime.peak_memory import track_peak
from ..runtime.progress import Progress
from .metrics import (
    FIDELITY_METRICS,
    bootstrap_interval,
    pointing_game,
    randomize_model,
    relevance_mass,
    sanity_spearman,
    trained_perturbations,
)

EvalOutput = tuple[list[dict], dict[str, AttributionResult]]
MASK_METRICS = ("pointing_game", "relevance_mass")
METRICS = (*FIDELITY_METRICS, *MASK_METRICS, "sanity")
#: Shorthands accepted by :func:`resolve_metrics` (and ``evaluate --metrics``).
METRIC_ALIASES = {"road": ("road_morf", "road_lerf"), "deletion_zero": ("deletion",),
                  "insertion_blur": ("insertion",)}
#: The default set: independent perturbations first, then PCIM's own training
#: perturbations (labelled in every table), localisation and the sanity check.
DEFAULT_METRICS = ("road_morf", "road_lerf", "deletion_mean", "insertion_mean",
                   "insertion_zero", "deletion", "insertion", *MASK_METRICS, "sanity")


def resolve_metrics(names: Sequence[str] | None) -> list[str]:
    """Metric names with shorthands expanded (``road`` = both ROAD orders), in order,
    without repeats; ``None`` gives :data:`DEFAULT_METRICS`."""
    if names is None:
        return list(DEFAULT_METRICS)
    out: list[str] = []
    for name in names:
        for m in METRIC_ALIASES.get(name, (name,)):
            if m not in METRICS:
                raise InputError(f"unknown metric {name!r}; choose from "
                                 f"{sorted([*METRICS, *METRIC_ALIASES])}")
            if m not in out:
                out.append(m)
    return out


@contextmanager
def count_passes(model: torch.nn.Module) -> Iterator[dict]:
    """Count the samples that go forward and backward through ``model`` inside the block:
    ``{"forward": n, "backward": n}`` (``None`` for modules that take no hooks, e.g.
    TorchScript)."""
    counts: dict = {"forward": 0, "backward": 0}
    handles = []
    try:
        handles.append(model.register_forward_hook(
            lambda _m, inp, _out: counts.__setitem__(
                "forward", counts["forward"] + int(inp[0].shape[0]))))
        handles.append(model.register_full_backward_pre_hook(
            lambda _m, grad_out: counts.__setitem__(
                "backward", counts["backward"] + int(grad_out[0].shape[0]))))
    except (AttributeError, RuntimeError, NotImplementedError):
        counts = {"forward": None, "backward": None}
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _put(row: dict, key: str, values: np.ndarray | None) -> None:
    """Store the mean of the finite per-image ``values`` and its 95 % bootstrap interval."""
    if values is None:
        row[key] = None
        return
    mean, lo, hi = bootstrap_interval(values)
    row[key] = None if np.isnan(mean) else mean
    if not np.isnan(mean):
        row["intervals"][key] = [lo, hi]


def evaluate_methods(model: torch.nn.Module, images: np.ndarray,
                     targets: int | Sequence[int] | None = None,
                     masks: np.ndarray | None = None,
                     methods: Sequence[str] = ("pcim", "integrated_gradients"),
                     metrics: Sequence[str] | None = None, device: str = "cpu",
                     batch_size: int = 32, method_params: dict[str, dict] | None = None,
                     n_steps: int = 50, seed: int = 0
                     ) -> Generator[Progress, None, EvalOutput]:
    """Run every method on ``images`` and score it with every metric.

    Returns ``(rows, results)``: one dict per method and the :class:`AttributionResult`
    of each method. A row holds every metric's mean over images as ``<metric>_auc``
    (perturbation metrics) or ``<metric>`` (``None`` where it does not apply, e.g. mask
    metrics without ``masks``), its 95 % bootstrap interval over images under
    ``intervals``, the metrics the method optimises during attribution under
    ``trained_on`` (not independent evidence), forward and backward passes per image,
    ms per image, peak memory above the start in MiB (``peak_mib``: CUDA tensors, or the
    process's resident set on a Linux CPU, see :func:`.peak_memory.track_peak`; ``None``
    where it cannot be measured) and the batch size.
    """
    bad = [m for m in methods if m not in available_methods()]
    if bad:
        raise InputError(f"unknown method(s) {bad}; choose from {available_methods()}")
    metrics = resolve_metrics(metrics)
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
        dev = resolve_device(device)
        with track_peak(dev) as peak, count_passes(model) as passes:
            res = yield from explain(model, images, targets, method=name, device=device,
                                     batch_size=batch_size, **params)
        results[name] = res
        n_img = int(images.shape[0])
        res_dev = torch.device(str(res.params.get("device", "cpu")))
        row: dict = {
            "method": name, "n_images": n_img, "batch_size": int(batch_size),
            "ms_per_image": 1000.0 * res.seconds / n_img,
            "forward_per_image": None if passes["forward"] is None
            else passes["forward"] / n_img,
            "backward_per_image": None if passes["backward"] is None
            else passes["backward"] / n_img,
            "peak_mib": peak["peak_mib"], "peak_source": peak["peak_source"],
            "trained_on": [m for m in trained_perturbations(name, params) if m in metrics],
            "intervals": {},
        }
        kw = {"n_steps": n_steps, "device": str(res_dev), "seed": seed}
        yield Progress(k, total, f"{name}: metrics")
        for metric in (m for m in metrics if m in FIDELITY_METRICS):
            _put(row, f"{metric}_auc",
                 FIDELITY_METRICS[metric].scores(model, images, res.maps, res.targets, **kw))
        if "pointing_game" in metrics:
            _put(row, "pointing_game", None if masks is None else pointing_game(res.maps, masks))
        if "relevance_mass" in metrics:
            _put(row, "relevance_mass",
                 None if masks is None else relevance_mass(res.maps, masks))
        if "sanity" in metrics:
            if random_model is None:
                row["sanity_spearman"] = None
            else:
                rnd = yield from explain(random_model, images, res.targets, method=name,
                                         device=device, batch_size=batch_size, **params)
                _put(row, "sanity_spearman", sanity_spearman(res.maps, rnd.maps))
        rows.append(row)
    yield Progress(total, total, "done")
    return rows, results
