"""Loading a classifier to explain: a napari-attribution bundle or a TorchScript file.

Neither path unpickles arbitrary code: bundles are safetensors + JSON metadata, and
TorchScript archives are loaded with ``torch.jit.load`` (a restricted program format).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import BundleError
from .bundle import SUFFIX, file_sha256, load_bundle

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip")


def _is_safetensors(path: Path) -> bool:
    if path.suffix == SUFFIX:
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length then a JSON object.
    return len(head) == 9 and head[8:9] == b"{"


def load_model(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load ``path`` as ``(model in eval mode, info)``.

    ``info`` always holds ``kind`` (``bundle`` or ``torchscript``), ``path`` and
    ``sha256``; bundles add ``channel_names``, ``class_names``, ``n_channels``,
    ``normalizer`` (a :class:`PercentileNormalizer`), ``normalization`` (its dict) and
    ``bundle`` (the :class:`ModelBundle`). Bad files raise :class:`BundleError`.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"model file not found: {path}")
    if path.is_dir():
        raise BundleError(f"{path} is a folder; give a model bundle (.safetensors) or a "
                          "TorchScript file")
    if path.stat().st_size == 0:
        raise BundleError(f"{path} is empty")
    if _is_safetensors(path):
        bundle = load_bundle(path, device=device)
        info = {"kind": "bundle", "path": str(path), "sha256": bundle.sha256,
                "channel_names": list(bundle.channel_names),
                "class_names": list(bundle.class_names), "n_channels": bundle.n_channels,
                "normalizer": bundle.normalizer,
                "normalization": bundle.normalizer.to_dict(), "bundle": bundle}
        return bundle.model.eval(), info
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is neither a napari-attribution bundle (.safetensors) "
                          "nor a TorchScript archive (saved with torch.jit.save); plain "
                          "pickled models are not loaded because that could run code")
    try:
        model = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path} is not a loadable TorchScript model (a pickled state "
                          f"dict or a truncated file?): {msg}") from None
    info = {"kind": "torchscript", "path": str(path), "sha256": file_sha256(path),
            "channel_names": None, "class_names": None, "n_channels": None,
            "normalizer": None, "normalization": None}
    return model.eval(), info
