"""``napari-attribution explain``: model + image file(s) -> attribution OME-TIFF(s)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.attribution.explain import explain_classifier
from ..core.models.inference import ModelScale, expand, shrink
from ..core.runtime.errors import InputError, UsageError
from ._checks import (
    add_missing_chunks_argument,
    add_overwrite_argument,
    positive_int,
    printing_missing_chunks,
)
from .model_args import add_model_arguments, load_from_args
from .progress_bar import run_with_bar


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when possible (numbers, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"method parameter {item!r} must look like key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def read_images(path: Path, fill_missing: bool | None = None) -> np.ndarray:
    """One image file as (N, C, H, W): any format the readers take (TIFF, OME-Zarr, ...)
    as (C, H, W), or ``.npy`` (C, H, W)/(N, C, H, W). ``fill_missing``: see
    :func:`~napari_attribution.io.readers.read_image`."""
    if path.suffix == ".npy":
        if not path.exists():
            raise InputError(f"image file not found: {path}")
        arr = np.load(path, allow_pickle=False)
    else:
        from ..io.readers import read_image

        arr = read_image(path, fill_missing=fill_missing).as_chw()
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"{path}: expected an image (C, H, W) or a stack (N, C, H, W); got "
                         f"shape {arr.shape}")
    return arr


def output_path(image: Path, output: Path | None, method: str, n_inputs: int) -> Path:
    if output is None:
        return image.with_name(f"{image.name.split('.')[0]}.{method}.ome.tif")
    if n_inputs > 1 or output.is_dir():
        return output / f"{image.name.split('.')[0]}.{method}.ome.tif"
    return output


def evidence_warnings(result) -> list[str]:
    """Plain lines for the result's findings: the evidence check's ('none' is a caution,
    'undetermined' a note: see core.attribution.evidence) and the inputs' (field-scale,
    channel-map-suspect)."""
    return [f"{'warning' if f.is_warning else 'note'} ({f.code}): {f.message}"
            for f in result.all_findings()]


def run(args: argparse.Namespace) -> int:
    from ..core.attribution.explain import check_method_params
    from ..io.atomic import check_output
    from ..io.writers import attribution_tiff_path, write_attribution_tiff

    params = parse_params(args.param)
    check_method_params(args.method, params)
    outputs = [attribution_tiff_path(output_path(image, args.output, args.method,
                                                 len(args.images)))
               for image in args.images]
    for out in outputs:  # refuse before any work, not after the first image
        check_output(out, args.overwrite, "attribution maps")
    clf = load_from_args(args)
    target = clf.resolve_targets(args.target)
    contrast = None
    if args.contrast is not None:
        contrast = clf.resolve_targets(args.contrast)
        if contrast is None:
            raise UsageError("--contrast needs a class (index or name), not 'predicted'")
        contrast = int(contrast)
    factor = args.downsample or ModelScale.from_provenance(clf.provenance).downsample
    if factor > 1:
        print(f"images are shrunk {factor}x before explaining, as the model's training "
              "images were (--downsample 1 to override); maps are written at full size")
    fill = True if args.allow_missing_chunks else None  # None: the environment decides
    for image, out_path in zip(args.images, outputs, strict=True):
        with printing_missing_chunks():
            raw = read_images(image, fill)
        clf.check_channels(raw.shape[1], f"{image}")
        result = run_with_bar(explain_classifier(clf, shrink(raw, factor), target,
                                                     method=args.method,
                                          per_channel=args.per_channel, device=args.device,
                                          batch_size=args.batch_size,
                                          input_size=args.input_size,
                                          contrast=contrast, tiling=args.tiling,
                                          evidence=not args.no_evidence_check,
                                          **params), quiet=args.quiet)
        names = clf.channel_names if args.per_channel else None
        prov = result.provenance()
        prov["image"] = str(image)
        prov["downsample"] = int(factor)
        maps = expand(result.maps, factor, raw.shape[-2:])
        maps = maps[0] if maps.shape[0] == 1 else maps
        out = write_attribution_tiff(out_path, maps, channel_names=names, provenance=prov,
                                     name=f"{args.method} attribution",
                                     overwrite=args.overwrite)
        what = ", ".join(prov["target_names"])
        if contrast is not None:
            what += f" vs {clf.class_names[contrast]}"
        print(f"{image}: {args.method} map for class {what} "
              f"(p={result.probabilities[0, result.targets[0]]:.3f}) -> {out}")
        for line in evidence_warnings(result) + [f"warning: {w}" for w in result.warnings]:
            print(f"{image}: {line}")
        if (result.evidence or {}).get("note"):
            print(f"{image}: evidence check {result.evidence['note']}")
    return 0


def register(sub) -> None:
    from ..core.attribution.explain import available_methods
    from ..core.attribution.options import TILINGS

    p = sub.add_parser("explain", help="pixel attribution maps for image files",
                       description="Explain a classifier's decision on image files: one "
                                   "attribution OME-TIFF per image, with provenance "
                                   "(method, parameters, target, model hash).")
    add_model_arguments(p)
    p.add_argument("images", type=Path, nargs="+", help="TIFF (C,H,W) or .npy images")
    p.add_argument("-m", "--method", choices=available_methods(), default="pcim",
                   help="attribution method (default pcim; auto: gradient PCIM, or the "
                        "forward-only one when the model has no usable gradients)")
    p.add_argument("-t", "--target", help="class index or name (default: predicted class)")
    p.add_argument("--contrast", metavar="CLASS",
                   help="explain the target rather than this class (index or name): the "
                        "map follows the logit difference target - contrast")
    p.add_argument("--no-evidence-check", action="store_true",
                   help="skip the check whether the map localises evidence (its top pixels "
                        "matter more than random ones); it costs about 10 forward passes "
                        "per image")
    p.add_argument("--per-channel", action="store_true", help="one map per channel")
    p.add_argument("-o", "--output", type=Path,
                   help="output file (one image) or folder (default: beside the image)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method parameter, e.g. --param steps=12 (repeatable)")
    p.add_argument("--input-size", type=positive_int,
                   help="the model's input side in pixels; larger images are tiled")
    p.add_argument("--tiling", choices=TILINGS,
                   default="auto",
                   help="PCIM on images larger than the input: one map on one scale per "
                        "field (auto: in one pass when the model and memory allow), or "
                        "per_tile (each tile on its own scale; the old behaviour)")
    p.add_argument("--downsample", type=positive_int,
                   help="block-average images by this factor before explaining (default: "
                        "the factor the model's training images were shrunk by, recorded "
                        "in its bundle; 1 = raw pixels)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images or tiles per pass (halved automatically when out of memory)")
    add_missing_chunks_argument(p)
    add_overwrite_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
