"""The scripting API: one call per task, over the same generators the GUI and CLI drive.

Each verb runs its generator to completion; pass ``progress=callable`` to see the
:class:`~napari_attribution.core.progress.Progress` events (for example to print them).

    import napari_attribution as na

    data = na.sample_cells()                           # or io.plate.load_bbbc013(...)
    result = na.train(data, epochs=10)                 # DCMIX, returns a TrainResult
    print(result.importance.as_dict())                 # channel importance
    na.save_bundle("model.safetensors", result)
    maps = na.explain("model.safetensors", raw_images) # PCIM, returns an AttributionResult
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from .core.attribution import AttributionResult
from .core.attribution import explain as _explain_gen
from .core.data import ImageSet
from .core.errors import InputError
from .core.importance import ChannelImportance
from .core.importance import channel_importance as _channel_importance
from .core.progress import Progress, run_generator
from .core.training import TrainConfig, TrainResult, train_dcmix
from .io.bundle import ModelBundle, load_bundle, save_training_result

ProgressCallback = Callable[[Progress], Any] | None


def _config(config: TrainConfig | None, options: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    base = (config or TrainConfig()).to_dict()
    return TrainConfig.from_dict({**base, **options})


def train(data: ImageSet, config: TrainConfig | None = None, *, repeats: int = 1,
          progress: ProgressCallback = None, **options: Any) -> TrainResult:
    """Train a DCMIX classifier on ``data``; ``options`` override ``TrainConfig`` fields
    (``epochs=10, device="cuda", n_heads=2`` ...).

    The result carries the study checks: ``warnings`` (plain-language strings),
    ``validation`` (balanced accuracy, per-class recall, confusion matrix),
    ``study_design``, ``shortcut``, ``posthoc``; ``repeats=N`` trains N seeds and fills
    ``result.repeats`` with the spread of the channel importance.
    """
    from .core.repeats import train_repeats

    cfg = _config(config, options)
    gen = train_dcmix(data, cfg) if repeats == 1 else train_repeats(data, cfg, repeats)
    return run_generator(gen, progress)


def retrain_check(data: ImageSet, config: TrainConfig | None = None, *,
                  progress: ProgressCallback = None, **options: Any) -> dict[str, Any]:
    """Balanced accuracy of models retrained on each channel alone and without each
    channel (2C+1 trainings, same split); the dict also holds the seconds spent."""
    from .core.repeats import retrain_check as _retrain

    return run_generator(_retrain(data, _config(config, options)), progress)


def posthoc_importance(model: Any, data: ImageSet, *, method: str = "permutation",
                       n_repeats: int = 3, seed: int = 0):
    """Channel importance of ANY classifier on labelled ``data``, without mixing weights:
    ``permutation`` (pixels of one channel shuffled within each image) or
    ``feature_ablation`` (Captum, channel replaced by its mean); loss rise and
    balanced-accuracy drop with 95 % bootstrap intervals.

    A bundle (path, ``ModelBundle``, ``TrainResult``) normalises the raw images as in
    training; any other torch module gets the images as given.
    """
    from .core.posthoc import posthoc_channel_importance

    bundle = _as_bundle(model)
    if bundle is not None:
        bundle.check_channels(data.n_channels, "the data")
        net, x = bundle.model, bundle.prepare(data.images)
    else:
        net, x = model, data.images
    return posthoc_channel_importance(net, x, data.labels, data.channel_names, method,
                                      n_repeats=n_repeats, seed=seed)


def check_study_design(data: ImageSet) -> list[str]:
    """The study-design warnings for ``data`` (independent wells, fields and plates per
    class, class balance), before any training."""
    from .core.study_design import check_study_design as _check

    return _check(data).warnings


def save_bundle(path: str | Path, result: TrainResult) -> Path:
    """Save a trained model (weights, names, normalisation, provenance) as one file."""
    return save_training_result(path, result)


def _as_bundle(model: str | Path | ModelBundle | TrainResult) -> ModelBundle | None:
    if isinstance(model, (str, Path)):
        return load_bundle(model)
    if isinstance(model, TrainResult):
        return ModelBundle(model=model.model, config=model.model_config,
                           channel_names=model.channel_names, class_names=model.class_names,
                           normalizer=model.normalizer, provenance=model.provenance(),
                           importance=model.importance, warnings=list(model.warnings),
                           checks={k: v for k, v in model.checks().items()
                                   if k != "warnings" and v is not None})
    return model if isinstance(model, ModelBundle) else None


def channel_importance(model: str | Path | ModelBundle | TrainResult,
                       data: ImageSet | None = None) -> ChannelImportance:
    """Channel importance of a DCMIX model: mixing weights, per head and overall, with the
    channel-ablation check computed on ``data`` (raw images; normalised as in training).

    Without ``data``, the importance stored at training time is returned.
    """
    bundle = _as_bundle(model)
    if bundle is None:
        raise InputError("model must be a bundle path, a ModelBundle or a TrainResult; got "
                         f"{type(model).__name__}")
    if data is None:
        if bundle.importance is None:
            raise InputError("this model has no stored channel importance; pass data to "
                             "compute it")
        return bundle.importance
    bundle.check_channels(data.n_channels, "the data")
    return _channel_importance(bundle.model, bundle.prepare(data.images), data.labels,
                               bundle.channel_names)


def explain(model: str | Path | ModelBundle | TrainResult | Any, images: np.ndarray, *,
            method: str = "pcim", targets: int | Sequence[int] | str | None = None,
            progress: ProgressCallback = None, **options: Any) -> AttributionResult:
    """Attribution maps for ``images`` (N, C, H, W) or (C, H, W).

    A bundle (path, ``ModelBundle`` or ``TrainResult``) normalises raw images as at
    training time and accepts class names as ``targets``; any other torch module or
    TorchScript model gets the images as given. ``targets=None`` explains the predicted
    class. ``options`` go to :func:`napari_attribution.core.attribution.explain`
    (``per_channel``, ``device``, ``input_size`` for tiling, method parameters).
    """
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    bundle = _as_bundle(model)
    if bundle is not None:
        net, arr = bundle.model, bundle.prepare(arr)
        if isinstance(targets, str):
            if targets not in bundle.class_names:
                raise InputError(f"unknown class {targets!r}; the model knows "
                                 f"{bundle.class_names}")
            targets = bundle.class_names.index(targets)
    else:
        net = model
        if isinstance(targets, str):
            raise InputError("class names as targets need a model bundle; give an index")
    return run_generator(_explain_gen(net, arr, targets=targets, method=method, **options),
                         progress)


def sample_cells(n_images: int = 400, size: int = 48, seed: int = 0) -> ImageSet:
    """The synthetic cell-phenotype sample (the marker moves into the nucleus in one
    channel only; nuclei masks and ground truth in ``metadata`` and ``masks``)."""
    from .core.synthetic import make_cell_phenotype

    return make_cell_phenotype(n_images=n_images, size=size, seed=seed)


def sample_multi_snr(n_images: int = 600, size: int = 32, seed: int = 0) -> ImageSet:
    """The synthetic multi-SNR sample (known true channel order in ``metadata``)."""
    from .core.synthetic import make_multi_snr

    return make_multi_snr(n_images=n_images, size=size, seed=seed)


def explain_plate(plate: Any, model: str | Path, output: str | Path, *,
                  methods: Sequence[str] = ("pcim",), progress: ProgressCallback = None,
                  params: dict[str, dict[str, Any]] | None = None,
                  **options: Any) -> Any:
    """Predictions and attribution maps for every field of view of ``plate`` (an
    ``io.plate.Plate``), on Dask, into the OME-Zarr store ``output`` (resumable: call
    again after an interruption). ``options``: ``BatchConfig`` fields (``per_channel``,
    ``input_size``, ``device`` ...) and ``run_batch`` keywords (``scheduler``,
    ``n_workers``, ``overwrite`` ...). Returns a ``batch.BatchResult``."""
    from .batch import BatchConfig, records_from_plate, run_batch

    cfg_keys = {f.name for f in fields(BatchConfig)}
    cfg = BatchConfig(methods=list(methods), params=params or {},
                      **{k: v for k, v in options.items() if k in cfg_keys})
    run_opts = {k: v for k, v in options.items() if k not in cfg_keys}
    return run_generator(run_batch(records_from_plate(plate), model, output, cfg, **run_opts),
                         progress)
