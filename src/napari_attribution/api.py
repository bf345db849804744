"""The scripting API: one call per task, over the same generators the GUI and CLI drive.

Each verb runs its generator to completion; pass ``progress=callable`` to see the
:class:`~napari_attribution.core.runtime.progress.Progress` events (for example to print them).

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

from .core.attribution.explain import AttributionResult, explain_classifier
from .core.channels.importance import ChannelImportance
from .core.channels.importance import channel_importance as _channel_importance
from .core.channels.training import TrainConfig, TrainResult, train_dcmix
from .core.data.dataset import ImageSet
from .core.models.classifier import frozen
from .core.runtime.errors import InputError
from .core.runtime.progress import Progress, run_generator
from .io.bundle import save_training_result
from .io.models import load_model

ProgressCallback = Callable[[Progress], Any] | None


def _config(config: TrainConfig | None, options: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    base = (config or TrainConfig()).to_dict()
    return TrainConfig.from_dict({**base, **options})


def train(data: ImageSet, config: TrainConfig | None = None, *, repeats: int = 1,
          cv: int | str = "auto", progress: ProgressCallback = None,
          **options: Any) -> TrainResult:
    """Train a DCMIX classifier on ``data``; ``options`` override ``TrainConfig`` fields
    (``epochs=10, device="cuda", n_heads=2`` ...).

    The result carries the study checks: ``findings`` (Finding records: code, severity,
    message, evidence; see docs/study_design.md), ``warnings`` (the alarm and caution
    messages), ``verdict`` (the one channel verdict), ``validation`` (balanced accuracy
    with its 95 % interval, held-out n and recall per class, confusion matrix),
    ``study_design``, ``shortcut``, ``posthoc``; ``repeats=N`` trains N seeds and fills
    ``result.repeats`` with the spread of the channel importance. ``cv``: K folds over
    the groups (every object held out once), 1 for one split, ``"auto"`` (default) for
    5 folds when the single split would hold out fewer than 10 objects of some class.
    """
    from .core.channels.repeats import train_repeats
    from .core.channels.training import auto_folds

    if cv != "auto":
        options = {**options, "cv": int(cv)}
    cfg = _config(config, options)
    if cv == "auto" and repeats == 1 and cfg.cv == 1:
        cfg.cv = auto_folds(data, cfg)
    gen = train_dcmix(data, cfg) if repeats == 1 else train_repeats(data, cfg, repeats)
    return run_generator(gen, progress)


def retrain_check(data: ImageSet, config: TrainConfig | None = None, *,
                  progress: ProgressCallback = None, **options: Any) -> dict[str, Any]:
    """Balanced accuracy of models retrained on each channel alone and without each
    channel (2C+1 trainings, same split); the dict also holds the seconds spent."""
    from .core.channels.repeats import retrain_check as _retrain

    return run_generator(_retrain(data, _config(config, options)), progress)


def posthoc_importance(model: Any, data: ImageSet, *, method: str = "permutation",
                       n_repeats: int = 3, seed: int = 0, trust: bool = False,
                       allow_download: bool = False):
    """Channel importance of ANY classifier on labelled ``data``, without mixing weights:
    ``permutation`` (pixels of one channel shuffled within each image) or
    ``feature_ablation`` (Captum, channel replaced by its mean); loss rise and
    balanced-accuracy drop with 95 % bootstrap intervals (a ``PosthocImportance``).

    ``model``: anything ``io.models.load_model`` takes; raw images are prepared as the
    model records (a bundle's normalisation; none for a bare module).
    """
    from .core.channels.posthoc import posthoc_channel_importance

    clf = load_model(model, trust=trust, allow_download=allow_download)
    clf.check_channels(data.n_channels, "the data")
    with frozen(clf.module):
        return posthoc_channel_importance(clf.module, clf.prepare(data), data.labels,
                                          list(data.channel_names), method,
                                          n_repeats=n_repeats, seed=seed)


def check_study_design(data: ImageSet) -> list[str]:
    """The study-design warnings for ``data`` (independent wells, fields and plates per
    class, class balance), before any training."""
    from .core.study.design import check_study_design as _check

    return _check(data).warnings


def save_bundle(path: str | Path, result: TrainResult) -> Path:
    """Save a trained model (weights, names, normalisation, provenance) as one file."""
    return save_training_result(path, result)


ModelLike = Any  # a path, Classifier, ModelBundle, TrainResult or torch module


def channel_importance(model: ModelLike, data: ImageSet | None = None, *,
                       trust: bool = False, allow_download: bool = False
                       ) -> ChannelImportance:
    """Channel importance of a DCMIX model: mixing weights, per head and overall, with the
    channel-ablation check computed on ``data`` (raw images; normalised as in training).

    Without ``data``, the importance stored at training time is returned.
    """
    clf = load_model(model, trust=trust, allow_download=allow_download)
    if data is None:
        if clf.importance is None:
            raise InputError(f"{clf.source} has no stored channel importance; pass data to "
                             "compute it")
        return clf.importance
    if getattr(clf.module, "mixing", None) is None:
        raise InputError(f"{clf.source} has no DCMIX mixing layer, so it has no channel "
                         "weights; use pixel attribution with per_channel=True instead")
    clf.check_channels(data.n_channels, "the data")
    with frozen(clf.module):  # a TrainResult's model comes back in its own mode
        return _channel_importance(clf.module, clf.prepare(data), data.labels,
                                   clf.channel_names)


def explain(model: ModelLike, images: np.ndarray, *, method: str = "pcim",
            targets: int | str | Sequence[int | str] | None = None, trust: bool = False,
            allow_download: bool = False, progress: ProgressCallback = None,
            **options: Any) -> AttributionResult:
    """Attribution maps for raw ``images`` (N, C, H, W) or (C, H, W), or an ImageSet.

    ``model``: anything ``io.models.load_model`` takes (a bundle, ``.pt2`` or
    TorchScript path, a ``TrainResult``, a torch module). Images are prepared as the
    model records (a bundle's normalisation; none for a bare module); an ImageSet of plate
    crops that were already normalised the model's way is used as it is. ``targets``:
    class indices or names, ``"predicted"`` or None (the predicted class). ``options`` go
    to :func:`napari_attribution.core.attribution.explain.explain` (``per_channel``, ``device``,
    ``input_size`` for tiling, ``contrast`` (a class index or name: "target rather than
    contrast"), ``evidence=True`` (the 'localised' / 'none' / 'undetermined' check),
    method parameters). Images larger than the model's training input (a bundle's
    recorded ``input_size``) are explained in tiles of it. The result's ``provenance()``
    names the model (path, kind, sha256, channel and class names, normalisation);
    ``all_findings()`` holds the evidence check's findings, ``field-scale`` (no known
    training size) and ``channel-map-suspect`` (a channel looks like another trained
    channel).
    """
    clf = load_model(model, trust=trust, allow_download=allow_download)
    return run_generator(explain_classifier(clf, images, targets, method=method, **options),
                         progress)


def sample_cells(n_images: int = 400, size: int = 48, seed: int = 0) -> ImageSet:
    """The synthetic cell-phenotype sample (the marker moves into the nucleus in one
    channel only; nuclei masks and ground truth in ``metadata`` and ``masks``)."""
    from .core.data.synthetic import make_cell_phenotype

    return make_cell_phenotype(n_images=n_images, size=size, seed=seed)


def sample_multi_snr(n_images: int = 600, size: int = 32, seed: int = 0) -> ImageSet:
    """The synthetic multi-SNR sample (known true channel order in ``metadata``)."""
    from .core.data.synthetic import make_multi_snr

    return make_multi_snr(n_images=n_images, size=size, seed=seed)


def load_plate(root: str | Path, pattern: str | None = None, *,
               channels: Any = None, plate_map: Any = None, bbbc013: bool = False,
               axes: str | None = None, channel_names: Sequence[str] | None = None) -> Any:
    r"""Open a plate folder as an ``io.plate.Plate``; ``plate.sample(...)`` then cuts crops.

    ``pattern`` is a filename regex with groups ``well`` (or ``row``, ``col``), ``site``
    and ``channel``; ``channels`` picks and orders channels (``["DNA", "GFP"]`` or
    ``{"DNA": "w1", "GFP": "w2"}``); ``plate_map`` a CSV (well, class, dose, control).
    ``bbbc013=True`` reads the BBBC013 layout (``channels`` then names: GFP, DNA).

    ``Plate.sample`` takes a ``SamplingConfig`` and/or keyword overrides of its fields,
    all recorded in the crops' metadata and the bundle:
    ``crop_size``/``downsample`` (default: from the median nucleus size),
    ``normalization`` (``"per_field"`` default, ``"per_dataset"``, ``"none"``),
    ``labels`` (label images from cellpose/stardist/napari instead of Otsu),
    ``objects`` (a per-object table: well, site or file, x, y, label; CellProfiler
    columns recognised, others via ``objects_columns``), ``label_rule`` (``"PH3>otsu"``),
    ``split_by`` (``"auto"``, ``"well"``, ``"field"``, ``"half"``, ``"quadrant"``) and
    ``val_wells``. Example::

        plate = na.load_plate("plate/", r"(?P<well>[A-P]\d+)_s(?P<site>\d)_(?P<channel>\w+)",
                              channels=["DNA", "PH3"])
        data = plate.sample(label_rule="PH3>otsu")     # marker-defined classes per nucleus
        result = na.train(data)
    """
    from .io.plate import Plate, open_bbbc013

    if bbbc013:
        return open_bbbc013(root, list(channels) if channels else ["GFP", "DNA"])
    if not pattern:
        raise InputError("give a filename pattern (regex with groups well or row/col, site, "
                         "channel) or bbbc013=True")
    return Plate.scan(root, pattern, channels, plate_map=plate_map, axes=axes,
                      channel_names=channel_names)


def explain_plate(plate: Any, model: str | Path, output: str | Path, *,
                  methods: Sequence[str] = ("pcim",), progress: ProgressCallback = None,
                  params: dict[str, dict[str, Any]] | None = None,
                  **options: Any) -> Any:
    """Predictions and attribution maps for every field of view of ``plate`` (an
    ``io.plate.Plate``), on Dask, into the OME-Zarr store ``output`` (resumable: call
    again after an interruption). ``options``: ``BatchConfig`` fields (``per_channel``,
    ``input_size``, ``device`` ...), ``ClusterOptions`` fields (``scheduler``,
    ``n_workers`` ...) and ``overwrite``, ``table``, ``trust``; an unknown option raises
    ``InputError`` naming it. ``model``: any model file ``load_model`` reads. Returns a
    ``batch.BatchResult``."""
    from .batch import BatchConfig, BatchPlan, ClusterOptions, records_from_plate, run_plan

    cfg_keys = {f.name for f in fields(BatchConfig)} - {"methods", "params"}
    cluster_keys = {f.name for f in fields(ClusterOptions)}
    run_keys = {"overwrite", "table", "trust"}
    unknown = sorted(set(options) - cfg_keys - cluster_keys - run_keys)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(map(repr, unknown))} of "
                         f"explain_plate; known: "
                         f"{', '.join(sorted(cfg_keys | cluster_keys | run_keys))}")
    cfg = BatchConfig(methods=list(methods), params=params or {},
                      **{k: v for k, v in options.items() if k in cfg_keys})
    cluster = ClusterOptions(**{k: v for k, v in options.items() if k in cluster_keys})

    def run() -> Any:
        plan = BatchPlan.build(records_from_plate(plate), model, output, cfg,
                               **{k: v for k, v in options.items() if k in run_keys})
        return (yield from run_plan(plan, cluster))

    return run_generator(run(), progress)
