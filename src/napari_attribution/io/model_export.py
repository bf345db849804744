"""Export a model to ``torch.export``'s ``.pt2`` program format (TorchScript's successor).

The program holds the network's graph and weights; the names and normalisation a bundle
records travel in the archive as ``extra_files`` (``napari_attribution.json``) and the
graph accepts any batch size and image side at least ``min_size``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.classifier import frozen
from ..core.errors import BundleError

META_FILE = "napari_attribution.json"


def export_program(model: Any, path: str | Path, size: int = 64, trust: bool = False,
                   overwrite: bool = True) -> Path:
    """Write ``model`` (a bundle path or anything ``load_model`` takes) as a ``.pt2``
    program taking (B, C, H, W) float32 images with B free, and H and W
    free where the network allows (``size`` is the example side used to trace it).
    Returns the path written."""
    from .models import load_model

    clf = load_model(model, trust=trust)
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
            "source_sha256": clf.sha256, "training": clf.provenance}
    from .atomic import atomic_write_bytes  # complete under the final name, or nothing

    extra = {META_FILE: json.dumps(meta, default=str)}
    # Serialised in memory, written by Python: torch's zip writer finishes the archive in
    # its destructor, and a disk that fills up there aborts the whole process (SIGABRT).
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    return atomic_write_bytes(path, buffer.getvalue(), overwrite, "exported model")


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The napari-attribution metadata of a ``.pt2`` archive (names, normalisation), read
    as JSON from the zip without loading the program; ``{}`` when absent or malformed."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if n.endswith(f"/extra/{META_FILE}")), None)
        if name is None:
            return {}
        try:
            meta = json.loads(z.read(name).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
    if not isinstance(meta, dict) or meta.get("format") != "napari-attribution-export":
        return {}
    out: dict[str, Any] = {}
    for key in ("channel_names", "class_names"):
        v = meta.get(key)
        if isinstance(v, list) and v and all(isinstance(n, str) for n in v):
            out[key] = v
    if isinstance(meta.get("normalization"), dict):
        out["normalization"] = meta["normalization"]
    if isinstance(meta.get("training"), dict):
        out["training"] = meta["training"]
    return out
