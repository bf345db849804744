"""``napari-attribution explain``: model + image file(s) -> attribution OME-TIFF(s)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ._checks import add_overwrite_argument, positive_int
from .progress_bar import run_with_bar


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when possible (numbers, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"method parameter {item!r} must look like key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def read_images(path: Path) -> np.ndarray:
    """One image file as (N, C, H, W): TIFF (C, H, W) or ``.npy`` (C, H, W)/(N, C, H, W)."""
    if path.suffix == ".npy":
        if not path.exists():
            raise InputError(f"image file not found: {path}")
        arr = np.load(path, allow_pickle=False)
    else:
        from ..io.readers import read_image

        arr = read_image(path).as_chw()
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"{path}: expected an image (C, H, W) or a stack (N, C, H, W); got "
                         f"shape {arr.shape}")
    return arr


def normalise(images: np.ndarray, info: dict, mode: str) -> np.ndarray:
    """Bundles use their stored normalisation; TorchScript models ``--normalize``."""
    from ..core.normalization import PercentileNormalizer

    if info["kind"] == "bundle":
        return info["bundle"].prepare(images)
    if mode == "none":
        return images.astype(np.float32)
    return PercentileNormalizer(mode="per_image")(images)


def target_index(target: str | None, class_names: list[str] | None) -> int | None:
    """A class index from a number or, for bundles, a class name."""
    if target is None:
        return None
    if target.lstrip("-").isdigit():
        return int(target)
    if class_names and target in class_names:
        return class_names.index(target)
    raise InputError(f"unknown target class {target!r}; give an index"
                     + (f" or one of {class_names}" if class_names else ""))


def output_path(image: Path, output: Path | None, method: str, n_inputs: int) -> Path:
    if output is None:
        return image.with_name(f"{image.name.split('.')[0]}.{method}.ome.tif")
    if n_inputs > 1 or output.is_dir():
        return output / f"{image.name.split('.')[0]}.{method}.ome.tif"
    return output


def run(args: argparse.Namespace) -> int:
    from ..core.attribution import check_method_params, explain
    from ..io.atomic import check_output
    from ..io.models import load_model
    from ..io.writers import attribution_tiff_path, write_attribution_tiff

    params = parse_params(args.param)
    check_method_params(args.method, params)
    outputs = [attribution_tiff_path(output_path(image, args.output, args.method,
                                                 len(args.images)))
               for image in args.images]
    for out in outputs:  # refuse before any work, not after the first image
        check_output(out, args.overwrite, "attribution maps")
    model, info = load_model(args.model, device="cpu")
    class_names = info.get("class_names")
    tgt = target_index(args.target, class_names)
    for image, out_path in zip(args.images, outputs, strict=True):
        x = normalise(read_images(image), info, args.normalize)
        if info["kind"] == "bundle":
            info["bundle"].check_channels(x.shape[1], f"{image}")
        result = run_with_bar(explain(model, x, tgt, method=args.method,
                                      per_channel=args.per_channel, device=args.device,
                                      batch_size=args.batch_size, input_size=args.input_size,
                                      **params), quiet=args.quiet)
        names = info.get("channel_names") if args.per_channel else None
        if args.per_channel and names is None:
            names = [f"ch{i}" for i in range(x.shape[1])]
        prov = result.provenance()
        prov.update({
            "image": str(image), "model": info["path"], "model_kind": info["kind"],
            "model_sha256": info["sha256"], "channel_names": info.get("channel_names"),
            "normalization": info.get("normalization") or args.normalize,
            "class_names": class_names,
            "target_names": None if not class_names else
            [class_names[int(t)] for t in result.targets],
            "probabilities": result.probabilities.tolist(),
        })
        maps = result.maps[0] if result.maps.shape[0] == 1 else result.maps
        out = write_attribution_tiff(out_path, maps, channel_names=names, provenance=prov,
                                     name=f"{args.method} attribution",
                                     overwrite=args.overwrite)
        tnames = prov["target_names"] or [str(int(t)) for t in result.targets]
        print(f"{image}: {args.method} map for class {', '.join(tnames)} "
              f"(p={result.probabilities[0, result.targets[0]]:.3f}) -> {out}")
    return 0


def register(sub) -> None:
    from ..core.attribution import available_methods

    p = sub.add_parser("explain", help="pixel attribution maps for image files",
                       description="Explain a classifier's decision on image files: one "
                                   "attribution OME-TIFF per image, with provenance "
                                   "(method, parameters, target, model hash).")
    p.add_argument("model", type=Path, help="model bundle (.safetensors) or TorchScript file")
    p.add_argument("images", type=Path, nargs="+", help="TIFF (C,H,W) or .npy images")
    p.add_argument("-m", "--method", choices=available_methods(), default="pcim")
    p.add_argument("-t", "--target", help="class index or name (default: predicted class)")
    p.add_argument("--per-channel", action="store_true", help="one map per channel")
    p.add_argument("-o", "--output", type=Path,
                   help="output file (one image) or folder (default: beside the image)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method parameter, e.g. --param steps=12 (repeatable)")
    p.add_argument("--input-size", type=positive_int,
                   help="the model's input side in pixels; larger images are tiled")
    p.add_argument("--normalize", choices=("none", "per_image"), default="none",
                   help="normalisation for TorchScript models (bundles use their own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=32)
    add_overwrite_argument(p)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run)
