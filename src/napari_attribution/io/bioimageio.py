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
Packages written by :func:`export_bioimageio` carry the bundle's exact normaliser and
training scale in ``config.napari_attribution``; loading them uses those (validated), so
they predict what the bundle predicts.

The input's declared preprocessing (``scale_range``, ``scale_linear``,
``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``, ``clip``,
``ensure_dtype``) is applied to raw images; other steps are refused by name.

Out: :func:`export_bioimageio` writes a DCMIX bundle as a package that passes the spec's
validation and bioimageio.core's model test without this package installed: TorchScript
(and, with onnx installed, ONNX) weights beside the state dict (architecture taken from
this package; what this package loads, untrusted), an environment file, the bundle's
normalisation as the input's preprocessing, channel and class names on the axes, class
probabilities as the output (read back as log-probabilities), the user's metadata,
test and sample tensors and a cover from the test image (``io.bioimageio_metadata``).
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.models.classifier import Classifier
from ..core.runtime.errors import BundleError, InputError
from .bioimageio_metadata import PackageMetadata

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

def _preprocessing_for(normalization: dict) -> list:
    from bioimageio.spec.model import v0_5 as m

    mode = normalization.get("mode")
    if mode == "none":
        return []
    if mode in ("per_field", "per_crop", "per_image"):
        return [m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
            axes=[m.AxisId("y"), m.AxisId("x")], min_percentile=float(normalization["low"]),
            max_percentile=float(normalization["high"])))]
    if mode == "per_dataset" and normalization.get("lo") is not None:
        lo = np.asarray(normalization["lo"], np.float64)
        hi = np.asarray(normalization["hi"], np.float64)
        span = np.maximum(hi - lo, 1e-6)
        return [m.ScaleLinearDescr(kwargs=m.ScaleLinearAlongAxisKwargs(
            axis=m.AxisId("channel"), gain=(1.0 / span).tolist(),
            offset=(-lo / span).tolist()))]
    raise BundleError(f"normalisation {mode!r} has no bioimage.io equivalent yet")


def export_bioimageio(model: Any, output: str | Path,
                      metadata: PackageMetadata | None = None, *, size: int = 64,
                      test_input: Any = None, onnx: bool | None = None,
                      overwrite: bool = True, **fields: Any) -> Path:
    """Write a DCMIX model (a bundle path, ``TrainResult``, ``Classifier``...) as a
    bioimage.io package (``.zip``) validated by bioimageio.spec; returns its path.

    Weights: the state dict (architecture: this package's ``build_dcmix``; loads
    untrusted here), TorchScript (runs in bioimageio.core, deepImageJ, ilastik without
    this package) and, when ``onnx`` and ``onnxscript`` are installed and the model
    exports, ONNX (``onnx=False`` skips it, ``onnx=True`` makes a failure an error).

    Metadata: a :class:`~.bioimageio_metadata.PackageMetadata`, and/or its fields as
    keywords (they override it): ``authors`` (``"Name"`` / ``"Name;Affiliation"`` or
    dicts; without one the package names :data:`~.bioimageio_metadata.MISSING_AUTHOR` and
    a warning says so), ``cite`` (``"TEXT;DOI"`` / ``"TEXT;URL"``, listed before the DCMIX
    and PCIM papers, which ``method_citations=False`` leaves out), ``license`` (SPDX id),
    ``name``, ``description``, ``tags`` (added to the defaults), ``documentation`` (a
    Markdown file, placed before the generated notes). ``test_input``: a raw (C, H, W)
    image (array, ``.npy`` or image file) for the test tensors and the cover; default a
    synthetic blob image of ``size`` px.
    """
    import dataclasses

    md = dataclasses.replace(metadata or PackageMetadata(), **fields)
    authors, cite, license, name = md.authors, md.cite, md.license, md.name
    description, tags, documentation = md.description, md.tags, md.documentation
    method_citations = md.method_citations
    import warnings

    _spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as m

    from .. import __version__
    from . import bioimageio_metadata as meta
    from .model_metadata import model_scale
    from .models import load_model

    clf = load_model(model)
    if clf.bundle is None:
        raise BundleError("only DCMIX models (bundles, training results) can be exported "
                          "as bioimage.io packages")
    people = [meta.parse_author(a) for a in (authors or [])]
    if not people:
        warnings.warn(f"no author given: the package names its author "
                      f"{meta.MISSING_AUTHOR!r}; bioimage.io requires real authors (pass "
                      "--author NAME;AFFILIATION, authors=[...]) before you share it",
                      UserWarning, stacklevel=2)
        people = [{"name": meta.MISSING_AUTHOR}]
    try:
        m.LicenseId(license)
    except ValueError:
        raise InputError(f"licence {license!r} is not an SPDX licence id that bioimage.io "
                         "knows (e.g. CC-BY-4.0, MIT, BSD-3-Clause)") from None
    references = meta.citations(cite, method_citations)
    if not references:
        raise InputError("bioimage.io needs at least one citation: pass --cite TEXT;DOI "
                         "or keep the method papers")
    user_doc = None
    if documentation is not None:
        doc_path = Path(documentation)
        if doc_path.suffix.lower() != ".md" or not doc_path.is_file():
            raise InputError(f"documentation {doc_path} must be an existing Markdown (.md) "
                             "file")
        user_doc = doc_path.read_text(encoding="utf-8")
    output = Path(output)
    if output.suffix != ".zip":
        output = output.with_name(output.name + ".zip")
    # Probabilities, not logits: the spec's reproducibility check needs a positive maximum
    # in the test output; the loader turns them back into log-probabilities.
    config = {**clf.bundle.config.to_dict(), "output": "probabilities"}
    from ..core.channels.dcmix import build_dcmix

    net = build_dcmix(**config)
    net.load_state_dict({k: v.detach().cpu() for k, v in clf.module.state_dict().items()})
    net.eval()
    raw = (meta.example_input(clf.n_channels, size) if test_input is None
           else meta.as_test_input(test_input, clf.n_channels))
    prepared = torch.from_numpy(clf.prepare(raw))
    with torch.no_grad():
        test_out = net(prepared).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        # in memory, then written by Python: torch's zip writer turns a full disk into a
        # RuntimeError from C++ (or, in a destructor, an abort) instead of an OSError
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buffer)
        (tmpd / "weights.pt").write_bytes(buffer.getvalue())
        _trace_torchscript(net, prepared, tmpd / "weights_torchscript.pt")
        opset = _export_onnx(net, prepared, tmpd / "weights.onnx", onnx)
        np.save(tmpd / "test_input.npy", raw)
        np.save(tmpd / "test_output.npy", test_out)
        import tifffile

        tifffile.imwrite(tmpd / "sample_input.tif", raw)
        tifffile.imwrite(tmpd / "sample_output.tif", test_out.astype(np.float32))
        weights_mix = clf.bundle.model.mixing_weights()
        importance = None if weights_mix is None else weights_mix.numpy().mean(0)
        meta.write_cover(tmpd / "cover.png", raw[0], clf.channel_names, clf.class_names,
                         test_out[0], importance)
        (tmpd / "environment.yaml").write_text(
            meta.environment_yaml(torch.__version__, __version__))
        doc = tmpd / "README.md"
        doc.write_text(_readme(clf, user_doc, opset is not None), encoding="utf-8")
        torch_version = m.Version(torch.__version__.split("+")[0])
        entries: dict[str, Any] = dict(
            pytorch_state_dict=m.PytorchStateDictWeightsDescr(
                source=tmpd / "weights.pt",
                architecture=m.ArchitectureFromLibraryDescr(
                    callable=m.Identifier(ARCHITECTURE_CALLABLE),
                    import_from=ARCHITECTURE_MODULE, kwargs=config),
                pytorch_version=torch_version,
                dependencies=m.FileDescr(source=tmpd / "environment.yaml")),
            torchscript=m.TorchscriptWeightsDescr(
                source=tmpd / "weights_torchscript.pt", pytorch_version=torch_version,
                parent="pytorch_state_dict",
                comment=f"traced by napari-attribution {__version__} (torch.jit.trace); "
                        "needs only pytorch"),
            onnx=None if opset is None else m.OnnxWeightsDescr(
                source=tmpd / "weights.onnx", opset_version=opset,
                parent="pytorch_state_dict",
                comment=f"exported by napari-attribution {__version__} (torch.onnx)"))
        weights = m.WeightsDescr(**{k: v for k, v in entries.items() if v is not None})
        channel_axis = m.ChannelAxis(channel_names=[m.Identifier(_ident(c))
                                                    for c in clf.channel_names])
        descr = _model_descr(
            name=name or f"DCMIX classifier {' '.join(clf.class_names)}"[:128],
            description=description or _description(clf),
            authors=[m.Author(**a) for a in people],
            cite=[m.CiteEntry(**c) for c in references],
            license=license,
            documentation=m.FileDescr(source=doc),
            covers=[m.FileDescr(source=tmpd / "cover.png")],
            tags=list(dict.fromkeys([*(tags or []), *meta.DEFAULT_TAGS])),
            inputs=[m.InputTensorDescr(
                id=m.TensorId("raw"), test_tensor=m.FileDescr(source=tmpd / "test_input.npy"),
                sample_tensor=m.FileDescr(source=tmpd / "sample_input.tif"),
                axes=[m.BatchAxis(), channel_axis,
                      m.SpaceInputAxis(id=m.AxisId("y"), size=m.ParameterizedSize(min=16,
                                                                                  step=1)),
                      m.SpaceInputAxis(id=m.AxisId("x"), size=m.ParameterizedSize(min=16,
                                                                                  step=1))],
                preprocessing=_preprocessing_for(clf.bundle.normalizer.to_dict()))],
            outputs=[m.OutputTensorDescr(
                id=m.TensorId("probabilities"),
                test_tensor=m.FileDescr(source=tmpd / "test_output.npy"),
                sample_tensor=m.FileDescr(source=tmpd / "sample_output.tif"),
                axes=[m.BatchAxis(),
                      m.ChannelAxis(channel_names=[m.Identifier(_ident(c))
                                                   for c in clf.class_names])])],
            weights=weights,
            config={"napari_attribution": {
                "version": __version__, "channel_names": clf.channel_names,
                "class_names": clf.class_names, "source_sha256": clf.sha256,
                "normalization": clf.normalization, "output": "probabilities",
                "scale": model_scale(clf)}},
        )
        from .atomic import atomic_write

        return atomic_write(output, lambda tmp: save_bioimageio_package(
            descr, output_path=tmp), overwrite, "bioimage.io package")


def _model_descr(**fields: Any):
    """``ModelDescr(**fields)``; metadata the spec refuses is one :class:`InputError`."""
    from bioimageio.spec.model import v0_5 as m
    from pydantic import ValidationError

    try:
        return m.ModelDescr(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InputError(f"the package metadata is not valid bioimage.io: {where}: "
                         f"{str(first.get('msg', err))[:300]}") from None


def _trace_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript of ``net`` by tracing, checked against the module at the example's
    size and at another size (the package declares any size from 16 px)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings (shape checks), deprecation
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
        buffer = io.BytesIO()  # written by Python (see the weights above)
        torch.jit.save(traced, buffer)
        path.write_bytes(buffer.getvalue())
        loaded = torch.jit.load(str(path), map_location="cpu")
    other = torch.rand(2, example.shape[1], 24, 40)
    with torch.no_grad():
        for x in (example, other):
            diff = float((loaded(x) - net(x)).abs().max())
            if not diff <= 1e-5:
                raise BundleError(f"the TorchScript weights differ from the model by {diff:.2g} "
                                  f"on a {tuple(x.shape)} input; the package was not written")


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path,
                 want: bool | None) -> int | None:
    """ONNX weights when ``onnx`` and ``onnxscript`` are installed (``want`` None: try,
    skip quietly if they are missing, warn if the export fails; True: fail loudly; False:
    skip). Returns the opset version, or None when skipped."""
    import importlib.util
    import logging
    import warnings

    if want is False:
        return None
    missing = [p for p in ("onnx", "onnxscript") if importlib.util.find_spec(p) is None]
    if missing:
        if want:
            raise BundleError(f"ONNX weights need {' and '.join(missing)} (pip install "
                              f"{' '.join(missing)})")
        return None
    try:
        import onnx

        dim = torch.export.Dim
        shapes = ({0: dim("batch", min=1, max=1024), 2: dim("y", min=16, max=8192),
                   3: dim("x", min=16, max=8192)},)
        # a batch of 2: torch.export would fix a batch axis of size 1 in the graph
        example = example[:1].expand(2, *example.shape[1:]).contiguous()
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    net, (example,), dynamo=True, dynamic_shapes=shapes, input_names=["raw"],
                    output_names=["probabilities"], verbose=False)
                program.save(str(path), external_data=False)
        finally:
            quiet.setLevel(level)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        _check_onnx(net, path)
    except Exception as err:  # noqa: BLE001 - any exporter failure means: no ONNX entry
        if want:
            raise BundleError(f"the model does not export to ONNX: "
                              f"{str(err).splitlines()[0][:300]}") from None
        warnings.warn(f"no ONNX weights in the package (the export failed: "
                      f"{str(err).splitlines()[0][:200]}); the TorchScript weights are there",
                      UserWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return int(opset)


def _check_onnx(net: torch.nn.Module, path: Path) -> None:
    """With onnxruntime installed: the ONNX model agrees with ``net`` on two sizes."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for shape in ((1, 32, 32), (2, 24, 40)):
        x = torch.rand(shape[0], net.config.n_channels, *shape[1:], generator=gen)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            diff = float(np.abs(got - net(x).numpy()).max())
        if not diff <= 1e-4:
            raise ValueError(f"the ONNX model differs from the network by {diff:.2g}")


def _description(clf: Classifier) -> str:
    return (f"A DCMIX classifier (learned channel mixing + CNN) of {clf.n_channels}-channel "
            f"2-D microscopy images ({', '.join(clf.channel_names)}) into "
            f"{len(clf.class_names)} classes ({', '.join(clf.class_names)}), trained with "
            "napari-attribution; its mixing weights are the channel importance. "
            f"Training scale: {_scale_text(clf)}.")[:1024]


def _ident(name: str) -> str:
    """A bioimage.io identifier for a channel or class name."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(name))
    return out if out and not out[0].isdigit() else f"c_{out}"


def _readme(clf: Classifier, user_doc: str | None = None, onnx: bool = False) -> str:
    head = user_doc.rstrip() + "\n\n## How this package was made\n\n" if user_doc else \
        "# DCMIX classifier\n\n"
    return (f"{head}Channels: {', '.join(clf.channel_names)}.\n"
            f"Classes: {', '.join(clf.class_names)}.\n\nExported by napari-attribution "
            "from a model bundle. Input: raw images (batch, channel, y, x) of at least "
            "16x16 px, normalised by the declared preprocessing. Output: class "
            "probabilities (batch, class).\n\n"
            "Weights: `weights_torchscript.pt` (TorchScript: needs only PyTorch; "
            "bioimageio.core, deepImageJ, ilastik)"
            + (", `weights.onnx` (ONNX)" if onnx else "")
            + " and `weights.pt` (a state dict for `napari_attribution.core.channels.dcmix."
            "build_dcmix`: needs napari-attribution, see `environment.yaml`).\n\n"
            f"Training scale: {_scale_text(clf)}. The bioimage.io format has no "
            "preprocessing step for shrinking, so a standalone runner does not do it: "
            "shrink raw images the same way (average blocks of that many pixels) before "
            "the model sees them; `config.napari_attribution.scale` records it, and "
            "napari-attribution applies it when it loads this package.\n\n"
            "## Validation\n\n"
            "`test_input.npy` is a raw image and `test_output.npy` the class "
            "probabilities this model gives for it (computed at export). "
            "`bioimageio.core`'s model test reproduces them from the TorchScript weights "
            "with the declared preprocessing, in an environment without "
            "napari-attribution (napari-attribution's own test suite runs it). The test "
            "image checks the package, not the model's accuracy: that comes from the "
            "validation data recorded in the bundle napari-attribution trained.\n\n"
            "## Methods\n\n"
            "DCMIX (channel importance, GCPR 2023, arXiv:2308.16637) and PCIM "
            "(pixel attribution, SLAS Discovery 2025, doi:10.1016/j.slasd.2025.100287).\n")


def _scale_text(clf: Classifier) -> str:
    from .model_metadata import model_scale

    s = model_scale(clf)
    size = f"{s['input_size']} px inputs" if s["input_size"] else "whole images"
    return f"images shrunk {s['downsample']}x, {size}"
