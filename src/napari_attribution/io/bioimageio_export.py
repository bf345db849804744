"""Writing BioImage Model Zoo packages (optional extra ``bioimageio``).

:func:`export_bioimageio` writes a DCMIX bundle as a package that passes the spec's
validation and bioimageio.core's model test without this package installed: TorchScript
(and, with onnx installed, ONNX) weights beside the state dict (architecture taken from
this package; what this package loads, untrusted), an environment file, the bundle's
normalisation as the input's preprocessing, channel and class names on the axes, class
probabilities as the output (read back as log-probabilities), the user's metadata,
test and sample tensors and a cover from the test image (``io.bioimageio_metadata``).

Reading packages is :mod:`.bioimageio`; this module imports it and :mod:`.models`.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.models.classifier import Classifier
from ..core.runtime.errors import BundleError, InputError
from .bioimageio import ARCHITECTURE_CALLABLE, ARCHITECTURE_MODULE, _spec
from .bioimageio_metadata import PackageMetadata


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
