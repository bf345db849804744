"""Export a model to ``torch.export``'s ``.pt2`` program format (TorchScript's successor).

The program holds the network's graph and weights; the names, normalisation and training
scale (downsampling, input size) a bundle records travel in the archive as
``extra_files`` (``napari_attribution.json``) and the graph accepts any batch size and
image side at least ``min_size``. Archives written here hold only the graph as JSON, raw
tensors and that metadata: they load without ``trust`` (``io.model_trust``).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.models.classifier import frozen
from ..core.runtime.errors import BundleError
from .model_metadata import META_FILE, model_scale


def export_program(model: Any, path: str | Path, size: int = 64, trust: bool = False,
                   overwrite: bool = True, allow_download: bool = False) -> Path:
    """Write ``model`` (a bundle path or anything ``load_model`` takes) as a ``.pt2``
    program taking (B, C, H, W) float32 images with B free, and H and W
    free where the network allows (``size`` is the example side used to trace it).
    Returns the path written."""
    from .models import load_model

    clf = load_model(model, trust=trust, allow_download=allow_download)
    path = Path(path)
    if path.suffix != ".pt2":
        path = path.with_name(path.name + ".pt2")
    example = torch.zeros(2, clf.n_channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    side = torch.export.Dim.AUTO  # free unless the network fixes it
    try:
        with frozen(clf.module, "cpu") as net, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                net, (example,), dynamic_shapes=({0: batch, 2: side, 3: side},),
                strict=False)
    except Exception as err:  # noqa: BLE001 - export fails in many ways
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"the model could not be exported: {msg[:300]}") from None
    meta = {"format": "napari-attribution-export", **clf.describe(),
            "source_sha256": clf.sha256, "training": clf.provenance,
            "scale": model_scale(clf)}
    from .atomic import atomic_write_bytes  # complete under the final name, or nothing

    extra = {META_FILE: json.dumps(meta, default=str)}
    # Serialised in memory, written by Python: torch's zip writer finishes the archive in
    # its destructor, and a disk that fills up there aborts the whole process (SIGABRT).
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    return atomic_write_bytes(path, buffer.getvalue(), overwrite, "exported model")
