"""The napari-attribution metadata that travels inside exported models: reading and
checking it (``.pt2`` extra file, bioimage.io config) and the training scale it records.

A leaf of ``io``: the loaders (:mod:`.models`, :mod:`.bioimageio`) and the exporters
(:mod:`.model_export`) import it; it imports neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.runtime.errors import BundleError

META_FILE = "napari_attribution.json"


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
