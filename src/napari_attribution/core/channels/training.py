"""Training a DCMIX classifier: a generator of progress events returning the result."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.dataset import ImageSet
from ..data.normalization import PercentileNormalizer, training_normalizer
from ..runtime.devices import resolve_device
from ..runtime.errors import InputError
from ..runtime.progress import Progress, ProgressGenerator, nested
from ..runtime.validation import check_not_constant
from ..study.classification import (
    MIN_HELD_OUT,
    balanced_accuracy,
    classification_report,
    sample_size_findings,
)
from ..study.design import StudyDesign, check_study_design, unit_keys
from ..study.findings import Finding, data_findings, make, register_code, split
from ..study.shortcut import ShortcutCheck, shortcut_check
from ..study.splits import group_folds, split_dataset
from .augment import Augmentation
from .dcmix import DCMIXClassifier, ModelConfig
from .importance import ChannelImportance, channel_importance
from .posthoc import PosthocImportance, posthoc_channel_importance
from .verdict import ChannelVerdict, channel_verdict

CLASS_BALANCE = ("sampling", "weights", "none")
#: folds of the automatic cross-validation (fewer when there are fewer groups)
AUTO_FOLDS = 5

CROSS_VALIDATED = register_code(
    "cross-validated", "note",
    "accuracy and importance come from K folds over groups: every object held out once")


@dataclass
class TrainConfig:
    """Training options. Defaults suit small crops (32-128 px) on a CPU.

    ``class_balance``: ``sampling`` (default) draws training images with probability
    inversely proportional to their class size, so every class is seen equally often;
    ``weights`` keeps the order and weights the loss per class instead; ``none`` trains
    on the raw class proportions.

    ``design_check`` (study design before training), ``shortcut_check`` (intensity
    statistics on the same split) and ``posthoc_check`` (within-channel pixel
    permutation) fill ``TrainResult.study_design``, ``.shortcut`` and ``.posthoc`` and
    add :class:`~..study.findings.Finding` records to ``TrainResult.findings`` (their
    alarm and caution messages in ``TrainResult.warnings``); see docs/study_design.md.

    ``cv``: 1 trains once on a grouped split; K >= 2 trains K models on folds over the
    groups (every object held out once; accuracy pooled, importance as mean and range
    over folds). :func:`auto_folds` says when a face should choose it by itself.
    """

    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    mixing_lr: float = 0.05
    weight_decay: float = 1e-4
    backbone: str = "small"
    width: int | None = None
    n_heads: int = 1
    mixing: bool = True
    entropy_weight: float = 0.1
    channel_dropout: float = 0.2
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    normalization: str = "auto"
    percentiles: tuple[float, float] = (1.0, 99.8)
    augment: bool = True
    intensity_jitter: float = 0.1
    ablation_check: bool = True
    class_balance: str = "sampling"
    design_check: bool = True
    shortcut_check: bool = True
    posthoc_check: bool = True
    progress_every: int = 10
    cv: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "percentiles" in known:
            known["percentiles"] = tuple(known["percentiles"])
        return cls(**known)


@dataclass
class TrainResult:
    """A trained model with everything needed to use and describe it."""

    model: DCMIXClassifier
    model_config: ModelConfig
    train_config: TrainConfig
    normalizer: PercentileNormalizer
    channel_names: list[str]
    class_names: list[str]
    history: list[dict] = field(default_factory=list)
    importance: ChannelImportance | None = None
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None
    val_groups: list[str] | None = None
    data_info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    study_design: StudyDesign | None = None
    shortcut: ShortcutCheck | None = None
    posthoc: list[PosthocImportance] = field(default_factory=list)
    repeats: dict[str, Any] | None = None
    retrain_check: dict[str, Any] | None = None
    check_seconds: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    verdict: ChannelVerdict | None = None
    cross_validation: dict[str, Any] | None = None
    val_predictions: np.ndarray | None = None

    def set_findings(self, findings: list[Finding]) -> None:
        """Store ``findings`` (deduplicated, alarms first, notes last) and keep
        ``warnings`` as the messages of the alarms and cautions."""
        warn, notes = split(findings)
        self.findings = warn + notes
        self.warnings = [f.message for f in warn]

    def add_findings(self, *findings: Finding) -> None:
        self.set_findings([*self.findings, *findings])

    def refresh_verdict(self) -> None:
        """Recompute the channel verdict (after repeats or folds add a spread) and
        replace its findings."""
        codes = {"channels-disagree", "channels-shared", "channels-unstable"}
        spread = self.cross_validation or self.repeats
        self.verdict = channel_verdict(self.importance, self.posthoc, spread)
        keep = [f for f in self.findings if f.code not in codes]
        self.set_findings(keep + ([] if self.verdict is None else self.verdict.findings))

    @property
    def val_accuracy(self) -> float:
        return self.history[-1]["val_accuracy"] if self.history else float("nan")

    @property
    def val_balanced_accuracy(self) -> float:
        return self.validation.get("balanced_accuracy", float("nan"))

    def checks(self) -> dict[str, Any]:
        """The study checks as JSON-ready values (stored in bundles under these keys)."""
        return {
            "warnings": list(self.warnings),
            "findings": [f.as_dict() for f in self.findings],
            "channel_verdict": None if self.verdict is None else self.verdict.to_dict(),
            "cross_validation": self.cross_validation,
            "validation": dict(self.validation),
            "study_design": None if self.study_design is None else self.study_design.to_dict(),
            "shortcut_check": None if self.shortcut is None else self.shortcut.to_dict(),
            "posthoc_importance": [p.to_dict() for p in self.posthoc],
            "importance_repeats": self.repeats,
            "retrain_check": self.retrain_check,
        }

    def provenance(self) -> dict[str, Any]:
        from ..runtime.version import __version__

        return {
            "method": "DCMIX",
            "train_config": self.train_config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "channel_names": self.channel_names,
            "class_names": self.class_names,
            "normalization": self.normalizer.to_dict(),
            "seed": self.train_config.seed,
            "final_val_accuracy": self.val_accuracy,
            "final_val_balanced_accuracy": self.val_balanced_accuracy,
            "check_seconds": dict(self.check_seconds),
            "n_train": None if self.train_index is None else int(len(self.train_index)),
            "n_validation": None if self.val_index is None else int(len(self.val_index)),
            "validation_groups": self.val_groups,
            "data": self.data_info,
            "epochs_run": len(self.history),
            "train_seconds": round(self.seconds, 2),
            "warnings": list(self.warnings),
            "findings": [f.as_dict() for f in self.findings],
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate(model: DCMIXClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             amp: bool = False, n_classes: int | None = None) -> tuple[float, float, float]:
    """Mean cross-entropy, accuracy and balanced accuracy of ``model`` on tensors
    already on its device."""
    model.eval()
    dev = x.device
    loss, preds = 0.0, []
    for i in range(0, x.shape[0], batch_size):
        with _autocast(dev, amp):
            logits = model(x[i:i + batch_size]).float()
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
    pred = torch.cat(preds).numpy()
    yn = y.cpu().numpy()
    return (loss / x.shape[0], float((pred == yn).mean()),
            balanced_accuracy(yn, pred, n_classes))


def balanced_order(labels: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """One epoch of indices in which every class fills an equal share: a class larger
    than its share gives a fresh random subset each epoch, a smaller one is repeated
    (whole shuffled copies, then a random remainder). Equal classes give a permutation."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n = labels.size
    quota = [n // classes.size + (1 if k < n % classes.size else 0)
             for k in range(classes.size)]
    parts = []
    for c, q in zip(classes, quota, strict=True):
        members = torch.from_numpy(np.flatnonzero(labels == c))
        reps = [members[torch.randperm(members.numel(), generator=gen)]
                for _ in range(-(-q // members.numel()))]
        parts.append(torch.cat(reps)[:q])
    out = torch.cat(parts)
    return out[torch.randperm(out.numel(), generator=gen)]


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Loss weights that make every class count equally: N / (K * n_class); 0 for a
    class absent from ``labels`` (it contributes no terms anyway)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def auto_folds(data: ImageSet, config: TrainConfig | None = None) -> int:
    """The folds an automatic choice gives: :data:`AUTO_FOLDS` (at most one per group)
    when the single grouped split would hold out fewer than
    :data:`~..study.classification.MIN_HELD_OUT` objects of some class, else 1. Fixed
    validation groups (chosen wells) keep the single split."""
    cfg = config or TrainConfig()
    if data.metadata.get("val_groups"):
        return 1
    try:
        _, val_idx = split_dataset(data, cfg.val_fraction, cfg.seed)
    except InputError:
        return 1
    held = np.bincount(data.labels[val_idx], minlength=data.n_classes)
    present = np.bincount(data.labels, minlength=data.n_classes) > 0
    n_groups = len(data) if data.groups is None else np.unique(data.groups).size
    if held[present].min() >= MIN_HELD_OUT or n_groups < 2:
        return 1
    return int(min(AUTO_FOLDS, n_groups))


def train_dcmix(data: ImageSet, config: TrainConfig | None = None,
                ) -> ProgressGenerator[TrainResult]:
    """Train a DCMIX classifier on ``data``; yields :class:`Progress`, returns TrainResult
    (``config.cv >= 2``: cross-validated over groups, see :func:`train_cross_validated`).

    The split is grouped by ``data.groups``; normalisation is fitted on the training
    part only. The mixing logits get their own (larger) learning rate, ``mixing_lr``:
    with the network's rate the weights barely leave uniform. ``entropy_weight`` adds
    a prior pushing each head towards few channels, so that weights reflect what the
    model relies on rather than where they stood when the loss reached zero.
    """
    cfg = config or TrainConfig()
    if cfg.cv >= 2:
        return (yield from train_cross_validated(data, cfg))
    train_idx, val_idx = split_dataset(data, cfg.val_fraction, cfg.seed)
    return (yield from _train_split(data, cfg, train_idx, val_idx))


def _train_split(data: ImageSet, cfg: TrainConfig, train_idx: np.ndarray,
                 val_idx: np.ndarray) -> ProgressGenerator[TrainResult]:
    """One training on a given split, with the study checks the config asks for: prepare
    the tensors (:func:`_prepare`), build the model and its optimiser (:func:`_build`),
    train epoch by epoch (:func:`_fit`), check it (:func:`_check`) and gather the
    result. The steps run in this order so that one seed gives the same weights."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise InputError("epochs and batch size must be at least 1")
    device = resolve_device(cfg.device)
    check_not_constant(data.images)
    t_start = time.perf_counter()
    _set_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if np.unique(data.labels[train_idx]).size < 2:
        raise InputError("the training split holds a single class; add images of more classes")
    prep = _prepare(data, cfg, train_idx, val_idx, device)
    fit = _build(data, cfg, device, len(train_idx))
    for f in prep.findings:
        if f.is_warning:
            yield Progress(0, fit.total, f"study design: {f.message}",
                           {"warning": f.message, "finding": f.as_dict()})
    yield Progress(0, fit.total, f"training on {device} ({len(train_idx)} train / "
                   f"{len(val_idx)} validation images)")
    history = yield from _fit(fit, prep, cfg, data.n_classes, gen, device)
    checks = yield from _check(fit, prep, cfg, data, train_idx, val_idx)
    result = TrainResult(
        model=fit.model.cpu(), model_config=fit.model_config, train_config=cfg,
        normalizer=prep.normalizer, channel_names=list(data.channel_names),
        class_names=list(data.class_names), history=history, importance=checks.importance,
        train_index=train_idx, val_index=val_idx,
        val_groups=None if data.groups is None else sorted({str(g) for g in
                                                            data.groups[val_idx]}),
        data_info=_data_info(data),
        seconds=time.perf_counter() - t_start,
        validation=checks.validation, study_design=prep.design, shortcut=checks.shortcut,
        posthoc=checks.posthoc, check_seconds=prep.check_seconds,
        val_predictions=checks.predictions,
    )
    result.set_findings(prep.findings)
    result.refresh_verdict()
    return result


@dataclass
class _Prepared:
    """The split as tensors on the device, normalised, with the loss's class weights and
    the findings and check times gathered so far (the study design check)."""

    normalizer: PercentileNormalizer
    x_all: torch.Tensor
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    y_train: np.ndarray
    loss_weight: torch.Tensor | None
    findings: list[Finding]
    check_seconds: dict[str, float]
    design: StudyDesign | None


def _prepare(data: ImageSet, cfg: TrainConfig, train_idx: np.ndarray, val_idx: np.ndarray,
             device: torch.device) -> _Prepared:
    """Study design check, normalisation fitted on the training part, tensors, weights."""
    findings: list[Finding] = data_findings(data.metadata)
    check_seconds: dict[str, float] = {}
    design = None
    if cfg.design_check:
        t0 = time.perf_counter()
        design = check_study_design(data, val_idx)
        check_seconds["study_design"] = time.perf_counter() - t0
        findings += design.findings
    normalizer, x_np = training_normalizer(data.metadata, cfg.normalization, data.images,
                                           train_idx, cfg.percentiles, cfg.seed)
    x_all = torch.from_numpy(x_np)
    y_all = torch.from_numpy(data.labels)
    if cfg.class_balance not in CLASS_BALANCE:
        raise InputError(f"class_balance must be one of {CLASS_BALANCE}; got "
                         f"{cfg.class_balance!r}")
    balance_w = torch.tensor(class_weights(data.labels[train_idx], data.n_classes),
                             dtype=torch.float32)
    return _Prepared(
        normalizer=normalizer, x_all=x_all,
        x_tr=x_all[train_idx].to(device), y_tr=y_all[train_idx].to(device),
        x_va=x_all[val_idx].to(device), y_va=y_all[val_idx].to(device),
        y_train=data.labels[train_idx],
        loss_weight=balance_w.to(device) if cfg.class_balance == "weights" else None,
        findings=findings, check_seconds=check_seconds, design=design)


@dataclass
class _Fitting:
    """The model, its optimiser and learning-rate schedule, and the step counts."""

    model_config: ModelConfig
    model: DCMIXClassifier
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    total: int
    amp: bool
    step: int = 0


def _build(data: ImageSet, cfg: TrainConfig, device: torch.device, n_train: int
           ) -> _Fitting:
    """The DCMIX model (mixing logits with their own learning rate) and a cosine schedule
    down to a tenth of the rate."""
    mcfg = ModelConfig(n_channels=data.n_channels, n_classes=data.n_classes,
                       n_heads=cfg.n_heads, backbone=cfg.backbone, width=cfg.width,
                       mixing=cfg.mixing)
    model = DCMIXClassifier(mcfg).to(device)
    mix_params = list(model.mixing.parameters()) if model.mixing is not None else []
    net_params = list(model.backbone.parameters())
    groups = [{"params": net_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if mix_params:
        groups.append({"params": mix_params, "lr": cfg.mixing_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    return _Fitting(mcfg, model, optimizer, scheduler, steps_per_epoch, total,
                    amp=cfg.mixed_precision and device.type == "cuda")


def _fit(fit: _Fitting, prep: _Prepared, cfg: TrainConfig, n_classes: int,
         gen: torch.Generator, device: torch.device) -> ProgressGenerator[list[dict]]:
    """Every epoch: train (:func:`_train_epoch`), then validate; returns the history and
    leaves the model in eval mode with PyTorch's usual batch-norm averaging."""
    augment = Augmentation(cfg.augment, cfg.augment, cfg.intensity_jitter if cfg.augment else 0)
    channel_mean = prep.x_tr.mean(dim=(0, 2, 3))
    history: list[dict] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        train_loss = yield from _train_epoch(fit, prep, cfg, epoch, augment, channel_mean,
                                             gen, device)
        epoch_seconds = time.perf_counter() - t0
        val_loss, val_acc, val_bacc = evaluate(fit.model, prep.x_va, prep.y_va,
                                               4 * cfg.batch_size, fit.amp, n_classes)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                  "val_accuracy": val_acc, "val_balanced_accuracy": val_bacc,
                  "epoch_seconds": epoch_seconds,
                  "channel_weights": _weights(fit.model)}
        history.append(record)
        yield Progress(fit.step, fit.total, f"epoch {epoch + 1}/{cfg.epochs}: loss "
                       f"{record['train_loss']:.3f}, validation balanced accuracy "
                       f"{val_bacc:.3f}",
                       dict(record))
    _batchnorm_stats_per_epoch(fit.model, restore=True)
    fit.model.eval()
    return history


def _train_epoch(fit: _Fitting, prep: _Prepared, cfg: TrainConfig, epoch: int,
                 augment: Augmentation, channel_mean: torch.Tensor, gen: torch.Generator,
                 device: torch.device) -> ProgressGenerator[float]:
    """One pass over the training images (class-balanced order unless asked otherwise);
    returns the mean training loss."""
    model = fit.model
    model.train()
    _batchnorm_stats_per_epoch(model)
    order = (balanced_order(prep.y_train, gen) if cfg.class_balance == "sampling" else
             torch.randperm(len(prep.y_train), generator=gen)).to(device)
    run_loss, n_seen = 0.0, 0
    for b in range(fit.steps_per_epoch):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        xb = augment(prep.x_tr[idx], gen) if cfg.augment else prep.x_tr[idx]
        if cfg.channel_dropout > 0:
            xb = _drop_channels(xb, channel_mean, cfg.channel_dropout, gen)
        with _autocast(device, fit.amp):
            logits = model(xb)
            loss = F.cross_entropy(logits.float(), prep.y_tr[idx], weight=prep.loss_weight)
            if cfg.entropy_weight > 0 and model.mixing is not None:
                loss = loss + cfg.entropy_weight * model.mixing.entropy()
        if not torch.isfinite(loss):
            raise InputError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; "
                             "lower the learning rate or check the images")
        fit.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fit.optimizer.step()
        fit.scheduler.step()
        fit.step += 1
        run_loss += loss.item() * idx.numel()
        n_seen += idx.numel()
        if fit.step % cfg.progress_every == 0 and b + 1 < fit.steps_per_epoch:
            yield Progress(fit.step, fit.total, f"epoch {epoch + 1}/{cfg.epochs}", {
                "epoch": epoch + 1, "loss": run_loss / n_seen,
                "channel_weights": _weights(model)})
    return run_loss / n_seen


@dataclass
class _Checks:
    """What the trained model is checked against on the validation part."""

    importance: ChannelImportance | None
    predictions: np.ndarray
    validation: dict[str, Any]
    posthoc: list[PosthocImportance]
    shortcut: ShortcutCheck | None


def _check(fit: _Fitting, prep: _Prepared, cfg: TrainConfig, data: ImageSet,
           train_idx: np.ndarray, val_idx: np.ndarray) -> ProgressGenerator[_Checks]:
    """Channel importance and ablation, the validation report, the pixel-permutation and
    shortcut checks the config asks for; their findings and times go into ``prep``."""
    model, step, total, bs = fit.model, fit.step, fit.total, 4 * cfg.batch_size
    importance = None
    if model.mixing is not None or cfg.ablation_check:
        yield Progress(step, total, "checking channel importance by ablation")
        t0 = time.perf_counter()
        importance = channel_importance(model, prep.x_va, prep.y_va, data.channel_names,
                                        batch_size=bs, ablation=cfg.ablation_check,
                                        seed=cfg.seed)
        prep.check_seconds["importance_and_ablation"] = time.perf_counter() - t0
    pred = _predictions(model, prep.x_va, bs)
    validation = classification_report(data.labels[val_idx], pred, list(data.class_names))
    posthoc: list[PosthocImportance] = []
    if cfg.posthoc_check:
        yield Progress(step, total, "checking channel importance by pixel permutation")
        t0 = time.perf_counter()
        posthoc.append(posthoc_channel_importance(model, prep.x_va, prep.y_va,
                                                  data.channel_names, "permutation",
                                                  batch_size=bs, seed=cfg.seed))
        prep.check_seconds["posthoc_permutation"] = time.perf_counter() - t0
    shortcut = None
    if cfg.shortcut_check:
        yield Progress(step, total, "shortcut check: intensity statistics on the same split")
        t0 = time.perf_counter()
        shortcut = shortcut_check(prep.x_all.numpy(), data.labels, train_idx, val_idx,
                                  data.channel_names, _object_masks(data),
                                  validation["balanced_accuracy"], units=unit_keys(data),
                                  per_field=prep.normalizer.mode == "per_field")
        prep.check_seconds["shortcut_check"] = time.perf_counter() - t0
        prep.findings += shortcut.findings
    train_support = {n: int(np.sum(data.labels[train_idx] == i))
                     for i, n in enumerate(data.class_names)}
    prep.findings += sample_size_findings(validation, train_support)
    return _Checks(importance, pred, validation, posthoc, shortcut)


def train_cross_validated(data: ImageSet, config: TrainConfig | None = None
                          ) -> ProgressGenerator[TrainResult]:
    """``config.cv`` folds over the groups (:func:`~..study.splits.group_folds`): one
    model per fold, every object held out once. Returns the first fold's model with

    * ``validation``: the report of all out-of-fold predictions pooled (held-out n per
      class = all objects), plus ``per_fold_balanced_accuracy``;
    * ``importance`` and ``posthoc``: the mean over folds, the "interval" being the range
      over folds (``importance.extra["interval"] == "range over folds"``);
    * ``cross_validation``: per-fold weights, ablation and permutation drops, accuracies.

    The design and shortcut checks run once (first fold); sample-size findings use the
    pooled report.
    """
    cfg = config or TrainConfig()
    folds = group_folds(data.labels, data.groups, cfg.cv, cfg.seed)
    k = len(folds)
    results: list[TrainResult] = []
    for i, (tr, va) in enumerate(folds):
        fcfg = replace(cfg, cv=1)
        if i > 0:
            fcfg = replace(fcfg, shortcut_check=False, design_check=False)
        results.append((yield from nested(_train_split(data, fcfg, tr, va),
                                          f"fold {i + 1}/{k}", i, k)))
    first = results[0]
    order = np.concatenate([va for _, va in folds])
    pred = np.concatenate([r.val_predictions for r in results])
    pooled = classification_report(data.labels[order], pred, list(data.class_names))
    pooled["scope"] = f"cross-validated over {k} folds (every object held out once)"
    pooled["per_fold_balanced_accuracy"] = [r.val_balanced_accuracy for r in results]
    names = list(data.channel_names)
    cv: dict[str, Any] = {"k": k, "runs": f"{k} folds", "channel_names": names,
                          "folds": [{"n_train": int(len(tr)), "n_validation": int(len(va)),
                                     "balanced_accuracy": r.val_balanced_accuracy}
                                    for (tr, va), r in zip(folds, results, strict=True)],
                          "balanced_accuracy": [r.val_balanced_accuracy for r in results]}
    if all(r.importance is not None for r in results):
        overall = np.array([r.importance.overall for r in results])
        cv.update(overall=overall.tolist(), mean=overall.mean(0).tolist(),
                  std=overall.std(0, ddof=1).tolist(), min=overall.min(0).tolist(),
                  max=overall.max(0).tolist(),
                  top_channel=[names[int(np.argmax(o))] for o in overall])
        first.importance = _mean_importance([r.importance for r in results])
    if all(r.posthoc for r in results):
        first.posthoc = [_mean_posthoc([r.posthoc[j] for r in results])
                         for j in range(len(first.posthoc))]
        cv["permutation_drop"] = [r.posthoc[0].balanced_accuracy_drop.tolist()
                                  for r in results]
    first.validation = pooled
    first.cross_validation = cv
    first.seconds = float(sum(r.seconds for r in results))
    keep = [f for f in first.findings if f.code not in ("small-validation", "small-training")]
    train_support = {n: int(min(np.sum(data.labels[tr] == c) for tr, _ in folds))
                     for c, n in enumerate(data.class_names)}
    note = make(CROSS_VALIDATED,
                f"Cross-validated over {k} folds of whole groups: every object was held out "
                f"once ({len(order)} objects); accuracy is pooled over the folds and channel "
                f"importance is the mean and range over the {k} models.",
                k=k, per_fold_balanced_accuracy=cv["balanced_accuracy"])
    first.set_findings(keep + sample_size_findings(pooled, train_support, k) + [note])
    first.refresh_verdict()
    return first


def _mean_importance(imps: list[ChannelImportance]) -> ChannelImportance:
    """Mean over folds; the ablation "intervals" are the range over folds."""
    def stack(key: str) -> np.ndarray | None:
        vals = [getattr(i, key) for i in imps]
        return None if any(v is None for v in vals) else np.array(vals, float)

    drop, loss = stack("ablation_accuracy_drop"), stack("ablation_loss_increase")
    return ChannelImportance(
        channel_names=list(imps[0].channel_names), weights=stack("weights").mean(0),
        head_effect=stack("head_effect").mean(0), overall=stack("overall").mean(0),
        ablation_accuracy_drop=None if drop is None else drop.mean(0),
        ablation_loss_increase=None if loss is None else loss.mean(0),
        baseline_accuracy=float(np.mean([i.baseline_accuracy for i in imps])),
        extra={"cross_validated": len(imps), "interval": "range over folds"},
        ablation_drop_interval=None if drop is None else np.stack([drop.min(0),
                                                                   drop.max(0)], 1),
        ablation_loss_interval=None if loss is None else np.stack([loss.min(0),
                                                                   loss.max(0)], 1))


def _mean_posthoc(runs: list[PosthocImportance]) -> PosthocImportance:
    """Mean over folds; the "intervals" are the range over folds."""
    drop = np.array([r.balanced_accuracy_drop for r in runs])
    loss = np.array([r.loss_increase for r in runs])
    return PosthocImportance(
        method=runs[0].method, channel_names=list(runs[0].channel_names),
        loss_increase=loss.mean(0), loss_interval=np.stack([loss.min(0), loss.max(0)], 1),
        balanced_accuracy_drop=drop.mean(0),
        drop_interval=np.stack([drop.min(0), drop.max(0)], 1),
        baseline_balanced_accuracy=float(np.mean([r.baseline_balanced_accuracy
                                                  for r in runs])),
        baseline_loss=float(np.mean([r.baseline_loss for r in runs])),
        n_images=int(sum(r.n_images for r in runs)), n_repeats=runs[0].n_repeats,
        seconds=float(sum(r.seconds for r in runs)))


@torch.no_grad()
def _predictions(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(1).cpu()
                      for i in range(0, x.shape[0], batch_size)]).numpy()


def _object_masks(data: ImageSet) -> np.ndarray | None:
    """Per-crop object masks (N, H, W) when the data set carries them (``nuclei``)."""
    m = data.metadata.get("nuclei")
    if m is not None and np.shape(m) == (len(data), *data.images.shape[-2:]):
        return np.asarray(m, bool)
    return None


def _data_info(data: ImageSet) -> dict[str, Any]:
    """What the training images were: their size and, for plate crops, how they were cut
    (so that inference can look at new images the same way)."""
    h, w = (int(s) for s in data.images.shape[-2:])
    info: dict[str, Any] = {"image_size": [h, w], "n_images": len(data),
                            # the side the model was trained at: larger images (whole
                            # fields) are explained in tiles of it, never in one pass
                            "input_size": h if h == w else None}
    for key in ("source", "crops", "crop_size", "downsample", "nucleus_diameter",
                "geometry", "segmentation", "split_by", "objects"):
        value = data.metadata.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            info[key] = value
    from .channel_map import channel_reference

    # per-channel statistics, so that a wrong channel map at predict time is caught
    info["channel_reference"] = channel_reference(data.images, list(data.channel_names))
    if isinstance(data.metadata.get("normalization"), (str, dict)):
        info["input_normalization"] = data.metadata["normalization"]
    for key in ("sampling", "nuclei"):  # plate crops: what was used, which nuclei channel
        if isinstance(data.metadata.get(key), dict):
            info[key] = dict(data.metadata[key])
    found = [f.as_dict() for f in data.metadata.get("findings", []) or []
             if hasattr(f, "as_dict")]
    if found:
        info["findings"] = found
    return info


def _batchnorm_stats_per_epoch(model: nn.Module, restore: bool = False) -> None:
    """Make the batch-norm layers average their statistics over this epoch's batches.

    PyTorch's default starts the running statistics at mean 0, variance 1 and moves
    them by 10 % a step. The first layer sees the mixed image, whose convolution has a
    variance of about 0.01, and in the first epochs the weights change faster than the
    moving average follows: on small data sets (a few steps per epoch) the model then
    fitted its training images while predicting one class on every validation image
    for 10 epochs. A cumulative average (``momentum=None``) restarted every epoch gives
    the validation, and the final model, statistics of the current weights.
    ``restore=True`` (after training) keeps the statistics and puts PyTorch's usual
    moving average back, so the returned model behaves like any other if trained on.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            if restore:
                m.momentum = 0.1
            else:
                m.reset_running_stats()
                m.momentum = None


def _drop_channels(x: torch.Tensor, mean: torch.Tensor, p: float,
                   gen: torch.Generator) -> torch.Tensor:
    """Replace each (image, channel) by the channel's mean with probability ``p``."""
    drop = (torch.rand(x.shape[0], x.shape[1], 1, 1, generator=gen) < p).to(x.device)
    return torch.where(drop, mean.view(1, -1, 1, 1).to(x.dtype), x)


def _weights(model: DCMIXClassifier) -> list[list[float]] | None:
    w = model.mixing_weights()
    return None if w is None else w.cpu().tolist()
