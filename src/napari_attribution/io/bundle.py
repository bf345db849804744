"""Model bundles: one safetensors file holding weights and everything needed to reuse them.

The file's safetensors header carries JSON metadata: architecture config, channel
and class names, normalisation, training provenance and the channel importance
found at training time. Loading never executes code from the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.channels.dcmix import DCMIXClassifier, ModelConfig
from ..core.channels.importance import ChannelImportance
from ..core.data.normalization import PercentileNormalizer
from ..core.runtime.errors import BundleError
from .atomic import atomic_write_bytes, check_output

FORMAT = "napari-attribution-bundle"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
# top-level metadata keys written from TrainResult.checks() (besides "warnings")
CHECK_KEYS = ("findings", "channel_verdict", "cross_validation", "validation",
              "study_design", "shortcut_check", "posthoc_importance", "importance_repeats",
              "retrain_check")


@dataclass
class ModelBundle:
    """A classifier and what it needs: names, normalisation, provenance."""

    model: DCMIXClassifier
    config: ModelConfig
    channel_names: list[str]
    class_names: list[str]
    normalizer: PercentileNormalizer
    provenance: dict[str, Any] = field(default_factory=dict)
    importance: ChannelImportance | None = None
    path: Path | None = None
    sha256: str | None = None
    warnings: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> list:
        """The study findings (``Finding`` records) stored with the model; bundles from
        before findings existed give their warnings as ``data-warning`` cautions."""
        from ..core.study.findings import DATA_WARNING, from_warnings, make

        found = from_warnings(self.warnings, self.checks.get("findings"))
        said = {f.message for f in found}  # + what loading found (a malformed report)
        return found + [make(DATA_WARNING, w) for w in self.warnings if w not in said]

    @property
    def n_channels(self) -> int:
        return self.config.n_channels

    @property
    def input_size(self) -> int | None:
        """The side of the training images (recorded, or inferred from the training
        data's image size in older bundles); None when unknown."""
        from ..core.models.inference import ModelScale

        return ModelScale.from_provenance(self.provenance).input_size

    def check_channels(self, n_channels: int, what: str = "the images") -> None:
        """Raise :class:`BundleError` if ``n_channels`` differs from the model's."""
        if n_channels != self.n_channels:
            raise BundleError(
                f"{what} have {n_channels} channel(s) but the model "
                f"{'in ' + str(self.path) + ' ' if self.path else ''}was trained on "
                f"{self.n_channels} ({', '.join(self.channel_names)})"
            )

    def prepare(self, images: Any) -> np.ndarray:
        """Model inputs: raw (N, C, H, W) or (C, H, W) images normalised as at training
        time, or an ImageSet / plate ``FieldCrops`` whose crops were already normalised
        the model's way (used as they are; see ``core.normalization.prepare_inputs``)."""
        from ..core.data.normalization import prepare_inputs

        arr = np.asarray(getattr(images, "images", images))
        self.check_channels(arr.shape[-3])
        return prepare_inputs(self.normalizer, images)

    @torch.no_grad()
    def predict_logits(self, images: Any, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> np.ndarray:
        """Class logits (N, n_classes) for raw (N, C, H, W) or (C, H, W) images (or an
        ImageSet / ``FieldCrops``, see :meth:`prepare`).

        Unlike probabilities they do not saturate: scores averaged over many cells (a
        well's mean log-odds) keep their ranking where every probability is ~0 or ~1.
        """
        from ..core.runtime.devices import resolve_device
        from ..core.runtime.validation import check_images

        x = self.prepare(images)
        x = check_images(x[None] if x.ndim == 3 else x, self.n_channels)
        dev = resolve_device(device)
        model = self.model.to(dev).eval()
        out = [model(torch.from_numpy(x[i:i + batch_size]).to(dev)).float().cpu()
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out).numpy()

    def predict_proba(self, images: Any, batch_size: int = 64,
                      device: str | torch.device = "cpu") -> np.ndarray:
        """Class probabilities (N, n_classes) for raw images."""
        logits = torch.from_numpy(self.predict_logits(images, batch_size, device))
        return torch.softmax(logits, 1).numpy()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(path: str | Path, model: DCMIXClassifier, channel_names: list[str],
                class_names: list[str], normalizer: PercentileNormalizer,
                provenance: dict | None = None,
                importance: ChannelImportance | None = None,
                warnings: list[str] | None = None,
                checks: dict[str, Any] | None = None, overwrite: bool = True) -> Path:
    """Write a bundle (``.safetensors``) atomically; returns the path written. An
    existing file is refused unless ``overwrite``.

    ``warnings`` (plain-language study-design, split and shortcut warnings) are stored
    under the top-level metadata key ``warnings``; ``checks`` (validation metrics,
    study design, shortcut check, post-hoc importance, repeats, retraining check) each
    under their own top-level key (see ``CHECK_KEYS``).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    check_output(path, overwrite, "model bundle")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "channel_names": list(channel_names),
        "class_names": list(class_names),
        "normalization": normalizer.to_dict(),
        "provenance": provenance or {},
        "importance": None if importance is None else importance.to_dict(),
        "warnings": list(dict.fromkeys(warnings or [])),
    }
    for key, value in (checks or {}).items():
        if key in CHECK_KEYS:
            meta[key] = value
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Written by Python, not by safetensors' own file writer; the temporary file gets
    # the user's usual permissions (umask) rather than owner-only: bundles are shared.
    return atomic_write_bytes(path, save(state, metadata={"napari_attribution":
                                                           json.dumps(meta)}),
                              overwrite, "model bundle")


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Read a bundle written by :func:`save_bundle`, with clear errors for bad files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise BundleError(f"model file not found: {path}")
    if path.is_dir():
        raise BundleError(f"{path} is a folder, not a model bundle file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BundleError(f"{path} is not a readable napari-attribution model bundle "
                          f"(truncated or another format?): {err}") from None
    raw = header.get("napari_attribution")
    if raw is None:
        raise BundleError(f"{path} is a safetensors file but not a napari-attribution bundle "
                          "(no bundle metadata)")
    meta = _parse_metadata(path, raw)
    try:
        config = ModelConfig.from_dict(meta["config"])
        normalizer = PercentileNormalizer.from_dict(meta["normalization"])
        with torch.device("meta"):  # shapes only: a config claiming a huge net allocates
            shape_only = DCMIXClassifier(config)  # nothing before the weights are checked
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise BundleError(f"{path}: bundle metadata is inconsistent: {err}") from None
    check_weights(path, state, shape_only)
    model = DCMIXClassifier(config)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path}: bundle metadata or weights are inconsistent: {first}"
                          ) from None
    if config.n_classes != len(meta["class_names"]):
        raise BundleError(f"{path}: bundle metadata is inconsistent: "
                          f"{len(meta['class_names'])} class names for "
                          f"{config.n_classes} classes")
    if config.n_channels != len(meta["channel_names"]):
        raise BundleError(f"{path}: bundle metadata is inconsistent: "
                          f"{len(meta['channel_names'])} channel names for "
                          f"{config.n_channels} channels")
    model.eval().to(device)
    importance = _importance(path, meta.get("importance"), config,
                             list(meta["channel_names"]))
    checks, unreadable = check_reports(meta, list(meta["class_names"]),
                                       list(meta["channel_names"]))
    return ModelBundle(
        model=model, config=config, channel_names=list(meta["channel_names"]),
        class_names=list(meta["class_names"]), normalizer=normalizer,
        provenance=meta.get("provenance") or {}, importance=importance,
        path=path, sha256=file_sha256(path),
        warnings=[str(w) for w in meta.get("warnings") or []] + unreadable,
        checks=checks,
    )


# key -> (types it may have, required)
_META_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "format": ((str,), True),
    "format_version": ((int,), False),
    "config": ((dict,), True),
    "channel_names": ((list,), True),
    "class_names": ((list,), True),
    "normalization": ((dict,), True),
    "provenance": ((dict, type(None)), False),
    "importance": ((dict, type(None)), False),
}
_CONFIG_TYPES = {"n_channels": int, "n_classes": int, "n_heads": int, "backbone": str,
                 "width": (int, type(None)), "mixing": bool}
_NORM_TYPES = {"mode": str, "low": (int, float), "high": (int, float),
               "lo": (list, type(None)), "hi": (list, type(None))}


#: sane bounds of the architecture numbers (a bundle outside them is refused before any
#: network is built)
_CONFIG_RANGES = {"n_channels": (1, 4096), "n_classes": (2, 100_000), "n_heads": (1, 4096),
                  "width": (1, 65_536)}


def _importance(path: Path, imp: Any, config: ModelConfig, channels: list[str]
                ) -> ChannelImportance | None:
    """The stored DCMIX channel importance, refused when unreadable, of the wrong shape
    for the model, or not finite (NaN would print as a ranking)."""
    if imp is None:
        return None
    if not isinstance(imp, dict) or imp.get("channel_names") != channels:
        raise BundleError(f"{path}: the stored channel importance does not name the model's "
                          f"channels {channels}")
    try:
        importance = ChannelImportance.from_dict(imp)
        if not isinstance(importance.extra, dict) or not _is_number(
                importance.baseline_accuracy, none_ok=True):
            raise ValueError("'extra' must be an object, 'baseline_accuracy' a number")
        arrays = {k: getattr(importance, k) for k in (
            "weights", "head_effect", "overall", "ablation_accuracy_drop",
            "ablation_loss_increase", "ablation_drop_interval", "ablation_loss_interval")}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{path}: the stored channel importance is unreadable: {err}"
                          ) from None
    for key, arr in arrays.items():
        if arr is None:
            if key in ("weights", "head_effect", "overall"):
                raise BundleError(f"{path}: the stored channel importance has no {key!r}")
            continue
        if not np.isfinite(arr).all():
            raise BundleError(f"{path}: the stored channel importance {key!r} holds NaN or "
                              "infinite values (a corrupt file)")
        # (heads, C) weights, (heads,) head effect, (C, 2) intervals, else (C,)
        shape = {"weights": (config.n_heads, config.n_channels),
                 "head_effect": (config.n_heads,)}.get(
            key, (config.n_channels, 2) if key.endswith("interval") else
            (config.n_channels,))
        if arr.shape != shape:
            raise BundleError(f"{path}: the stored channel importance {key!r} has shape "
                              f"{arr.shape}; a model of {config.n_channels} channels and "
                              f"{config.n_heads} head(s) needs {shape}")
    return importance


_NUM = (int, float)
#: the keys (and their types) each stored training report must have; see check_reports
_REPORT_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "validation": {"class_names": (list,), "accuracy": _NUM, "balanced_accuracy": _NUM,
                   "per_class_recall": (dict,), "support": (dict,),
                   "confusion_matrix": (list,)},
    "study_design": {},
    "shortcut_check": {"channel_names": (list,), "chance": _NUM,
                       "all_features_balanced_accuracy": _NUM,
                       "per_channel_balanced_accuracy": (dict,),
                       "per_statistic_balanced_accuracy": (dict,)},
    "posthoc_importance": {"method": (str,), "channel_names": (list,),
                           "baseline_balanced_accuracy": _NUM, "baseline_loss": _NUM,
                           "n_images": (int,), "loss_increase": (list,),
                           "loss_interval": (list,), "balanced_accuracy_drop": (list,),
                           "drop_interval": (list,)},
    "importance_repeats": {"channel_names": (list,), "seeds": (list,), "mean": (list,),
                           "std": (list,), "min": (list,), "max": (list,)},
    "retrain_check": {"channel_names": (list,), "all_channels": _NUM, "seconds": _NUM,
                      "n_models": (int,), "alone": (dict,), "without": (dict,)},
    "findings": {"code": (str,), "severity": (str,), "message": (str,)},
    "channel_verdict": {"rows": (list,), "sentence": (str,)},
    "cross_validation": {},
}
#: reports stored as a list of objects rather than one object
_LIST_REPORTS = ("posthoc_importance", "findings")


def _is_number(v: Any, none_ok: bool = False) -> bool:
    return (v is None and none_ok) or (isinstance(v, _NUM) and not isinstance(v, bool))


def _report_problem(key: str, block: Any, classes: list[str], channels: list[str]
                    ) -> str | None:
    """What is wrong with one stored report (None when it is usable)."""
    listed = key in _LIST_REPORTS
    items = block if listed else [block]
    if not isinstance(items, list) or not all(isinstance(b, dict) for b in items):
        return f"it must be {'a list of objects' if listed else 'an object'}"
    for b in items:
        for name, types in _REPORT_KEYS[key].items():
            if name not in b:
                return f"it has no {name!r}"
            if not isinstance(b[name], types) or isinstance(b[name], bool):
                return f"{name!r} must be {' or '.join(t.__name__ for t in types)}"
    if key == "validation":
        names = block["class_names"]
        k = len(names)
        cm = block["confusion_matrix"]
        if not all(isinstance(n, str) for n in names):
            return "'class_names' must be names"
        if len(cm) != k or not all(isinstance(r, list) and len(r) == k and
                                   all(_is_number(v) for v in r) for r in cm):
            return f"'confusion_matrix' must be {k} x {k} numbers"
        recall, support = block["per_class_recall"], block["support"]
        if not all(_is_number(v, none_ok=True) for v in recall.values()) or \
                not all(c in support and _is_number(support[c]) for c in recall):
            return "'per_class_recall' and 'support' must give a number per class"
    if key in ("importance_repeats", "retrain_check"):
        names = block["channel_names"]
        n = len(names)
        if not names or not all(isinstance(c, str) for c in names):
            return "'channel_names' must be a non-empty list of names"
        if key == "importance_repeats" and not all(
                len(block[s]) == n and all(_is_number(v) for v in block[s])
                for s in ("mean", "std", "min", "max")):
            return f"'mean', 'std', 'min' and 'max' must hold {n} numbers"
        if key == "importance_repeats" and not (
                isinstance(block.get("balanced_accuracy") or [], list)
                and all(_is_number(v) for v in block.get("balanced_accuracy") or [])):
            return "'balanced_accuracy' must be a list of numbers"
        if key == "retrain_check" and not all(
                _is_number(block["alone"].get(c)) and
                _is_number(block["without"].get(c), none_ok=True) for c in names):
            return "'alone' and 'without' must give a number per channel"
    render = _RENDER.get(key)
    if render is not None:  # the report's own reader and formatter must accept it
        try:
            render(block)
        except Exception as err:  # noqa: BLE001 - any failure there means malformed
            return f"unreadable: {type(err).__name__}: {err}"[:200]
    return None


def _render_validation(block: dict) -> str:
    from ..core.study.classification import format_classification_report

    return format_classification_report(block)


def _render_shortcut(block: dict) -> str:
    from ..core.study.shortcut import ShortcutCheck, format_shortcut

    return format_shortcut(ShortcutCheck.from_dict(block))


def _render_posthoc(block: list) -> str:
    from ..core.channels.posthoc import PosthocImportance, format_posthoc

    return format_posthoc([PosthocImportance.from_dict(d) for d in block])


#: reports whose reader and formatter live in core: a stored report must pass through them
_RENDER = {"validation": _render_validation, "shortcut_check": _render_shortcut,
           "posthoc_importance": _render_posthoc}


def check_reports(meta: dict[str, Any], classes: list[str], channels: list[str]
                  ) -> tuple[dict[str, Any], list[str]]:
    """The training reports stored in a bundle (``CHECK_KEYS``) that are usable, and a
    warning for each one that is not (missing keys, wrong types): such a report is left
    out, the model itself still loads. The one place where stored reports are checked."""
    checks: dict[str, Any] = {}
    warnings: list[str] = []
    for key in CHECK_KEYS:
        block = meta.get(key)
        if block is None:
            continue
        problem = _report_problem(key, block, classes, channels)
        if problem is None:
            checks[key] = block
        else:
            warnings.append(f"the bundle's stored {key.replace('_', ' ')} report is "
                            f"malformed ({problem}); it is ignored")
    return checks, warnings


def _parse_metadata(path: Path, raw: str) -> dict[str, Any]:
    """The bundle's JSON metadata with every field's type checked (clear errors)."""
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise BundleError(f"{path}: the bundle metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: the bundle metadata must be a JSON object; found a "
                          f"{type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle metadata is inconsistent: format tag missing")
    for key, (types, required) in _META_TYPES.items():
        if key not in meta:
            if required:
                raise BundleError(f"{path}: the bundle metadata has no {key!r}")
            continue
        if not isinstance(meta[key], types) or (int in types and isinstance(meta[key], bool)):
            raise BundleError(f"{path}: bundle metadata {key!r} must be "
                              f"{' or '.join(t.__name__ for t in types)}; found "
                              f"{type(meta[key]).__name__}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(f"{path} was written by a newer napari-attribution (bundle "
                          f"format {meta['format_version']}); please upgrade")
    for key in ("channel_names", "class_names"):
        if not meta[key] or not all(isinstance(n, str) for n in meta[key]):
            raise BundleError(f"{path}: bundle metadata {key!r} must be a non-empty list of "
                              "names (strings)")
    _check_fields(path, "config", meta["config"], _CONFIG_TYPES)
    for key, (low, high) in _CONFIG_RANGES.items():
        value = meta["config"].get(key)
        if value is not None and not low <= value <= high:
            raise BundleError(f"{path}: bundle metadata config.{key} = {value} is outside "
                              f"the sane range {low}..{high} (a corrupt or tampered file)")
    _check_fields(path, "normalization", meta["normalization"], _NORM_TYPES)
    for key in ("lo", "hi"):
        vals = meta["normalization"].get(key)
        if vals is not None and not all(isinstance(v, (int, float)) and
                                        not isinstance(v, bool) and np.isfinite(v)
                                        for v in vals):
            raise BundleError(f"{path}: bundle normalisation {key!r} must be a list of "
                              "finite numbers")
    return meta


def _check_fields(path: Path, what: str, d: dict, types: dict) -> None:
    for key, typ in types.items():
        if key in d and (not isinstance(d[key], typ) or
                         (typ in (int, (int, float)) and isinstance(d[key], bool))):
            names = typ.__name__ if isinstance(typ, type) else \
                " or ".join(t.__name__ for t in typ)
            raise BundleError(f"{path}: bundle metadata {what}.{key} must be {names}; found "
                              f"{type(d[key]).__name__} ({d[key]!r})")


def check_weights(path: Path | str, state: dict[str, torch.Tensor],
                  model: torch.nn.Module) -> None:
    """Refuse weights of the wrong dtype or shape for the architecture, or non-finite
    ones (a relabelled or corrupted tensor would otherwise load as garbage)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise BundleError(f"{path}: bundle metadata or weights are inconsistent: "
                          + (f"missing weights {missing[:3]}" if missing else "")
                          + ("; " if missing and extra else "")
                          + (f"unexpected weights {extra[:3]}" if extra else ""))
    for key, want in expected.items():
        got = state[key]
        if got.dtype != want.dtype:
            raise BundleError(f"{path}: weight {key!r} is stored as {got.dtype} but the "
                              f"architecture expects {want.dtype} (a tampered or corrupt "
                              "file)")
        if tuple(got.shape) != tuple(want.shape):
            raise BundleError(f"{path}: bundle metadata or weights are inconsistent: weight "
                              f"{key!r} has shape {tuple(got.shape)}, the architecture "
                              f"expects {tuple(want.shape)}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise BundleError(f"{path}: weight {key!r} holds NaN or infinite values (a "
                              "corrupt file)")


def save_training_result(path: str | Path, result, overwrite: bool = True) -> Path:
    """Save a :class:`~napari_attribution.core.channels.training.TrainResult` as a bundle."""
    checks = result.checks()
    return save_bundle(path, result.model, result.channel_names, result.class_names,
                       result.normalizer, result.provenance(), result.importance,
                       warnings=checks.pop("warnings"), checks=checks,
                       overwrite=overwrite)
