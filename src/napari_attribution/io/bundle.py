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

from ..core.dcmix import DCMIXClassifier, ModelConfig
from ..core.errors import BundleError
from ..core.importance import ChannelImportance
from ..core.normalization import PercentileNormalizer
from .atomic import atomic_write_bytes, check_output

FORMAT = "napari-attribution-bundle"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"


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

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Normalise raw (N, C, H, W) or (C, H, W) images as at training time."""
        arr = np.asarray(images)
        self.check_channels(arr.shape[-3])
        return self.normalizer(arr)

    @torch.no_grad()
    def predict_logits(self, images: np.ndarray, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> np.ndarray:
        """Class logits (N, n_classes) for raw (N, C, H, W) or (C, H, W) images.

        Unlike probabilities they do not saturate: scores averaged over many cells (a
        well's mean log-odds) keep their ranking where every probability is ~0 or ~1.
        """
        from ..core.devices import resolve_device
        from ..core.validation import check_images

        x = check_images(self.prepare(np.asarray(images)[None] if np.ndim(images) == 3
                                      else images), self.n_channels)
        dev = resolve_device(device)
        model = self.model.to(dev).eval()
        out = [model(torch.from_numpy(x[i:i + batch_size]).to(dev)).float().cpu()
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out).numpy()

    def predict_proba(self, images: np.ndarray, batch_size: int = 64,
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
                importance: ChannelImportance | None = None, overwrite: bool = True) -> Path:
    """Write a bundle (``.safetensors``) atomically; returns the path written. An
    existing file is refused unless ``overwrite``."""
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
    }
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
    try:
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise ValueError("format tag missing")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise BundleError(f"{path} was written by a newer napari-attribution (bundle "
                              f"format {meta['format_version']}); please upgrade")
        config = ModelConfig.from_dict(meta["config"])
        normalizer = PercentileNormalizer.from_dict(meta["normalization"])
        model = DCMIXClassifier(config)
        model.load_state_dict(state, strict=True)
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise BundleError(f"{path}: bundle metadata or weights are inconsistent: {err}"
                          ) from None
    model.eval().to(device)
    imp = meta.get("importance")
    return ModelBundle(
        model=model, config=config, channel_names=list(meta["channel_names"]),
        class_names=list(meta["class_names"]), normalizer=normalizer,
        provenance=meta.get("provenance", {}),
        importance=None if imp is None else ChannelImportance.from_dict(imp),
        path=path, sha256=file_sha256(path),
    )


def save_training_result(path: str | Path, result, overwrite: bool = True) -> Path:
    """Save a :class:`~napari_attribution.core.training.TrainResult` as a bundle."""
    return save_bundle(path, result.model, result.channel_names, result.class_names,
                       result.normalizer, result.provenance(), result.importance,
                       overwrite=overwrite)
