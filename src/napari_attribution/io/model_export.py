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

META_FILE = "napari_attribution.json"


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


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The napari-attribution metadata of a ``.pt2`` archive, read as JSON from the zip
    without loading the program: ``{}`` when the archive has none (a plain
    ``torch.export.save``); names, ``normalization`` (and its ``normalizer``) and
    ``training`` provenance otherwise. Metadata that is present but malformed is refused
    (``BundleError``): a model run without its normalisation gives confident nonsense."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if n.endswith(f"/extra/{META_FILE}")), None)
        if name is None:
            return {}
        if z.getinfo(name).file_size > 16 << 20:
            raise BundleError(f"{path}: its {META_FILE} is over 16 MiB")
        try:
            meta = json.loads(z.read(name).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise BundleError(f"{path}: its {META_FILE} is not valid JSON "
                              f"({type(err).__name__}); re-export the model") from None
    return check_model_metadata(meta, path)


def check_model_metadata(meta: Any, path: Any) -> dict[str, Any]:
    """Validated names, normalisation and training scale of an exported model (the
    ``.pt2`` extra file or a bioimage.io package's ``config.napari_attribution``)."""
    from ..core.data.normalization import PercentileNormalizer

    def bad(what: str) -> BundleError:
        return BundleError(f"{path}: the recorded model metadata is malformed: {what}; "
                           "re-export the model")

    if not isinstance(meta, dict):
        raise bad("not a JSON object")
    if meta.get("format", "napari-attribution-export") != "napari-attribution-export":
        raise bad(f"unknown format {meta.get('format')!r}")
    out: dict[str, Any] = {}
    for key in ("channel_names", "class_names"):
        v = meta.get(key)
        if v is None:
            continue
        if not (isinstance(v, list) and v and all(isinstance(n, str) for n in v)):
            raise bad(f"{key} is not a list of names")
        out[key] = v
    norm = meta.get("normalization")
    if norm is not None and norm != "none":
        if not isinstance(norm, dict):
            raise bad("normalization is not an object")
        try:
            out["normalizer"] = PercentileNormalizer.from_dict(norm)
        except (TypeError, ValueError, KeyError) as err:
            raise bad(f"normalization: {err}") from None
        if out["normalizer"].mode == "per_dataset" and out["normalizer"].lo is None:
            raise bad("per-dataset normalization without its lo/hi range")
        if "channel_names" in out and out["normalizer"].lo is not None and \
                len(out["normalizer"].lo) != len(out["channel_names"]):
            raise bad("normalization and channel names disagree on the channel count")
        out["normalization"] = out["normalizer"].to_dict()
    training = meta.get("training")
    if training is not None:
        if not isinstance(training, dict):
            raise bad("training is not an object")
        out["training"] = training
    scale = meta.get("scale")
    if scale is not None:
        if not isinstance(scale, dict):
            raise bad("scale is not an object")
        ds, size = scale.get("downsample", 1), scale.get("input_size")
        if not (isinstance(ds, int) and not isinstance(ds, bool) and 1 <= ds <= 1024):
            raise bad(f"scale.downsample must be an integer 1..1024, not {ds!r}")
        if size is not None and not (isinstance(size, int) and 1 <= size <= 1 << 16):
            raise bad(f"scale.input_size must be a positive integer, not {size!r}")
        training = dict(out.get("training") or {})
        data = dict(training.get("data") or {})
        data["downsample"] = ds
        if size is not None:
            data["image_size"] = [size, size]
        training["data"] = data
        out["training"] = training
        out["scale"] = {"downsample": ds, "input_size": size}
    return out


def model_scale(clf) -> dict[str, Any]:
    """``{"downsample", "input_size"}`` the model was trained at (from its provenance)."""
    from ..core.models.inference import ModelScale

    s = ModelScale.from_provenance(clf.provenance)
    return {"downsample": int(s.downsample), "input_size": s.input_size}
