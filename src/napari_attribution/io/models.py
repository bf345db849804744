"""``load_model``: one loader for every model a user can hand in, returning a
:class:`~napari_attribution.core.models.classifier.Classifier`.

Formats:

* napari-attribution bundles (``.safetensors``: weights + JSON metadata, no code);
* ``torch.export`` programs (``.pt2``, the recommended format for models from elsewhere);
* TorchScript archives (legacy: TorchScript is deprecated in torch);
* bioimage.io model packages (a folder with ``rdf.yaml`` or its ``.zip``), with the
  optional ``bioimageio`` extra;
* in memory: a ``Classifier``, ``ModelBundle``, ``TrainResult`` or ``torch.nn.Module``.

What loads without ``trust`` is decided by format, never by scanning code
(``io.model_trust``): bundles; ``.pt2`` archives holding only the graph as JSON and raw
tensors (what ``export-model`` writes); bioimage.io packages whose state-dict weights are
for an exactly named architecture of this package. TorchScript, and ``.pt2`` or
bioimage.io files with anything else, are refused unless ``trust=True``. Plain pickled
models are never unpickled. The operator scan (``io.model_scan``) still runs on what
loads untrusted, as a second line of defence. Every zip is checked against size limits
before extraction; a first forward call is timed (:func:`probe_call`).
"""

from __future__ import annotations

import os
import pickle
import threading
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
from .model_metadata import read_export_metadata
from .model_scan import (
    UnsafeModelError,
    restricted_unpickling,
    scan_exported,
)
from .model_trust import check_zip_limits, refuse, untrusted_pt2_copy

EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip")
#: preprocessing for models that record none (``--normalize``)
NORMALIZE_CHOICES = ("none", "per_field", "per_crop", "per_image")
#: environment variable: seconds a model's first forward call may take (default 120)
TIMEOUT_ENV = "NAPARI_ATTRIBUTION_MODEL_TIMEOUT"
DEFAULT_TIMEOUT = 120.0


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
               class_names: list[str] | None = None, allow_download: bool = False,
               timeout: float | None = None) -> Classifier:
    """A :class:`Classifier` from a file path or an in-memory model.

    ``trust``: load files that can carry code (TorchScript; ``.pt2`` archives with
    pickles, native libraries or other members; bioimage.io architectures from
    elsewhere). Only for files from a source you trust: they can run code when loaded.
    ``allow_download``: fetch bioimage.io weights given as a URL (refused otherwise).
    ``timeout``: seconds the first forward call of a loaded file may take (default: the
    ``NAPARI_ATTRIBUTION_MODEL_TIMEOUT`` environment variable, else 120).
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
    if path.is_file() and path.stat().st_size > 0 and zipfile.is_zipfile(path):
        check_zip_limits(path)  # before anything reads a member
    if _is_bioimageio(path):
        from .bioimageio import load_bioimageio

        clf = load_bioimageio(path, trust=trust, device=device,
                              allow_download=allow_download)
        return _probed(clf, timeout)
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
        return _probed(_load_export(path, trust, device, normalize, names), timeout)
    return _probed(_load_torchscript(path, trust, device, normalize, names), timeout)


def _load_torchscript(path: Path, trust: bool, device, normalize, names) -> Classifier:
    if not trust:  # by format: TorchScript runs its own code while loading
        with zipfile.ZipFile(path) as z:
            scripted = any("/code/" in f"/{n}" for n in z.namelist())
        raise refuse(path, "is TorchScript, which can run code when loaded" if scripted
                     else "is a torch.save pickle archive, not TorchScript or a .pt2 "
                          "program: unpickling it can run code")
    sha = file_sha256(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation warning
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError, zipfile.BadZipFile) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path} is not a loadable TorchScript model (a pickled state "
                          f"dict or a truncated file?): {msg}") from None
    ops = _informative_scan(module, path)
    clf = from_module(module, kind="torchscript", normalize=normalize, path=path,
                      sha256=sha, **names)
    clf.trusted, clf.operators = trust, ops
    return clf


def _informative_scan(module, path: Path) -> list[str]:
    """Operators of a trusted TorchScript model; a warning names those outside the
    pure-tensor allow-list (the user chose to trust the file: nothing is refused)."""
    from .model_scan import operator_allowed, torchscript_ops

    ops = sorted(torchscript_ops(module))
    odd = [op for op in ops if not operator_allowed(op)]
    if odd:
        warnings.warn(f"{path} (trusted) uses operators outside the pure-tensor allowlist: "
                      f"{', '.join(odd[:5])}", stacklevel=3)
    return ops


def _load_export(path: Path, trust: bool, device, normalize, names) -> Classifier:
    sha = file_sha256(path)
    meta = read_export_metadata(path)  # malformed metadata is refused before loading
    # untrusted: an in-memory copy of allow-listed members only (nothing unpickled,
    # compiled or dlopened); trusted: the file without AOTInductor libraries (never used
    # here, and loading them leaves aotinductor_* folders behind)
    source = untrusted_pt2_copy(path) if not trust else _without_aotinductor(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust:
                program = torch.export.load(source)
            else:
                with restricted_unpickling():
                    program = torch.export.load(source)
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
    try:
        module = program.module()
    except Exception as err:  # noqa: BLE001 - unlifting fails in many ways
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path} is not a loadable exported program: {msg[:300]}"
                          ) from None
    if device is not None and str(device) != "cpu":
        module.to(device)
    names = {k: names[k] or meta.get(k) for k in names}
    clf = from_module(module, kind="export", normalize=normalize, path=path, sha256=sha,
                      n_channels=None if shape is None else shape[1],
                      n_classes=_output_classes(program), **names)
    if "normalization" in meta and normalize is None:
        normalizer = meta["normalizer"]
        if normalizer.lo is not None and len(normalizer.lo) != clf.n_channels:
            raise BundleError(f"{path}: the recorded normalisation has {len(normalizer.lo)} "
                              f"channel(s) but the model takes {clf.n_channels}")
        clf.preprocess, clf.normalizer = normalizer, normalizer
        clf.normalization = normalizer.to_dict()
    clf.provenance = meta.get("training", {})
    if shape is not None and isinstance(shape[2], int) and _static_hw(program):
        clf.input_size = int(shape[2])
    clf.trusted, clf.operators = trust, ops
    return clf


def _without_aotinductor(path: Path):
    """``path``, or an in-memory copy without ``data/aotinductor/`` members."""
    import io

    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        if not any("/data/aotinductor/" in f"/{i.filename}" for i in infos):
            return str(path)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as out:
            for info in infos:
                if "/data/aotinductor/" not in f"/{info.filename}":
                    out.writestr(info, z.read(info))
    buf.seek(0)
    return buf


def model_timeout(timeout: float | None = None) -> float:
    """Seconds a model call may take: ``timeout``, else ``$NAPARI_ATTRIBUTION_MODEL_TIMEOUT``,
    else 120."""
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise InputError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not timeout > 0:
        raise InputError(f"the model time limit must be positive; got {timeout}")
    return float(timeout)


def probe_call(module: torch.nn.Module, x: torch.Tensor, timeout: float, what: str):
    """``module(x)`` without gradients in a watchdog thread: a model that has not answered
    within ``timeout`` seconds is refused (``BundleError``). The call itself cannot be
    stopped: it goes on in a daemon thread until it returns or the process ends."""
    from ..core.models.classifier import frozen

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            with torch.no_grad(), frozen(module) as net:
                box["out"] = net(x)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            box["err"] = err

    thread = threading.Thread(target=run, name="napari-attribution-model-probe",
                              daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BundleError(f"{what} did not answer one image within {timeout:g} s (a loop "
                          f"that never ends?); set {TIMEOUT_ENV} to allow longer")
    if "err" in box:
        raise box["err"]
    return box["out"]


def _probed(clf: Classifier, timeout: float | None) -> Classifier:
    """``clf`` after one timed forward call on a blank image (see :func:`probe_call`)."""
    limit = model_timeout(timeout)
    side = clf.input_size or 64
    dev = next((p.device for p in clf.module.parameters()), torch.device("cpu"))
    x = torch.zeros(1, clf.n_channels, side, side, device=dev)
    try:
        probe_call(clf.module, x, limit, str(clf.path or "the model"))
    except BundleError:
        raise
    except Exception:  # noqa: BLE001, S110 - shape errors surface later, with context
        pass
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
        n_cls = _probe_classes(module, n_ch, None if path is None else str(path))
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


def _probe_classes(module: torch.nn.Module, n_channels: int, what: str | None = None
                   ) -> int:
    """The number of classes, from one timed forward pass on a blank image (only for
    modules that are the caller's own or loaded by the rules above)."""
    limit = model_timeout()
    for side in (64, 32, 28, 96, 128):
        try:
            out = probe_call(module, torch.zeros(1, n_channels, side, side), limit,
                             what or "the model")
        except BundleError:
            raise
        except Exception:  # noqa: BLE001, S112 - try the next size
            continue
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            return int(out.shape[1])
        break
    raise BundleError("cannot tell how many classes the model has (it must map (B, C, H, "
                      "W) images to (B, n_classes) logits); give class_names")


def _as_float32(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, np.float32)
