"""``napari-attribution train``: images + labels -> model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.data import ImageSet
from ..core.errors import InputError
from ..core.training import TrainConfig, train_dcmix
from ._checks import (
    add_overwrite_argument,
    learning_rate,
    non_negative_float,
    open_fraction,
    positive_int,
    probability,
)
from .cmd_batch import add_plate_arguments, open_plate
from .progress_bar import run_with_bar

SAMPLES = ("cells", "multi-snr")


def load_sample(name: str, seed: int = 0) -> ImageSet:
    from ..core.synthetic import make_cell_phenotype, make_multi_snr

    if name == "cells":
        return make_cell_phenotype(n_images=400, size=48, seed=seed)
    if name == "multi-snr":
        return make_multi_snr(n_images=600, size=32, seed=seed)
    raise InputError(f"unknown sample {name!r}; choose one of {SAMPLES}")


def load_training_data(args: argparse.Namespace) -> ImageSet:
    from ..io.training_data import load_npz, load_table

    given = [x for x in (args.sample, args.npz, args.table, args.plate) if x]
    if len(given) != 1:
        raise InputError("give exactly one of --sample, --npz, --table or --plate")
    if args.sample:
        return load_sample(args.sample, args.seed)
    if args.plate:
        return load_plate_crops(args)
    names = args.channel_names.split(",") if args.channel_names else None
    if args.npz:
        data = load_npz(args.npz)
        if names:
            data.channel_names = names
        return data
    return load_table(args.table, names)


def load_plate_crops(args: argparse.Namespace) -> ImageSet:
    """Crops of the labelled wells of the plate named by ``--plate`` (groups = wells)."""
    from ..io.plate import BBBC013_CLASSES

    plate = open_plate(args)
    if plate.plate_map is None:
        raise InputError("training on a plate needs labels: give --plate-map (a CSV with "
                         "well and class columns) or --bbbc013")
    print(f"sampling {args.crops} crops of {args.crop_size} px from {args.plate} ...")
    return plate.sample(crops=args.crops, crop_size=args.crop_size, per_image=args.per_image,
                        downsample=args.downsample, nuclei_channel=args.nuclei_channel,
                        masks=False, seed=args.seed,
                        class_names=BBBC013_CLASSES if args.bbbc013 else None)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("training data (one of)")
    src.add_argument("--sample", choices=SAMPLES, help="built-in synthetic data")
    src.add_argument("--npz", type=Path, help=".npz with images (N,C,H,W), labels[, "
                     "channel_names, class_names, groups]")
    src.add_argument("--table", type=Path, help="CSV with columns path,label[,group]: one "
                     "multichannel TIFF per row")
    src.add_argument("--plate", type=Path, help="plate folder: crops of its labelled wells, "
                     "split by well (with --pattern and --plate-map, or --bbbc013)")
    src.add_argument("--channel-names", help="comma-separated channel names (--npz, --table)")
    add_plate_arguments(p)
    c = p.add_argument_group("plate crops (with --plate)")
    c.add_argument("--crops", choices=("nuclei", "grid", "random"), default="nuclei",
                   help="centred on nuclei segmented on --nuclei-channel, tiles, or random")
    c.add_argument("--crop-size", type=positive_int, default=48,
                   help="crop side, after --downsample")
    c.add_argument("--downsample", type=positive_int, default=2,
                   help="block-average fields first")
    c.add_argument("--per-image", type=positive_int, default=48,
                   help="crops per field of view")
    c.add_argument("--nuclei-channel", help="channel to segment nuclei on (default: DNA if "
                   "present, else the last)")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=d.epochs)
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    t.add_argument("--lr", type=learning_rate, default=d.lr, help="network learning rate")
    t.add_argument("--mixing-lr", type=learning_rate, default=d.mixing_lr,
                   help="learning rate of the mixing weights")
    t.add_argument("--backbone", choices=("small", "resnet18"), default=d.backbone)
    t.add_argument("--heads", type=positive_int, default=d.n_heads, help="mixing heads (K)")
    t.add_argument("--entropy-weight", type=non_negative_float, default=d.entropy_weight,
                   help="sparsity prior on the mixing weights (see docs/channel_importance.md)")
    t.add_argument("--channel-dropout", type=probability, default=d.channel_dropout,
                   help="probability of replacing a channel by its mean during training")
    t.add_argument("--normalization", choices=("per_dataset", "per_image", "none"),
                   default=d.normalization)
    t.add_argument("--val-fraction", type=open_fraction, default=d.val_fraction)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--seed", type=int, default=d.seed)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, mixing_lr=args.mixing_lr,
        backbone=args.backbone, n_heads=args.heads, entropy_weight=args.entropy_weight,
        channel_dropout=args.channel_dropout, normalization=args.normalization,
        val_fraction=args.val_fraction, augment=not args.no_augment, device=args.device,
        seed=args.seed)


def bundle_path(output: Path) -> Path:
    """Where the bundle for ``-o output`` goes (``.safetensors`` added when missing; a
    folder or device is returned as is, for the output check to refuse)."""
    if output.suffix == ".safetensors" or (output.exists() and not output.is_file()):
        return output
    return output.with_name(output.name + ".safetensors")


def run(args: argparse.Namespace) -> int:
    from ..io.atomic import check_output
    from ..io.bundle import save_training_result
    from .cmd_channels import format_importance

    check_output(bundle_path(args.output), args.overwrite, "model bundle")  # before training
    data = load_training_data(args)
    result = run_with_bar(train_dcmix(data, config_from_args(args)), quiet=args.quiet)
    path = save_training_result(args.output, result, overwrite=args.overwrite)
    print(f"validation accuracy {result.val_accuracy:.3f} after {len(result.history)} epochs "
          f"({result.seconds:.1f} s); bundle written to {path}")
    if result.importance is not None:
        print(format_importance(result.importance, "text"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a DCMIX classifier and save a model bundle",
                       description="Train a DCMIX classifier (channel mixing + CNN) and save "
                                   "a model bundle with its channel importance.")
    add_data_arguments(p)
    add_training_arguments(p)
    p.add_argument("-o", "--output", type=Path, default=Path("model.safetensors"))
    add_overwrite_argument(p, "model bundle")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
