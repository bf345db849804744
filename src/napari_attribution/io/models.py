"""``load_model``: one loader for every model a user can hand in, returning a
:class:`~napari_attribution.core.models.classifier.Classifier`.

Formats:

* napari-attribution bundles (``.safetensors``: weights + JSON metadata, no code);
* ``torch.export`` programs (``.pt2``, the recommended format for models from elsewhere);
* TorchScript archives (legacy: TorchScript is deprecated in torch);
* bioimage.io model packages (a folder with ``rdf.yaml`` or its ``.zip``), with the
  optional ``bioimageio`` extra;
* in memory: a ``Classifier``, ``ModelBundle``, ``TrainResult`` or ``torch.nn.Module``.

TorchScript and exported programs are programs, not data: they can call operators that
read or write files. They are scanned against an allowlist of pure tensor operators
before any forward call (``io.model_scan``) and refused otherwise, unless
``trust=True``. Plain pickled models are never unpickled; pickles inside ``.pt2``
archives go through torch's restricted (weights-only) unpickler unless ``trust=True``.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.data.normalization import PercentileNormalizer, canonical_mode
from ..core.models.classifier import Classifier, default_names, infer_channels
from ..core.runtime.errors import BundleError, InputError
from .bundle import SUFFIX, ModelBundle, file_sha256, load_bundle
from .model_export import read_export_metadata
from .model_scan import (
    UnsafeModelError,
    check_export_archive,
    check_torchscript_archive,
    restricted_unpickling,
    scan_exported,
    scan_torchscript,
)

EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip")
#: preprocessing for models that record none (``--normalize``)
NORMALIZE_CHOICES = ("none", "per_field", "per_crop", "per_image")


def _is_safetensors(path: Path) -> bool:
    if path.suffix == SUFFIX:
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length then a JSON object.
    return len(head) == 9 and head[8:9] == b"{"


def _is_bioimageio(path: Path) -> bool:
    if path.is_dir():
        return any((path / n).exists() for n in ("rdf.yaml", "bioimageio.yaml"))
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return any(n.rsplit("/", 1)[-1] in ("rdf.yaml", "bioimageio.yaml") for n in names)
    return False


def _is_export_archive(path: Path) -> bool:
    if path.suffix in EXPORT_SUFFIXES:
        return True
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("archive_format") or n.endswith("serialized_exported_program.json")
               for n in names)


def load_model(source: Any, *, trust: bool = False, device: str | torch.device = "cpu",
               normalize: str | None = None, channel_names: list[str] | None = None,
               class_names: list[str] | None = None) -> Classifier:
    """A :class:`Classifier` from a file path or an in-memory model.

    ``trust``: skip the operator scan of TorchScript / exported programs (only for files
    from a source you trust: they may then read or write files when run).
    ``normalize``: preprocessing for models that record none (``none`` or
    ``per_image``); bundles and bioimage.io packages always use their own.
    ``channel_names`` / ``class_names``: names for models that carry none.
    Bad or unsafe files raise :class:`BundleError` (``UnsafeModelError``).
    """
    from ..core.channels.training import TrainResult

    names = {"channel_names": channel_names, "class_names": class_names}
    if isinstance(source, Classifier):
        return source
    if isinstance(source, ModelBundle):
        return from_bundle(source)
    if isinstance(source, TrainResult):
        return from_train_result(source)
    if isinstance(source, torch.export.ExportedProgram):
        return from_module(source.module(), kind="export", normalize=normalize, **names)
    if isinstance(source, torch.nn.Module):
        return from_module(source, normalize=normalize, **names)
    if not isinstance(source, (str, Path)):
        raise InputError("a model must be a file path, a Classifier, a ModelBundle, a "
                         f"TrainResult or a torch module; got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise BundleError(f"model file not found: {path}")
    if _is_bioimageio(path):
        from .bioimageio import load_bioimageio

        return load_bioimageio(path, trust=trust, device=device)
    if path.is_dir():
        raise BundleError(f"{path} is a folder; give a model bundle (.safetensors), an "
                          "exported program (.pt2), a TorchScript file or a bioimage.io "
                          "package (a folder with rdf.yaml)")
    if path.stat().st_size == 0:
        raise BundleError(f"{path} is empty")
    if _is_safetensors(path):
        return from_bundle(load_bundle(path, device=device))
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is neither a napari-attribution bundle (.safetensors), "
                          "an exported program (.pt2) nor a TorchScript archive; plain "
                          "pickled models are not loaded because unpickling can run code")
    if _is_export_archive(path):
        return _load_export(path, trust, device, normalize, names)
    return _load_torchscript(path, trust, device, normalize, names)


def _load_torchscript(path: Path, trust: bool, device, normalize, names) -> Classifier:
    sha = file_sha256(path)
    if not trust:
        check_torchscript_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation warning
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError, zipfile.BadZipFile) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path} is not a loadable TorchScript model (a pickled state "
                          f"dict or a truncated file?): {msg}") from None
    ops = [] if trust else scan_torchscript(module, str(path))
    clf = from_module(module, kind="torchscript", normalize=normalize, path=path,
                      sha256=sha, **names)
    clf.trusted, clf.operators = trust, ops
    return clf


def _load_export(path: Path, trust: bool, device, normalize, names) -> Classifier:
    sha = file_sha256(path)
    if not trust:
        check_export_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust:
                program = torch.export.load(str(path))
            else:
                with restricted_unpickling():
                    program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001 - deserialisation fails in many ways
        if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in str(err):
            raise UnsafeModelError(
                f"{path} was not loaded: it holds a pickled Python object that could run "
                "code while unpickling (only plain tensors are unpickled without "
                "--trust-model / trust=True)") from None
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path} is not a loadable exported program (torch.export.save): "
                          f"{msg[:300]}") from None
    ops = [] if trust else scan_exported(program, str(path))
    shape = _example_shape(program)
    module = program.module()
    if device is not None and str(device) != "cpu":
        module.to(device)
    meta = read_export_metadata(path)  # written by export-model: names, normalisation
    names = {k: names[k] or meta.get(k) for k in names}
    clf = from_module(module, kind="export", normalize=normalize, path=path, sha256=sha,
                      n_channels=None if shape is None else shape[1],
                      n_classes=_output_classes(program), **names)
    if "normalization" in meta and normalize is None:
        try:
            normalizer = PercentileNormalizer.from_dict(meta["normalization"])
        except (TypeError, ValueError) as err:
            raise BundleError(f"{path}: the recorded normalisation is unreadable: {err}"
                              ) from None
        clf.preprocess, clf.normalizer = normalizer, normalizer
        clf.normalization = normalizer.to_dict()
    clf.provenance = meta.get("training", {})
    if shape is not None and isinstance(shape[2], int) and _static_hw(program):
        clf.input_size = int(shape[2])
    clf.trusted, clf.operators = trust, ops
    return clf


def _example_shape(program) -> tuple | None:
    """(B, C, H, W) of the program's image input (ints for static sizes)."""
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            node = next((n for n in program.graph.nodes
                         if n.op == "placeholder" and n.name == spec.arg.name), None)
            val = None if node is None else node.meta.get("val")
            if val is not None and val.ndim == 4:
                return tuple(int(s) if isinstance(s, int) else s for s in val.shape)
    return None


def _static_hw(program) -> bool:
    shape = _example_shape(program)
    return shape is not None and all(isinstance(s, int) for s in shape[2:])


def _output_classes(program) -> int | None:
    out = [n for n in program.graph.nodes if n.op == "output"]
    if not out:
        return None
    vals = out[0].args[0]
    first = vals[0] if isinstance(vals, (list, tuple)) and vals else vals
    val = getattr(first, "meta", {}).get("val")
    if val is not None and val.ndim == 2 and isinstance(val.shape[1], int):
        return int(val.shape[1])
    return None


def from_bundle(bundle: ModelBundle) -> Classifier:
    """A :class:`Classifier` over a DCMIX bundle: its preprocessing is the bundle's own
    ``prepare`` (the normalisation recorded at training time) and its input size the
    side of its training images (recorded, or inferred from older bundles' provenance:
    ``ModelScale``), so that larger images are explained in tiles of that size."""
    from ..core.models.inference import ModelScale

    scale = ModelScale.from_provenance(bundle.provenance)
    return Classifier(
        module=bundle.model, kind="bundle", channel_names=list(bundle.channel_names),
        class_names=list(bundle.class_names), normalization=bundle.normalizer.to_dict(),
        input_size=scale.input_size, path=bundle.path,
        sha256=bundle.sha256, provenance=dict(bundle.provenance or {}),
        importance=bundle.importance, bundle=bundle, normalizer=bundle.normalizer)


def from_train_result(result) -> Classifier:
    """A :class:`Classifier` for a fresh ``TrainResult`` (not yet saved)."""
    bundle = ModelBundle(model=result.model, config=result.model_config,
                         channel_names=list(result.channel_names),
                         class_names=list(result.class_names), normalizer=result.normalizer,
                         provenance=result.provenance(), importance=result.importance,
                         warnings=list(result.warnings),
                         checks={k: v for k, v in result.checks().items()
                                 if k != "warnings" and v is not None})
    clf = from_bundle(bundle)
    clf.kind = "train_result"
    return clf


def from_module(module: torch.nn.Module, *, kind: str = "module",
                normalize: str | None = None, path: Path | None = None,
                sha256: str | None = None, channel_names: list[str] | None = None,
                class_names: list[str] | None = None, n_channels: int | None = None,
                n_classes: int | None = None) -> Classifier:
    """A :class:`Classifier` over a module that carries no metadata: channel and class
    names are given or numbered, preprocessing is ``normalize`` (default: none)."""
    mode = normalize or "none"
    if mode not in NORMALIZE_CHOICES:
        raise InputError(f"unknown normalisation {mode!r}; choose one of "
                         f"{NORMALIZE_CHOICES}")
    n_ch = len(channel_names) if channel_names else n_channels or infer_channels(module)
    if n_ch is None:
        raise BundleError("cannot tell how many channels the model takes; give "
                          "channel_names")
    from ..core.models.classifier import _n_classes_of

    n_cls = len(class_names) if class_names else n_classes or _n_classes_of(module)
    if n_cls is None:
        n_cls = _probe_classes(module, n_ch)
    normalizer = None if mode == "none" else PercentileNormalizer(
        mode=canonical_mode(mode, "crop"))
    return Classifier(
        module=module, kind=kind,
        channel_names=list(channel_names) if channel_names else
        default_names("channel", n_ch),
        class_names=list(class_names) if class_names else default_names("class", n_cls),
        preprocess=normalizer if normalizer is not None else _as_float32,
        normalization=normalizer.to_dict() if normalizer is not None else "none",
        path=path, sha256=sha256, normalizer=normalizer)


def _probe_classes(module: torch.nn.Module, n_channels: int) -> int:
    """The number of classes, from one forward pass on a blank image (only for modules
    that are the caller's own or passed the operator scan)."""
    from ..core.models.classifier import frozen

    for side in (64, 32, 28, 96, 128):
        try:
            with torch.no_grad(), frozen(module) as net:
                out = net(torch.zeros(1, n_channels, side, side))
        except Exception:  # noqa: BLE001, S112 - try the next size
            continue
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            return int(out.shape[1])
        break
    raise BundleError("cannot tell how many classes the model has (it must map (B, C, H, "
                      "W) images to (B, n_classes) logits); give class_names")


def _as_float32(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, np.float32)
