"""One entry point for pixel attribution: :func:`explain` over a registry of methods.

``explain`` validates the input, picks targets (the predicted class by default),
splits the images into batches (and each image into overlapping tiles when it is
larger than the model's ``input_size``), runs the chosen method as a generator of
:class:`Progress` events and returns an :class:`AttributionResult`.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ..data.tiling import TileBlender, tile_grid
from ..models.classifier import Classifier, check_outputs, frozen, infer_channels
from ..runtime.allocator import reuse_freed_memory
from ..runtime.devices import resolve_device
from ..runtime.errors import InputError
from ..runtime.progress import Progress
from ..runtime.validation import check_images
from ..study.findings import Finding, make, register_code
from .contrast import CONTRAST_TARGET, ContrastModel, check_contrast
from .field import (
    channels_last_for,
    fast_copy,
    is_oom,
    pcim_field,
    plan_field,
    smaller_batch,
)
from .gradients import FORWARD_ONLY, gradient_error, gradient_problem, is_gradient_error
from .methods import get_method, registered_methods
from .options import ExplainOptions, split_options


@dataclass
class AttributionResult:
    """Attribution maps for N images with what is needed to trust and reproduce them."""

    maps: np.ndarray
    targets: np.ndarray
    probabilities: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    #: the model's provenance (``Classifier.describe``), filled by ``Classifier.explain``
    model: dict = field(default_factory=dict)
    #: the contrast class per image ("target rather than contrast"), or None
    contrast: int | None = None
    #: :func:`.evidence.evidence_check`'s answer (``state`` per image: 'localised' or
    #: 'none', and its numbers), or None when not checked
    evidence: dict | None = None
    #: plain warnings about how far to trust these maps (e.g. a coarse black-box grid);
    #: the CLI prints them, the widget shows them, exports carry them
    warnings: list[str] = field(default_factory=list)
    #: structured findings about the inputs (``field-scale``, ``channel-map-suspect``);
    #: the evidence check's come from :meth:`all_findings`
    findings: list[Finding] = field(default_factory=list)

    def no_evidence(self) -> list[int]:
        """Indices of the images whose map does not localise evidence."""
        if not self.evidence or "state" not in self.evidence:
            return []
        return [i for i, s in enumerate(self.evidence["state"]) if s == "none"]

    def all_findings(self) -> list[Finding]:
        """The result's findings and the evidence check's (``evidence-none``,
        ``evidence-undetermined``)."""
        from .evidence import evidence_findings

        return [*self.findings, *evidence_findings(self.evidence)]

    def provenance(self) -> dict:
        """Method, parameters, targets, probabilities, the model (path, kind, sha256,
        channel and class names, normalisation), package version and time (JSON-ready).
        Faces add only their own context (image file, layer names)."""
        from ..runtime.version import __version__

        return {
            **_jsonable(self.model),
            "probabilities": np.asarray(self.probabilities).tolist(),
            "method": self.method,
            "params": _jsonable(self.params),
            "targets": [int(t) for t in self.targets],
            "contrast": None if self.contrast is None else int(self.contrast),
            "evidence": _jsonable(self.evidence),
            "warnings": list(self.warnings),
            "findings": [f.as_dict() for f in self.all_findings()],
            "seconds": float(self.seconds),
            "package": "napari-attribution",
            "version": __version__,
            "torch_version": torch.__version__,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def check_method_params(method: str, params: dict) -> None:
    """Raise :class:`InputError` for an unknown method, unknown parameter names or values
    of the wrong type (``steps="abc"``), before any work starts."""
    if method == AUTO:   # the parameters must suit whichever method it picks
        for m in ("pcim", FORWARD_ONLY):
            check_method_params(m, params)
        return
    get_method(method).make_config(params)


#: gradient PCIM where the model's gradients are usable, else forward-only PCIM
#: (:func:`.gradients.gradient_problem`); the choice is recorded in the provenance
AUTO = "auto"


def available_methods() -> list[str]:
    """Names accepted by :func:`explain` (the registry and ``"auto"``)."""
    return [*registered_methods(), AUTO]


def _check_gradients(model, method: str, maps: np.ndarray, probe: torch.Tensor) -> None:
    """Raise the gradient error when a gradient method gave flat maps for every image
    and the model's gradients are unusable (a model that ignores the image is fine)."""
    if not get_method(method).needs_gradients or maps.size == 0:
        return
    flat = maps.reshape(maps.shape[0], -1)
    if not bool((flat.max(1) == flat.min(1)).all()):
        return
    problem = gradient_problem(model, probe)
    if problem is not None:
        raise gradient_error(method, problem)


def _raise_if_no_graph(err: BaseException, model, method: str, probe: torch.Tensor) -> None:
    """Turn autograd's 'no graph' RuntimeError inside a gradient method into the one-line
    gradient error (other errors pass)."""
    if get_method(method).needs_gradients and is_gradient_error(err):
        problem = gradient_problem(model, probe) or "autograd finds no graph through it"
        raise gradient_error(method, problem) from None


def _resolve_targets(targets, n: int, n_classes: int, predicted: np.ndarray) -> np.ndarray:
    if targets is None:
        return predicted.astype(np.int64)
    arr = np.atleast_1d(np.asarray(targets))
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"target classes must be integers; got {arr.dtype}")
    if arr.ndim != 1 or (arr.size != 1 and arr.size != n):
        raise InputError(f"give one target class or one per image ({n}); got {arr.size}")
    if arr.min() < 0 or arr.max() >= n_classes:
        bad = int(arr[(arr < 0) | (arr >= n_classes)][0])
        raise InputError(f"target class {bad} is out of range: the model has {n_classes} "
                         f"classes (0..{n_classes - 1})")
    return np.broadcast_to(arr, (n,)).astype(np.int64).copy()


def _model_channels(model: torch.nn.Module) -> int | None:
    return infer_channels(model)


def _probe(model, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x``, turning shape errors deep inside the model into InputError."""
    try:
        with torch.no_grad():
            out = model(x)
    except InputError:
        raise
    except RuntimeError as err:
        if is_oom(err):
            raise  # the caller retries with fewer images per pass
        raise InputError(f"the model cannot run on images of shape {tuple(x.shape[1:])} "
                         f"(channels, height, width): {str(err).splitlines()[0]}") from None
    if out.ndim != 2:
        raise InputError(f"the model must map (B, C, H, W) to logits (B, n_classes); it "
                         f"returned shape {tuple(out.shape)}")
    return out


@dataclass
class _Job:
    """One explain call's plan, shared by its batches (and by each contrast group)."""

    method: str
    config: Any                  # the method's MethodConfig
    options: ExplainOptions
    device: torch.device
    input_size: int | None       # the tile side when tiled
    overlap: int
    tiled: bool
    t0: float
    field: dict | None = None    # whole-field PCIM settings, or None (per tile)

    @property
    def spec(self):
        return get_method(self.method)


def explain(model: torch.nn.Module, images: np.ndarray,
            targets: int | Sequence[int] | None = None, method: str = "pcim",
            options: ExplainOptions | None = None,
            **kwargs: Any) -> Generator[Progress, None, AttributionResult]:
    """Attribution maps for normalised float images (N, C, H, W) under ``model``.

    ``targets``: one class for all, one per image, or None for the predicted class.
    ``method``: a registered method (:mod:`.methods`) or ``"auto"``. ``options``
    (:class:`.options.ExplainOptions`): device, batches, tiling, contrast and the
    evidence check; keyword arguments that name an option override it
    (``device="cpu"``), the others are the method's settings (``steps=12``).

    ``contrast``: explain "target rather than ``contrast``" (logit difference, see
    :mod:`.contrast`); ``probabilities`` stay the model's own. ``evidence``: run
    :func:`.evidence.evidence_check` afterwards (tiled fields:
    :func:`.evidence.evidence_check_tiled`, probabilities over non-overlapping tiles)
    and store its per-image 'localised' / 'none' state in the result and provenance.
    ``input_size``: the side of the square input the model was trained on; larger
    images are split into overlapping tiles, one batch of tiles at a time; smaller
    images are refused. Probabilities are the mean over tiles overlapping by
    ``tile_overlap`` (default a quarter tile).

    PCIM maps of tiled images (``tiling``, see :mod:`.field`): ``"auto"`` (default)
    optimises one map per field on one scale, in one pass when the model takes any input
    size and the field fits ``memory_budget`` (bytes; None = from free memory), else in
    tiles overlapping by ``tile_overlap`` (default ``input_size // 16``) with background
    tiles (``background``: fraction of the field's intensity range; None = none) left
    at zero evidence; ``"field"`` never one pass; ``"one_pass"`` always; ``"per_tile"``
    the old behaviour (each tile on its own scale, blended). ``amp``: mixed precision
    on CUDA (default on). Other methods always run per tile. Cancel by closing the
    generator.
    """
    t0 = time.perf_counter()
    opts, params = split_options(options, kwargs)
    opts.check()
    check_method_params(method, params)
    if method != AUTO and opts.per_channel and not get_method(method).per_channel:
        raise InputError(f"{method} gives one map per image; per-channel maps are not "
                         "available for it")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    x_np = check_images(images, _model_channels(model))
    n, c, h, w = x_np.shape
    input_size = opts.input_size
    if input_size is not None:
        input_size = int(input_size)
        if min(h, w) < input_size:
            raise InputError(f"images are {h}x{w} pixels but the model needs at least "
                             f"{input_size}x{input_size}")
    tiled = input_size is not None and max(h, w) > input_size
    overlap = 0
    if tiled:
        overlap = int(opts.tile_overlap if opts.tile_overlap is not None
                      else input_size // 4)
    dev = resolve_device(opts.device)
    auto_choice = None
    if method == AUTO:
        side = input_size if tiled else None
        probe = torch.from_numpy(np.ascontiguousarray(
            x_np[:1, :, :side or h, :side or w])).to(dev)
        with frozen(model, dev) as net:
            _probe(net, probe)               # shape problems as a clear error first
            problem = gradient_problem(net, probe)
        method = "pcim" if problem is None else FORWARD_ONLY
        auto_choice = {"method_asked": AUTO, "method": method,
                       "reason": "the model's gradients are usable" if problem is None
                       else f"the model's gradients are unusable: {problem}"}
    spec = get_method(method)
    field = None
    if tiled and spec.whole_field and opts.tiling != "per_tile":
        field = {"one_pass": {"auto": None, "field": False, "one_pass": True}[opts.tiling],
                 "overlap": opts.tile_overlap, "background": opts.background,
                 "memory_budget": opts.memory_budget, "amp": opts.amp}
    job = _Job(method, spec.make_config(params), opts, dev, input_size, overlap, tiled, t0,
               field)
    # The caller's module keeps its own mode, device and gradient flags afterwards.
    with frozen(model, dev) as net:
        if opts.contrast is None:
            result = yield from _explain(net, x_np, targets, job)
        else:
            result = yield from _explain_contrast(net, x_np, targets, opts.contrast, job)
        if opts.evidence:
            result.evidence = _evidence(net, x_np, result, dev, opts.batch_size,
                                        input_size if tiled else None)
            result.seconds = time.perf_counter() - t0
        side = (input_size, input_size) if tiled else (h, w)
        result.warnings += method_warnings(method, params, *side)
        if auto_choice is not None:
            result.params = {**result.params, "auto": auto_choice}
        return result


def method_warnings(method: str, params: dict, h: int, w: int) -> list[str]:
    """Plain warnings about running ``method`` with ``params`` on H x W inputs (the size
    the method sees: the tile when images are tiled): black-box PCIM's coarse grid on
    large images (:meth:`.BlackboxPCIMConfig.coarseness_warning`). Batch runs check
    their plan with it too (the method record's ``warnings``)."""
    return get_method(method).plan_warnings(params, h, w)


def _evidence(model, x_np, result: AttributionResult, dev, batch_size: int,
              tile: int | None) -> dict:
    """:func:`.evidence.evidence_check` on the result's maps; fields larger than the
    model's input (``tile``) through :func:`.evidence.evidence_check_tiled` with the
    fast model copy (channels-last on CPU), a couple of tiles per pass on CPU."""
    from .evidence import evidence_check, evidence_check_tiled

    if tile is not None:
        per_pass = min(batch_size, 2) if dev.type == "cpu" else batch_size

        def check(net, x, maps, targets, batch_size, device):
            fast = fast_copy(net, channels_last=channels_last_for(dev))
            return evidence_check_tiled(fast, x, maps, targets, tile,
                                        batch_size=per_pass, device=device)
    else:
        check = evidence_check
    net, tgt = model, result.targets
    if result.contrast is not None:
        # one check per target class: the contrast model is per (target, contrast) pair
        states: dict[str, list] = {}
        for a in np.unique(tgt):
            idx = np.flatnonzero(tgt == a)
            sub = check(ContrastModel(model, int(a), result.contrast), x_np[idx],
                        result.maps[idx], np.full(len(idx), CONTRAST_TARGET),
                        batch_size=max(batch_size, 16), device=dev)
            for key, vals in sub.items():
                if isinstance(vals, list):
                    states.setdefault(key, [None] * len(tgt))
                    for k, i in enumerate(idx):
                        states[key][i] = vals[k]
                else:
                    states[key] = vals
        return states
    return check(net, x_np, result.maps, tgt, batch_size=max(batch_size, 16), device=dev)


def _explain_contrast(model, x_np, targets, contrast, job: _Job
                      ) -> Generator[Progress, None, AttributionResult]:
    """``_explain`` on :class:`ContrastModel` wrappers, one per target class."""
    n, _, h, w = x_np.shape
    dev, batch_size = job.device, job.options.batch_size
    # The model's own probabilities (mean over tiles when tiled), as ``_explain`` reports.
    grid = _probability_grid(h, w, job.input_size, job.overlap, job.tiled, job.field)
    sh, sw = (job.input_size, job.input_size) if job.tiled else (h, w)
    probs = np.zeros((n, 0))
    for y, x in grid:
        tile = x_np[:, :, y:y + sh, x:x + sw]
        p = np.concatenate([torch.softmax(_probe(model, torch.from_numpy(
            np.ascontiguousarray(tile[i:i + batch_size])).to(dev)).float(), 1).cpu().numpy()
            for i in range(0, n, batch_size)])
        probs = p / len(grid) if probs.size == 0 else probs + p / len(grid)
    probs = probs.astype(np.float32)
    tgt = _resolve_targets(targets, n, probs.shape[1], probs.argmax(1))
    b = check_contrast(contrast, tgt, probs.shape[1])
    maps = None
    probabilities = None
    groups = np.unique(tgt)
    for g, a in enumerate(groups):
        idx = np.flatnonzero(tgt == a)
        sub = ContrastModel(model, int(a), b)
        gen = _explain(sub, x_np[idx], CONTRAST_TARGET, job)
        res = yield from _relay(gen, g, len(groups), "", {})
        if maps is None:
            maps = np.zeros((n, *res.maps.shape[1:]), np.float32)
            probabilities = probs.copy()
            params_out = res.params
        maps[idx] = res.maps
    params_out = {**params_out, "contrast": b}
    return AttributionResult(maps=maps, targets=tgt, probabilities=probabilities,
                             method=job.method, params=params_out, contrast=b,
                             seconds=time.perf_counter() - job.t0)


def _relay(gen: Generator[Progress, None, Any], part: int, parts: int, prefix: str,
           partial: dict) -> Generator[Progress, None, Any]:
    """Forward ``gen``'s progress as part ``part`` of ``parts`` of a larger job (per mille,
    messages prefixed, ``partial`` merged in); return its value; close it when closed."""
    try:
        while True:
            ev = next(gen)
            frac = (part + ev.fraction) / parts
            yield Progress(int(round(1000 * frac)), 1000, prefix + ev.message,
                           partial={**partial, **ev.partial})
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def _probability_grid(h: int, w: int, input_size: int | None, overlap: int, tiled: bool,
                      field: dict | None) -> list[tuple[int, int]]:
    """Tile origins whose mean class probabilities ``explain`` reports: the whole image,
    the attribution tiles, or for a field tiles that do not overlap (only the last row
    and column may): every pixel weighs the same, as in the evidence check (a 2048²
    field: 64 forward passes instead of 121)."""
    if not tiled:
        return [(0, 0)]
    return tile_grid(h, w, input_size, 0 if field is not None else overlap)


def _explain(model, x_np, targets, job: _Job) -> Generator[Progress, None, AttributionResult]:
    n, c, h, w = x_np.shape
    method, field, dev = job.method, job.field, job.device
    batch_size, per_channel = job.options.batch_size, job.options.per_channel
    input_size, overlap, tiled, t0 = job.input_size, job.overlap, job.tiled, job.t0
    run = job.spec.run
    all_params = job.config.to_dict()
    # Small batches are faster per tile on the CPU (cache-bound convolutions), and the
    # field path probes with its fast copy (BatchNorm folded, channels-last on CPU).
    # (forward only, channels-last, one thread: 0.021 s per 256 px tile at batch 1 or 2,
    # 0.028 s at 4)
    probe_batch = min(batch_size, 2) if field is not None and dev.type == "cpu" \
        else batch_size
    probe_model = fast_copy(model, channels_last=channels_last_for(dev)) \
        if field is not None else model
    if field is not None and dev.type == "cpu":
        reuse_freed_memory()  # tile passes reuse freed blocks (see .allocator)

    # Probabilities on the unmodified input (whole image, or mean over its tiles).
    grid = _probability_grid(h, w, input_size, overlap, tiled, field)
    side_h, side_w = (input_size, input_size) if tiled else (h, w)
    # Work items: (image, tile origin); processed batch_size at a time, here and below.
    items = [(i, yx) for i in range(n) for yx in grid]

    def batch_of(chunk: list) -> torch.Tensor:
        return torch.stack([torch.from_numpy(x_np[i, :, y:y + side_h, x:x + side_w])
                            for i, (y, x) in chunk]).to(dev)

    prob_sum: np.ndarray | None = None
    b0 = 0
    while b0 < len(items):
        chunk = items[b0:b0 + probe_batch]
        try:
            p = torch.softmax(_probe(probe_model, batch_of(chunk)).float(), 1).cpu().numpy()
        except (RuntimeError, MemoryError) as err:  # out of memory: fewer per pass
            probe_batch = smaller_batch(err, probe_batch, dev)
            continue
        if prob_sum is None:
            prob_sum = np.zeros((n, p.shape[1]), np.float64)
        np.add.at(prob_sum, [i for i, _ in chunk], p)
        b0 += len(chunk)
    del probe_model  # field PCIM makes its own copy
    probabilities = (prob_sum / len(grid)).astype(np.float32)
    check_outputs(probabilities, what="class probabilities")
    tgt = _resolve_targets(targets, n, probabilities.shape[1], probabilities.argmax(1))

    shape = (c, h, w) if per_channel else (h, w)
    maps = np.zeros((n, *shape), np.float32)
    if field is not None:
        plans = []
        cfg = job.config
        for i in range(n):
            plan = plan_field(model, x_np[i], input_size, field["overlap"], dev,
                              max_batch=batch_size, memory_budget=field["memory_budget"],
                              one_pass=field["one_pass"], background=field["background"])
            plans.append(plan)
            gen = pcim_field(model, x_np[i], int(tgt[i]), cfg, plan, dev, per_channel,
                             amp=field["amp"])
            try:
                maps[i] = yield from _relay(gen, i, n, f"{method}: image {i + 1}/{n} — ",
                                            {"image": i})
            except RuntimeError as err:
                _raise_if_no_graph(err, model, method, batch_of(items[:1]))
                raise
        check_outputs(maps, what=f"{method} maps")
        _check_gradients(model, method, maps, batch_of(items[:2]))
        first = plans[0].describe()
        all_params.update({
            "per_channel": bool(per_channel), "batch_size": int(batch_size),
            "device": str(dev), "input_size": input_size,
            "tile_overlap": first["tile_overlap"], "probability_tile_overlap": 0,
            "tile": first["tile"], "channels_last": first["channels_last"],
            "tiling": first["tiling"], "tile_batch": first["tile_batch"],
            "tiles_per_image": [p.describe()["tiles"] for p in plans],
            "background_tiles": [p.describe()["background_tiles"] for p in plans],
            "steps_run": [p.steps_run for p in plans],
            "tile_passes": [p.tile_passes for p in plans],
            "model_rewrites": first["model_rewrites"],
            "background": field["background"], "amp": first["amp"],
            "amp_check": first["amp_check"], "field_notes": first["notes"],
            "map_scale": "field"})
        return AttributionResult(maps=maps, targets=tgt, probabilities=probabilities,
                                 method=method, params=_jsonable(all_params),
                                 seconds=time.perf_counter() - t0)
    blenders = {i: TileBlender(shape, input_size, overlap) for i in range(n)} if tiled else {}
    # A batch that runs out of memory is started again at half the size (the batches
    # before it are kept); the size that worked is in the provenance.
    bs, done, b, retries = batch_size, 0, 0, 0
    while done < len(items):
        chunk = items[done:done + bs]
        n_batches = b + 1 + (len(items) - done - len(chunk) + bs - 1) // bs
        xb = batch_of(chunk)
        tb = torch.as_tensor(tgt[[i for i, _ in chunk]], device=dev)
        gen = run(model, xb, tb, per_channel, job.config)
        try:
            out = (yield from _relay(gen, b, n_batches,
                                     f"{method}: batch {b + 1}/{n_batches} — ",
                                     {"batch": b, "n_batches": n_batches}))
        except (RuntimeError, MemoryError) as err:
            _raise_if_no_graph(err, model, method, xb[:2])
            del xb, gen
            bs = smaller_batch(err, bs, dev)
            retries += 1
            continue
        done += len(chunk)
        b += 1
        out = out.detach().float().cpu().numpy()
        for k, (i, (y, x)) in enumerate(chunk):
            if tiled:
                blenders[i].add(out[k], y, x)
            else:
                maps[i] = out[k]
    for i, bl in blenders.items():
        maps[i] = bl.result()
    check_outputs(maps, what=f"{method} maps")
    _check_gradients(model, method, maps, batch_of(items[:2]))
    all_params.update({"per_channel": bool(per_channel), "batch_size": int(bs),
                       "device": str(dev), "input_size": input_size,
                       "tile_overlap": overlap if tiled else None,
                       "tiling": "per_tile" if tiled else None})
    if retries:
        all_params.update({"batch_size_asked": int(batch_size), "oom_retries": retries})
    return AttributionResult(maps=maps, targets=tgt, probabilities=probabilities,
                             method=method, params=_jsonable(all_params),
                             seconds=time.perf_counter() - t0)


FIELD_SCALE = register_code(
    "field-scale", "caution",
    "the model records no training input size: images are explained whole, in one pass, "
    "which for a model trained on crops is the wrong scale")


def explain_classifier(clf: Classifier, images: Any, targets: Any = None,
                       method: str = "pcim", **options: Any
                       ) -> Generator[Progress, None, AttributionResult]:
    """PCIM or a baseline on raw images through a :class:`Classifier`; the result carries
    the model's provenance.

    ``images``: raw (N, C, H, W) or (C, H, W), or an ImageSet / plate crops (prepared
    crops are used as they are); they are prepared as the model records (normalisation).
    Images larger than the model's training input (``clf.input_size``) are explained in
    tiles of that size unless ``input_size`` says otherwise; a bundle that records no
    size gets a ``field-scale`` finding. ``targets``: as
    :meth:`Classifier.resolve_targets`; ``options`` go to :func:`explain` (an
    ``options=ExplainOptions(...)`` object and/or its fields as keywords, and the method's
    settings; ``contrast`` may be a class name here).
    """
    if hasattr(images, "images"):   # an ImageSet or plate FieldCrops: prepare knows how
        x = clf.prepare(images)
        raw = np.asarray(images.images)
    else:
        raw = np.asarray(images)
        raw = raw[None] if raw.ndim == 3 else raw
        x = clf.prepare(raw)
    x = x[None] if x.ndim == 3 else x
    tgt = clf.resolve_targets(targets)
    if isinstance(tgt, list) and any(t is None for t in tgt):
        raise InputError("give class targets for every image, or 'predicted' for all")
    findings = channel_map_findings(clf, raw)
    opts, params = split_options(options.pop("options", None), options)
    if opts.input_size is None:
        input_size, found = scale_for(clf, x.shape[-2:])
        opts = opts.replace(input_size=input_size)
        findings += found
    if opts.contrast is not None:   # "A rather than B": a name or an index
        contrast = opts.contrast
        if not isinstance(contrast, (str, int, np.integer)) or isinstance(contrast, bool):
            raise InputError(f"the contrast class must be one class index or name; got "
                             f"{contrast!r}")
        opts = opts.replace(contrast=clf.resolve_targets(contrast))
        if opts.contrast is None:
            raise InputError("the contrast must be a class, not 'predicted'")
    result = yield from explain(clf.module, x, tgt, method, opts, **params)
    result.model = clf.describe()
    result.model["target_names"] = [clf.class_names[int(t)] for t in result.targets]
    result.findings += findings
    return result


def channel_map_findings(clf: Classifier, images: np.ndarray) -> list[Finding]:
    """``channel-map-suspect`` cautions for raw ``images`` (N, C, H, W) in the model's
    channel order, against the per-channel statistics its bundle recorded at training
    (none for models without them)."""
    from ..channels.channel_map import check_channel_map

    data = clf.provenance.get("data") if isinstance(clf.provenance, dict) else None
    ref = data.get("channel_reference") if isinstance(data, dict) else None
    if not isinstance(ref, dict) or images.ndim != 4:
        return []
    return check_channel_map(ref, images, list(clf.channel_names))


def scale_for(clf: Classifier, shape: Sequence[int]) -> tuple[int | None, list[Finding]]:
    """The tile side to explain images of ``shape`` (H, W) at under ``clf``: its training
    input size when the images are larger (None when they fit in one pass), with a
    ``field-scale`` finding when a trained bundle records none and the images are not of
    a size it could have been trained at."""
    h, w = (int(s) for s in shape[-2:])
    side = clf.input_size
    if side is not None:
        if max(h, w) <= side:
            return None, []
        if min(h, w) < side:
            return None, [make(FIELD_SCALE, f"the images ({h}x{w} px) are narrower than the "
                                            f"model's training input ({side} px) in one "
                                            "direction, so they cannot be tiled at it; they "
                                            "are explained whole, in one pass",
                               input_size=side, image_size=[h, w])]
        return int(side), []
    trained = (clf.provenance.get("data") or {}).get("image_size") \
        if isinstance(clf.provenance, dict) else None
    if clf.kind in ("bundle", "train_result") and trained != [h, w]:
        return None, [make(FIELD_SCALE, f"the model ({clf.source}) records no training "
                                        f"input size, so the {h}x{w} px images are "
                                        "explained whole in one pass; if it was trained on "
                                        "crops, give the crop size (input_size / "
                                        "--input-size) to explain them in tiles of it",
                           input_size=None, image_size=[h, w])]
    return None, []
