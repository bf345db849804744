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
        from ..io.bioimageio import export_bioimageio

        out = export_bioimageio(args.model, args.output, size=args.size,
                                overwrite=args.overwrite)
        print(f"{args.model} -> {out} (bioimage.io model package, validated by "
              "bioimageio.spec)")
        return 0
    from ..io.model_export import export_program

    out = export_program(args.model, args.output, size=args.size, trust=args.trust_model,
                         overwrite=args.overwrite, allow_download=args.allow_download)
    print(f"{args.model} -> {out} (torch.export program; channel and class names, "
          "normalisation and training scale recorded inside; loads without --trust-model)")
    return 0


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
                   help="image side of the example used to trace the model (default 64)")
    add_trust_argument(p)
    add_overwrite_argument(p, "exported model")
    p.set_defaults(func=run)
