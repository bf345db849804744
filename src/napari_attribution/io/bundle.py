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
        from ..core.study.findings import from_warnings

        return from_warnings(self.warnings, self.checks.get("findings"))

    @property
    def n_channels(self) -> int:
        return self.config.n_channels

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
        model = DCMIXClassifier(config)
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path}: bundle metadata is inconsistent: {err}") from None
    check_weights(path, state, model)
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
    imp = meta.get("importance")
    try:
        importance = None if imp is None else ChannelImportance.from_dict(imp)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(f"{path}: the stored channel importance is unreadable: {err}"
                          ) from None
    return ModelBundle(
        model=model, config=config, channel_names=list(meta["channel_names"]),
        class_names=list(meta["class_names"]), normalizer=normalizer,
        provenance=meta.get("provenance") or {}, importance=importance,
        path=path, sha256=file_sha256(path),
        warnings=[str(w) for w in meta.get("warnings") or []],
        checks={k: meta[k] for k in CHECK_KEYS if meta.get(k) is not None},
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
