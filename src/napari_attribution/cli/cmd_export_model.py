"""``napari-attribution export-model``: a bundle -> a ``torch.export`` .pt2 or a bioimage.io
package (.zip)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ..core.runtime.errors import OutputError
    from ..io.atomic import why_failed

    try:
        return _run(args)
    except OSError as err:  # a write outside the atomic writer (the package's parts)
        raise OutputError(f"cannot write the exported model {args.output}: "
                          f"{why_failed(err)} ([Errno {err.errno}])") from None


def _run(args: argparse.Namespace) -> int:
    from ..io.atomic import check_output

    fmt = args.format or ("bioimageio" if args.output.suffix == ".zip" else "pt2")
    suffix = ".zip" if fmt == "bioimageio" else ".pt2"
    final = args.output if args.output.suffix == suffix or args.output.is_dir() or \
        (args.output.exists() and not args.output.is_file()) else \
        args.output.with_name(args.output.name + suffix)
    check_output(final, args.overwrite, "exported model")  # before exporting
    if fmt == "bioimageio":
        return _bioimageio(args)
    given = {k for k in _BIOIMAGEIO_ONLY  # every default is None (False: the store_true)
             if getattr(args, k) is not None and (k == "onnx" or getattr(args, k) is not False)}
    if given:
        from ..core.runtime.errors import UsageError

        names = ", ".join("--onnx/--no-onnx" if k == "onnx" else "--" + k.replace("_", "-")
                          for k in sorted(given))
        raise UsageError(f"{names}: only for a bioimage.io package (.zip); this output is "
                         "a .pt2")
    from ..io.model_export import export_program

    out = export_program(args.model, args.output, size=args.size, trust=args.trust_model,
                         overwrite=args.overwrite, allow_download=args.allow_download)
    print(f"{args.model} -> {out} (torch.export program; channel and class names, "
          "normalisation and training scale recorded inside; loads without --trust-model)")
    return 0


_BIOIMAGEIO_ONLY = {"author", "cite", "license", "name", "description", "tag",
                    "documentation", "test_image", "onnx", "no_method_citations"}


def _bioimageio(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from ..io.bioimageio_export import export_bioimageio
    from ..io.bioimageio_metadata import PackageMetadata

    metadata = PackageMetadata(
        authors=args.author or (), cite=args.cite or (),
        method_citations=not args.no_method_citations,
        license=args.license or PackageMetadata.license, name=args.name,
        description=args.description, tags=args.tag or (), documentation=args.documentation)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", UserWarning)
        out = export_bioimageio(args.model, args.output, metadata, size=args.size,
                                test_input=args.test_image, onnx=args.onnx,
                                overwrite=args.overwrite)
    for w in seen:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(f"{args.model} -> {out} (bioimage.io model package, validated by "
          "bioimageio.spec; TorchScript weights run without napari-attribution)")
    return 0


def _add_bioimageio_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "bioimage.io package (.zip)",
        "what the package says about itself; bioimage.io requires authors, a licence and "
        "citations (DCMIX and PCIM are always cited unless --no-method-citations)")
    g.add_argument("--author", action="append", metavar="NAME[;AFFILIATION]",
                   help="an author of the model (repeat for several); without one the "
                        "package names 'UNKNOWN AUTHOR' and a warning says so")
    g.add_argument("--cite", action="append", metavar="TEXT;DOI_OR_URL",
                   help="a reference to cite with the model, e.g. your paper (repeat for "
                        "several); listed before the DCMIX and PCIM papers")
    g.add_argument("--no-method-citations", action="store_true",
                   help="do not add the DCMIX and PCIM papers to the citations")
    g.add_argument("--license", metavar="SPDX",
                   help="licence of the model as an SPDX id, e.g. CC-BY-4.0, MIT "
                        "(default BSD-3-Clause)")
    g.add_argument("--name", help="the package's name (default: 'DCMIX classifier' and "
                                  "the class names)")
    g.add_argument("--description",
                   help="one paragraph on what the model does (default: generated from "
                        "the channels, classes and training scale)")
    g.add_argument("--tag", action="append", metavar="TAG",
                   help="a keyword, added to the default tags (repeat for several)")
    g.add_argument("--documentation", type=Path, metavar="FILE.md",
                   help="a Markdown file about the model, placed before the generated "
                        "notes in the package's README.md")
    g.add_argument("--test-image", type=Path, metavar="FILE",
                   help="a raw (C, H, W) image (.npy or an image file) for the test "
                        "tensors and the cover (default: a synthetic image of --size px)")
    onnx = g.add_mutually_exclusive_group()
    onnx.add_argument("--onnx", dest="onnx", action="store_true", default=None,
                      help="require ONNX weights (needs onnx and onnxscript); by default "
                           "they are added when those are installed and the model exports")
    onnx.add_argument("--no-onnx", dest="onnx", action="store_false",
                      help="do not add ONNX weights")


def register(sub) -> None:
    from ._checks import add_overwrite_argument, positive_int
    from .model_args import MODEL_HELP, add_trust_argument

    p = sub.add_parser("export-model",
                       help="export a model as a torch.export program (.pt2) or a "
                            "bioimage.io package",
                       description="Write a model (a DCMIX bundle, or any model this tool "
                                   "loads) as a torch.export program (.pt2) that other "
                                   "torch tools load without this package; names and "
                                   "normalisation travel inside the archive.")
    p.add_argument("model", type=Path, help=MODEL_HELP)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="the file to write: .pt2 (torch.export) or .zip (bioimage.io)")
    p.add_argument("--format", choices=("pt2", "bioimageio"),
                   help="output format (default: from the output's suffix)")
    p.add_argument("--size", type=positive_int, default=64,
                   help="image side of the example used to trace the model and, for "
                        "bioimage.io, of the synthetic test image (default 64)")
    add_trust_argument(p)
    add_overwrite_argument(p, "exported model")
    _add_bioimageio_arguments(p)
    p.set_defaults(func=run)
