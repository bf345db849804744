"""Methods x metrics: one table comparing attribution methods on the same model and images."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..attribution.explain import AttributionResult, available_methods, explain
from ..models.classifier import frozen
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
    tie_report,
    trained_perturbations,
)
from .model_free import MODEL_FREE, model_free_maps
from .sanity import (
    SANITY_MODES,
    cascade_models,
    label_fit_note,
    label_randomised_model,
    layer_name,
    parameter_layers,
    per_seed_rho,
    summarise,
    summarise_cascade,
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


def _targets(model: torch.nn.Module, images: np.ndarray,
             targets: int | Sequence[int] | None, batch_size: int) -> np.ndarray:
    """The class per image: ``targets`` broadcast, or the model's prediction."""
    n = int(images.shape[0])
    if targets is not None:
        return np.broadcast_to(np.atleast_1d(np.asarray(targets)), (n,)).astype(np.int64)
    with torch.no_grad(), frozen(model) as net:
        x = torch.as_tensor(np.asarray(images, np.float32))
        return torch.cat([net(x[i:i + batch_size]).argmax(1)
                          for i in range(0, n, batch_size)]).numpy().astype(np.int64)


def verdict(metric: str, method_scores: np.ndarray,
            baseline_scores: dict[str, np.ndarray], seed: int = 0
            ) -> tuple[str, dict[str, list[float]]]:
    """``"win"``, ``"tie"`` or ``"lose"`` of a method against the model-free baselines on
    one metric, and the paired intervals it rests on.

    For each baseline the per-image difference (method − baseline, same images) gets a
    95 % paired bootstrap interval. *win*: every interval lies on the metric's better
    side of zero; *lose*: at least one lies on the worse side; otherwise *tie*.
    """
    higher = FIDELITY_METRICS[metric].higher_is_better
    paired: dict[str, list[float]] = {}
    better, worse = [], []
    for name, base in baseline_scores.items():
        mean, lo, hi = bootstrap_interval(np.asarray(method_scores) - np.asarray(base),
                                          seed=seed)
        paired[name] = [mean, lo, hi]
        better.append(lo > 0 if higher else hi < 0)
        worse.append(hi < 0 if higher else lo > 0)
    if any(worse):
        return "lose", paired
    return ("win" if better and all(better) else "tie"), paired


def _check_sanity_mode(mode: str) -> None:
    if mode not in SANITY_MODES:
        raise InputError(f"unknown sanity mode {mode!r}; choose from {list(SANITY_MODES)}")


def sanity_check(rows_maps: np.ndarray, model: torch.nn.Module, images: np.ndarray,
                 targets: np.ndarray, method: str, params: dict, device: str,
                 batch_size: int, seed: int, n_seeds: int,
                 label_models: list[tuple[torch.nn.Module, float]], mode: str = "full"
                 ) -> Generator[Progress, None, dict]:
    """The sanity summary of one method (``rows_maps``: its maps of the trained model):
    ``model`` randomised with seeds ``seed`` … ``seed + n_seeds − 1`` (``mode``
    ``"full"``: every parameter at once; ``"cascade"``: layer by layer from the top,
    :func:`.sanity.cascade_models`, whose last step is the full randomisation), and the
    label-randomised copies ``label_models`` (model, accuracy on the shuffled labels),
    if any."""
    _check_sanity_mode(mode)

    def maps_of(net: torch.nn.Module) -> Generator[Progress, None, np.ndarray]:
        if method in MODEL_FREE:
            return rows_maps   # the map ignores the model: it survives by construction
        res = yield from explain(net, images, targets, method=method, device=device,
                                 batch_size=batch_size, **params)
        return res.maps

    def rhos(nets) -> Generator[Progress, None, tuple[list[float], list[float]]]:
        """Signed and absolute rank correlations of the maps under each of ``nets``."""
        signed, absolute = [], []
        for net in nets:
            a, b = per_seed_rho(rows_maps, (yield from maps_of(net)))
            signed.append(a)
            absolute.append(b)
        return signed, absolute

    seeds = [seed + k for k in range(n_seeds)]
    if mode == "full":
        signed, absolute = yield from rhos(randomize_model(model, seed=s) for s in seeds)
        out = {"model": summarise(signed, absolute, seeds), "mode": "full"}
    else:
        example = torch.as_tensor(np.asarray(images[:1], np.float32))
        per_step_s: list[list[float]] = []
        per_step_a: list[list[float]] = []
        names = [layer_name(layer) for layer in reversed(parameter_layers(model, example))]
        for s in seeds:
            signed, absolute = yield from rhos(net for _, net in
                                               cascade_models(model, example, seed=s))
            per_step_s.append(signed)
            per_step_a.append(absolute)
        ref = yield from rhos([model])      # step 0: the trained model explained again
        cascade = summarise_cascade(names, [list(v) for v in zip(*per_step_s, strict=True)],
                                    [list(v) for v in zip(*per_step_a, strict=True)], seeds,
                                    (ref[0][0], ref[1][0]))
        # the cascade's last step is the full randomisation: the pass/fail rule applies there
        out = {"model": summarise([v[-1] for v in per_step_s], [v[-1] for v in per_step_a],
                                  seeds), "mode": "cascade", "cascade": cascade}
    if label_models:
        signed, absolute = yield from rhos(net for net, _ in label_models)
        out["labels"] = summarise(signed, absolute, seeds[:len(label_models)])
        out["labels"]["shuffled_label_accuracy"] = [acc for _, acc in label_models]
        note = label_fit_note([acc for _, acc in label_models])
        if note:
            out["labels"]["note"] = note
    out["failing"] = any(v["failing"] for k, v in out.items()
                         if k in ("model", "labels"))
    return out


def evaluate_methods(model: torch.nn.Module, images: np.ndarray,
                     targets: int | Sequence[int] | None = None,
                     masks: np.ndarray | None = None,
                     methods: Sequence[str] = ("pcim", "integrated_gradients"),
                     metrics: Sequence[str] | None = None, device: str = "cpu",
                     batch_size: int = 32, method_params: dict[str, dict] | None = None,
                     n_steps: int = 50, seed: int = 0,
                     model_free: Sequence[str] | None = MODEL_FREE,
                     sanity_seeds: int = 1, labels: np.ndarray | None = None,
                     sanity_labels: bool = False, label_epochs: int = 30,
                     sanity_mode: str = "full"
                     ) -> Generator[Progress, None, EvalOutput]:
    """Run every method on ``images`` and score it with every metric, beside the
    model-free baselines (:mod:`.model_free`) scored the same way.

    Returns ``(rows, results)``: one dict per method, then one per model-free baseline
    (``model_free: True``), and the :class:`AttributionResult` of each method. A row
    holds every metric's mean over images as ``<metric>_auc`` (perturbation metrics) or
    ``<metric>`` (``None`` where it does not apply, e.g. mask metrics without
    ``masks``), its 95 % bootstrap interval over images under ``intervals``, the
    metrics the method optimises during attribution under ``trained_on`` (not
    independent evidence), forward and backward passes per image, ms per image, peak
    memory above the start in MiB (``peak_mib``: CUDA tensors, or the process's
    resident set on a Linux CPU, see :func:`.peak_memory.track_peak`; ``None`` where it
    cannot be measured), the batch size, how ties were broken (``ties``, see
    :func:`.metrics.tie_report`) and, for methods when baselines ran, ``verdicts``
    (metric -> win / tie / lose, :func:`verdict`) with the paired intervals under
    ``paired_vs_model_free``.

    ``"sanity"`` in ``metrics``: ``sanity_seeds`` randomised models (seeds ``seed``,
    ``seed + 1``, ...); with ``sanity_labels`` also as many randomised copies trained
    ``label_epochs`` epochs on ``labels`` shuffled (:mod:`.sanity`). The row gets
    ``sanity`` (the full summary), ``sanity_spearman`` / ``sanity_worst`` (median and
    worst ρ, signed maps), ``sanity_abs_median`` / ``sanity_abs_worst`` (absolute
    maps) and ``sanity_failing``. ``sanity_mode="cascade"`` randomises each seed's model
    layer by layer from the top first (:func:`.sanity.cascade_models`; ρ after every
    step under ``sanity["cascade"]``); its last step is the full randomisation, on which
    the pass/fail rule stays (``"full"``: that step alone).
    """
    bad = [m for m in methods if m not in available_methods()]
    if bad:
        raise InputError(f"unknown method(s) {bad}; choose from {available_methods()}")
    model_free = list(model_free or [])
    bad = [m for m in model_free if m not in MODEL_FREE]
    if bad:
        raise InputError(f"unknown model-free baseline(s) {bad}; choose from "
                         f"{list(MODEL_FREE)}")
    clash = sorted(set(methods) & set(model_free))
    if clash:
        raise InputError(f"{clash} named both as method and as model-free baseline")
    metrics = resolve_metrics(metrics)
    if masks is not None and np.asarray(masks).shape != (images.shape[0], *images.shape[-2:]):
        raise InputError(f"masks of shape {np.asarray(masks).shape} do not fit images of "
                         f"shape {images.shape}")
    _check_sanity_mode(sanity_mode)
    if int(sanity_seeds) < 1:
        raise InputError(f"sanity needs at least one seed; got {sanity_seeds}")
    if sanity_labels and labels is None:
        raise InputError("the label-randomisation check needs labels (an npz with "
                         "'labels', or --sample)")
    method_params = method_params or {}
    sanity_ok = "sanity" in metrics
    if sanity_ok:
        try:
            randomize_model(model, seed=seed)
        except InputError:
            sanity_ok = False
    label_models: list = []
    if sanity_ok and sanity_labels:
        for k in range(int(sanity_seeds)):
            yield Progress(0, 1, f"sanity: training on shuffled labels, seed {seed + k}")
            label_models.append(label_randomised_model(
                model, images, np.asarray(labels), seed=seed + k, epochs=label_epochs,
                device=str(resolve_device(device))))
    rows, results = [], {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    names = [*methods, *model_free]
    total = len(names)
    tgt_fixed = None
    for k, name in enumerate(names):
        free = name in model_free
        params = dict(method_params.get(name, {}))
        n_img = int(images.shape[0])
        if free:
            if tgt_fixed is None:   # the targets the methods explained
                tgt_fixed = next(iter(results.values())).targets if results else \
                    _targets(model, images, targets, batch_size)
            maps = model_free_maps(name, images, seed)
            tg, res_dev = tgt_fixed, torch.device("cpu")
            row: dict = {"method": name, "model_free": True, "n_images": n_img,
                         "batch_size": None, "ms_per_image": 0.0, "forward_per_image": 0.0,
                         "backward_per_image": 0.0, "peak_mib": None, "peak_source": None,
                         "trained_on": [], "intervals": {}}
        else:
            yield Progress(k, total, f"{name}: attribution")
            dev = resolve_device(device)
            with track_peak(dev) as peak, count_passes(model) as passes:
                res = yield from explain(model, images, targets, method=name, device=device,
                                         batch_size=batch_size, **params)
            results[name] = res
            maps, tg = res.maps, res.targets
            res_dev = torch.device(str(res.params.get("device", "cpu")))
            row = {
                "method": name, "model_free": False, "n_images": n_img,
                "batch_size": int(batch_size),
                "ms_per_image": 1000.0 * res.seconds / n_img,
                "forward_per_image": None if passes["forward"] is None
                else passes["forward"] / n_img,
                "backward_per_image": None if passes["backward"] is None
                else passes["backward"] / n_img,
                "peak_mib": peak["peak_mib"], "peak_source": peak["peak_source"],
                "trained_on": [m for m in trained_perturbations(name, params) if m in metrics],
                "intervals": {},
            }
            if res.method != name:
                row["ran_as"] = res.method
        row["ties"] = tie_report(maps, seed)
        kw = {"n_steps": n_steps, "device": str(res_dev), "seed": seed}
        yield Progress(k, total, f"{name}: metrics")
        scores[name] = {}
        for metric in (m for m in metrics if m in FIDELITY_METRICS):
            scores[name][metric] = FIDELITY_METRICS[metric].scores(model, images, maps, tg,
                                                                   **kw)
            _put(row, f"{metric}_auc", scores[name][metric])
        if "pointing_game" in metrics:
            _put(row, "pointing_game", None if masks is None else pointing_game(maps, masks))
        if "relevance_mass" in metrics:
            _put(row, "relevance_mass", None if masks is None else relevance_mass(maps, masks))
        if "sanity" in metrics:
            if not sanity_ok:
                row["sanity_spearman"] = None
            else:
                yield Progress(k, total, f"{name}: sanity ({sanity_mode}, {sanity_seeds} "
                                         "seed(s))")
                san = yield from sanity_check(maps, model, images, tg, name, params, device,
                                         batch_size, seed, int(sanity_seeds), label_models,
                                         sanity_mode)
                row["sanity"] = san
                m = san["model"]
                row.update({"sanity_spearman": m["median"], "sanity_worst": m["worst"],
                            "sanity_abs_median": m["abs_median"],
                            "sanity_abs_worst": m["abs_worst"],
                            "sanity_failing": san["failing"]})
                if "labels" in san:
                    row.update({"sanity_labels_median": san["labels"]["median"],
                                "sanity_labels_worst": san["labels"]["worst"]})
                    if "note" in san["labels"]:
                        row["sanity_labels_note"] = san["labels"]["note"]
        rows.append(row)
    if model_free:
        for row in rows:
            if row["model_free"]:
                continue
            row["verdicts"], row["paired_vs_model_free"] = {}, {}
            for metric in scores[row["method"]]:
                v, paired = verdict(metric, scores[row["method"]][metric],
                                    {b: scores[b][metric] for b in model_free}, seed)
                row["verdicts"][metric] = v
                row["paired_vs_model_free"][metric] = paired
    yield Progress(total, total, "done")
    return rows, results
