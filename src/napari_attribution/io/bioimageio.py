"""BioImage Model Zoo packages in and out (optional extra ``bioimageio``).

In: a bioimage.io model package (a folder with ``rdf.yaml``, or its ``.zip``) describing
an image classifier: one image input with ``channel`` and ``y``/``x`` axes (``batch``
optional), one output with ``batch`` and ``channel`` axes (the classes). Weights:

* ``pytorch_state_dict``: tensors read with torch's restricted unpickler, for an
  architecture named *exactly* in :data:`ARCHITECTURES` (``import_from`` and
  ``callable`` both equal; its kwargs checked): loads without trust. Any other
  architecture is Python code (a source file in the package, or any importable
  callable, this package's own helpers included) and needs ``trust=True``;
* ``torchscript``: TorchScript can run code when loaded: only with ``trust=True``.

Weights given as a URL are refused unless ``allow_download=True``. A ``.zip`` package is
checked against the archive limits of ``io.model_trust`` before it is opened.
Packages written by :func:`~.bioimageio_export.export_bioimageio` carry the bundle's
exact normaliser and training scale in ``config.napari_attribution``; loading them uses
those (validated), so they predict what the bundle predicts.

The input's declared preprocessing (``scale_range``, ``scale_linear``,
``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``, ``clip``,
``ensure_dtype``) is applied to raw images; other steps are refused by name.

Out: :mod:`.bioimageio_export` writes packages (it imports this module, never the reverse).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.models.classifier import Classifier
from ..core.runtime.errors import BundleError

ARCHITECTURE_MODULE = "napari_attribution.core.channels.dcmix"
ARCHITECTURE_CALLABLE = "build_dcmix"
#: the module name packages exported before the core was split into subpackages carry
LEGACY_ARCHITECTURE_MODULE = "napari_attribution.core.dcmix"  # pre-split name
#: (import_from, callable) pairs that load without trust, compared as whole strings (never
#: imported: each pair stands for this package's own ``build_dcmix``)
ARCHITECTURES = frozenset({(ARCHITECTURE_MODULE, ARCHITECTURE_CALLABLE),
                           (LEGACY_ARCHITECTURE_MODULE, ARCHITECTURE_CALLABLE)})
#: the kwargs of build_dcmix that an untrusted package may set, and their checks
_DCMIX_KWARGS = {
    "n_channels": lambda v: isinstance(v, int) and 1 <= v <= 1024,
    "n_classes": lambda v: isinstance(v, int) and 2 <= v <= 10_000,
    "n_heads": lambda v: isinstance(v, int) and 1 <= v <= 64,
    "backbone": lambda v: isinstance(v, str) and len(v) < 64,
    "width": lambda v: v is None or (isinstance(v, int) and 1 <= v <= 256),
    "mixing": lambda v: isinstance(v, bool),
    "output": lambda v: v in ("logits", "probabilities"),
}
_PRE_SUPPORTED = ("scale_range", "scale_linear", "zero_mean_unit_variance",
                  "fixed_zero_mean_unit_variance", "clip", "ensure_dtype")


def _spec():
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise BundleError("bioimage.io packages need the optional extra: pip install "
                          "'napari-attribution[bioimageio]'") from None
    return spec


def load_bioimageio(path: str | Path, trust: bool = False,
                    device: str | torch.device = "cpu",
                    allow_download: bool = False) -> Classifier:
    """A :class:`Classifier` for the bioimage.io model package at ``path``."""
    from .bundle import file_sha256
    from .model_trust import check_zip_limits

    spec = _spec()
    path = Path(path)
    if path.is_file():
        check_zip_limits(path)
    rdf = path
    if path.is_dir():
        rdf = next(p for p in (path / "rdf.yaml", path / "bioimageio.yaml") if p.exists())
    try:
        descr = spec.load_description(rdf if path.is_dir() else path, perform_io_checks=False,
                                      format_version="latest")
    except Exception as err:  # noqa: BLE001 - yaml, zip and validation errors
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path} is not a readable bioimage.io package: {msg[:300]}"
                          ) from None
    if not isinstance(descr, spec.model.v0_5.ModelDescr):
        summary = getattr(descr, "validation_summary", None)
        first = _first_error(summary)
        raise BundleError(f"{path} is not a valid bioimage.io model description: {first}")
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise BundleError(f"{path}: only models with one image input and one class output "
                          f"are supported (found {len(descr.inputs)} input(s), "
                          f"{len(descr.outputs)} output(s))")
    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes = [str(a.id) for a in inp.axes]
    out_axes = [str(a.id) for a in out.axes]
    if set(in_axes) - {"batch", "channel", "y", "x"} or not {"channel", "y", "x"} <= set(in_axes):
        raise BundleError(f"{path}: the input's axes are {in_axes}; a 2-D multichannel "
                          "classifier needs channel, y and x (and optionally batch)")
    if [a for a in out_axes if a != "batch"] != ["channel"]:
        raise BundleError(f"{path}: the output's axes are {out_axes}; a classifier outputs "
                          "(batch, channel) class scores")
    channel_names = [str(n) for n in _axis(inp, "channel").channel_names]
    class_names = [str(n) for n in _axis(out, "channel").channel_names]
    ours = getattr(descr.config, "napari_attribution", None)
    if isinstance(ours, dict):  # our exports keep the original (unrestricted) names
        for key, names in (("channel_names", channel_names), ("class_names", class_names)):
            orig = ours.get(key)
            if isinstance(orig, list) and len(orig) == len(names) and \
                    all(isinstance(n, str) for n in orig):
                names[:] = orig
    steps = [(str(p.id), p.kwargs) for p in inp.preprocessing]
    for name, _ in steps:
        if name not in _PRE_SUPPORTED:
            raise BundleError(f"{path}: the input preprocessing {name!r} is not supported "
                              f"(supported: {', '.join(_PRE_SUPPORTED)})")
    recorded: dict[str, Any] = {}
    if isinstance(ours, dict):  # our own export: the bundle's normaliser and scale
        from .model_metadata import check_model_metadata

        recorded = check_model_metadata(
            {k: v for k, v in ours.items() if k in ("normalization", "scale")}, path)
        if recorded.get("normalizer") is not None and recorded["normalizer"].lo is not None \
                and len(recorded["normalizer"].lo) != len(channel_names):
            raise BundleError(f"{path}: the recorded normalisation has "
                              f"{len(recorded['normalizer'].lo)} channel(s) but the "
                              f"package declares {len(channel_names)}")
    module = _load_weights(descr, path, trust, device, allow_download)
    probabilities = isinstance(ours, dict) and ours.get("output") == "probabilities"
    wrapped = _AxesAdapter(module, in_axes, log=probabilities)
    root = rdf.parent if rdf.is_file() else path
    sha = file_sha256(path) if path.is_file() else file_sha256(rdf)
    normalization: Any = {"bioimageio_preprocessing": [
        {"id": n, "kwargs": json.loads(k.model_dump_json())} for n, k in steps]}
    normalizer = recorded.get("normalizer")
    if normalizer is not None:
        preprocess = normalizer
        normalization = {**normalizer.to_dict(), **normalization}
    elif isinstance(ours, dict) and ours.get("normalization") == "none":
        preprocess = None
    else:
        def preprocess(x):
            return apply_preprocessing(x, steps, in_axes)
    provenance: dict[str, Any] = {"bioimageio_name": descr.name,
                                  "bioimageio_id": str(descr.id or ""), "root": str(root)}
    if "training" in recorded:
        provenance["data"] = recorded["training"]["data"]
    clf = Classifier(
        module=wrapped, kind="bioimageio", channel_names=channel_names,
        class_names=class_names, preprocess=preprocess, normalization=normalization,
        path=path, sha256=sha, trusted=trust, provenance=provenance, normalizer=normalizer)
    return clf


def _first_error(summary) -> str:
    try:
        for d in summary.details:
            for e in d.errors:
                return f"{'.'.join(map(str, e.loc))}: {e.msg}"
    except AttributeError:
        pass
    return "see bioimageio.spec's validation summary"


def _axis(tensor, axis_id: str):
    return next(a for a in tensor.axes if str(a.id) == axis_id)


def _architecture_key(entry) -> tuple[str, str] | None:
    arch = getattr(entry, "architecture", None)
    import_from = getattr(arch, "import_from", None)
    if arch is None or import_from is None:
        return None
    return str(import_from), str(arch.callable)


def _load_weights(descr, path: Path, trust: bool, device, allow_download: bool
                  ) -> torch.nn.Module:
    from .model_trust import refuse

    w = descr.weights
    sd, ts = w.pytorch_state_dict, w.torchscript
    if sd is not None and (trust or _architecture_key(sd) in ARCHITECTURES):
        return _load_state_dict_entry(sd, path, trust, device, allow_download)
    if ts is not None and trust:
        return _load_torchscript_entry(ts, path, trust, device, allow_download)
    if sd is not None:
        key = _architecture_key(sd)
        arch = sd.architecture
        where = (f"{key[0]}.{key[1]}" if key else
                 f"{arch.callable} from a source file in the package")
        raise refuse(path, f"needs the architecture {where}, which is Python code (only "
                           f"{', '.join(f'{a}.{b}' for a, b in sorted(ARCHITECTURES))} "
                           "loads without trust)")
    if ts is not None:
        raise refuse(path, "has TorchScript weights, which can run code when loaded")
    raise BundleError(f"{path}: no pytorch_state_dict or torchscript weights (found "
                      f"{[k for k, v in w if v is not None]})")


def _check_local(file_descr, path: Path, what: str, allow_download: bool) -> None:
    """Refuse a package file given as a URL unless downloads were asked for."""
    source = str(getattr(file_descr, "source", "") or "")
    if "://" in source and not source.startswith("file://") and not allow_download:
        raise BundleError(f"{path}: its {what} are at {source[:200]}; nothing is downloaded "
                          "unless you ask: pass --allow-download (allow_download=True) if "
                          "you trust that address")


def _check_inner_zip(data: io.BytesIO, path: Path, what: str) -> None:
    """The archive limits on a weights file that is itself a zip (torch.save's format)."""
    import zipfile

    from .model_trust import check_zip_limits

    if zipfile.is_zipfile(data):
        check_zip_limits(data, f"{path} ({what})")
    data.seek(0)


def _read(file_descr, what: str) -> io.BytesIO:
    """The bytes of a package file (inside a folder or a zip), in memory."""
    try:
        return io.BytesIO(file_descr.get_reader().read())
    except Exception as err:  # noqa: BLE001 - the spec raises many types
        raise BundleError(f"cannot read the {what} of the package: {err}") from None


def _load_torchscript_entry(entry, path: Path, trust: bool, device,
                            allow_download: bool) -> torch.nn.Module:
    """TorchScript weights: only reached with ``trust=True``."""
    import warnings

    _check_local(entry, path, "torchscript weights", allow_download)
    data = _read(entry, "torchscript weights")
    _check_inner_zip(data, path, "torchscript weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(data, map_location=device)
    return module


def _build_ours(path: Path, kwargs: dict) -> torch.nn.Module:
    """build_dcmix with kwargs checked against :data:`_DCMIX_KWARGS` (no trust needed)."""
    from ..core.channels.dcmix import build_dcmix

    for key, value in kwargs.items():
        check = _DCMIX_KWARGS.get(key)
        if check is None or isinstance(value, bool) and key != "mixing" or not check(value):
            raise BundleError(f"{path}: the architecture argument {key}={value!r} is not "
                              f"one {ARCHITECTURE_CALLABLE} accepts")
    return build_dcmix(**kwargs)


def _load_state_dict_entry(entry, path: Path, trust: bool, device,
                           allow_download: bool) -> torch.nn.Module:
    import importlib

    arch = entry.architecture
    key = _architecture_key(entry)
    kwargs = json.loads(json.dumps(dict(arch.kwargs), default=str))
    _check_local(entry, path, "pytorch_state_dict weights", allow_download)
    try:
        if key in ARCHITECTURES:
            module = _build_ours(path, kwargs)
        elif key is None:
            raise BundleError(f"{path}: architectures from source files are not "
                              "supported; use the package's torchscript weights")
        else:  # trusted: any importable callable
            fn = getattr(importlib.import_module(key[0]), key[1])
            module = fn(**dict(arch.kwargs))
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"{path}: cannot build the architecture {arch.callable} from "
                          f"{key[0] if key else 'a source file'}: {err}") from None
    if not isinstance(module, torch.nn.Module):
        raise BundleError(f"{path}: the architecture {arch.callable} did not build a torch "
                          "module")
    data = _read(entry, "pytorch_state_dict weights")
    _check_inner_zip(data, path, "pytorch_state_dict weights")
    try:
        state = torch.load(data, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise BundleError(f"{path}: the state dict is not plain tensors "
                          f"({str(err).splitlines()[0][:200]})") from None
    if isinstance(module, torch.nn.Module) and hasattr(module, "config"):
        from .bundle import check_weights

        check_weights(path, state, module)
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise BundleError(f"{path}: the weights do not fit the architecture: "
                          f"{str(err).splitlines()[0]}") from None
    return module.eval().to(device)


class _AxesAdapter(torch.nn.Module):
    """Feeds (N, C, H, W) images to a module declared with other axis orders."""

    def __init__(self, module: torch.nn.Module, axes: list[str], log: bool = False) -> None:
        super().__init__()
        self.inner = module
        self.log = log  # the module outputs probabilities: return log-probabilities
        self.axes = list(axes)
        order = [a for a in ("batch", "channel", "y", "x") if a in axes]
        self.perm = [order.index(a) for a in axes]
        self.squeeze_batch = "batch" not in axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.squeeze_batch:
            out = torch.stack([self.inner(xi.permute(*self.perm)) for xi in x])
            out = out.reshape(x.shape[0], -1)
        else:
            out = self.inner(x.permute(*self.perm))
        return torch.log(out.clamp_min(1e-12)) if self.log else out


def apply_preprocessing(images: np.ndarray, steps: list[tuple[str, Any]],
                        axes: list[str]) -> np.ndarray:
    """The declared preprocessing on (N, C, H, W) raw images (float32 out)."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[None]
    ours = {"batch": 0, "channel": 1, "y": 2, "x": 3}
    for name, kw in steps:
        k = json.loads(kw.model_dump_json()) if hasattr(kw, "model_dump_json") else dict(kw)
        red = tuple(ours[str(a)] for a in (k.get("axes") or [a for a in axes if a != "channel"]
                                           ) if str(a) in ours)
        if name == "scale_range":
            lo = np.percentile(x, k.get("min_percentile", 0.0), axis=red, keepdims=True)
            hi = np.percentile(x, k.get("max_percentile", 100.0), axis=red, keepdims=True)
            x = (x - lo) / (hi - lo + k.get("eps", 1e-6))
        elif name == "zero_mean_unit_variance":
            x = (x - x.mean(red, keepdims=True)) / (x.std(red, keepdims=True)
                                                    + k.get("eps", 1e-6))
        elif name in ("scale_linear", "fixed_zero_mean_unit_variance"):
            x = _along_axis(x, k, name)
        elif name == "clip":
            x = np.clip(x, k.get("min"), k.get("max"))
        x = x.astype(np.float32)
    return x


def _along_axis(x: np.ndarray, k: dict, name: str) -> np.ndarray:
    if name == "scale_linear":
        a, b = k.get("gain", 1.0), k.get("offset", 0.0)
    else:
        mean, std = np.asarray(k["mean"], np.float32), np.asarray(k["std"], np.float32)
        a, b = 1.0 / (std + k.get("eps", 1e-6)), -mean / (std + k.get("eps", 1e-6))
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.ndim == 1 or b.ndim == 1:
        if k.get("axis", "channel") != "channel":
            raise BundleError(f"{name} along axis {k.get('axis')!r} is not supported")
        a, b = a.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1)
    return x * a + b


# --- export ------------------------------------------------------------------------------
