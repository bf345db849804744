"""``napari-attribution train``: images + labels -> model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.channels.training import TrainConfig, train_dcmix
from ..core.data.dataset import ImageSet
from ..core.data.normalization import MODES
from ..core.runtime.errors import UsageError
from ..core.study.splits import SPLIT_UNITS
from ..io.plate.config import DEFAULT_MAX_OBJECTS, SamplingConfig
from ..io.plate.sampling import sampling_summary
from ._checks import (
    add_overwrite_argument,
    learning_rate,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    probability,
)
from .cmd_batch import add_plate_arguments, open_plate
from .progress_bar import run_with_bar

SAMPLES = ("cells", "multi-snr")


def load_sample(name: str, seed: int = 0) -> ImageSet:
    from ..core.data.synthetic import make_cell_phenotype, make_multi_snr

    if name == "cells":
        return make_cell_phenotype(n_images=400, size=48, seed=seed)
    if name == "multi-snr":
        return make_multi_snr(n_images=600, size=32, seed=seed)
    raise UsageError(f"unknown sample {name!r}; choose one of {SAMPLES}")


def load_training_data(args: argparse.Namespace) -> ImageSet:
    from ..io.training_data import load_npz, load_table

    given = [x for x in (args.sample, args.npz, args.table, args.plate) if x]
    if len(given) != 1:
        raise UsageError("give exactly one of --sample, --npz, --table or --plate")
    if args.sample:
        return load_sample(args.sample, args.seed)
    if args.plate:
        return load_plate_crops(args)
    names = args.channel_names.split(",") if args.channel_names else None
    if args.npz:
        data = load_npz(args.npz)
        if names:
            data.channel_names = names
    else:
        data = load_table(args.table, names)
    return declare_input_normalization(data, args.input_normalization,
                                       str(args.npz or args.table))


def declare_input_normalization(data: ImageSet, declared: str | None, source: str) -> ImageSet:
    """Record what was already applied to npz/table images (``--input-normalization`` or
    the npz key ``normalization``); undeclared images are taken as raw, with a warning."""
    from ..core.data.normalization import canonical_mode

    if declared is not None:
        data.metadata["normalization"] = {"mode": canonical_mode(declared, "field"),
                                          "declared_by": "--input-normalization"}
    elif data.metadata.get("normalization") is None:
        data.metadata["normalization"] = {"mode": "none", "declared_by": "assumed"}
        data.metadata.setdefault("warnings", []).append(
            f"{source} does not say how its images were normalised (npz key "
            "'normalization' or --input-normalization); taken as raw intensities. If they "
            "were normalised upstream, inference on raw images will not match training.")
    return data


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    """The :class:`SamplingConfig` the plate options of ``train`` describe."""
    from ..io.plate import BBBC013_CLASSES

    plate_norm = "per_field" if args.normalization in ("auto", "per_field") else "none"
    bbbc013_classes = args.bbbc013 and not (args.objects or args.label_rule)
    return SamplingConfig(
        crops=args.crops, crop_size=args.crop_size, per_image=args.per_image,
        downsample=args.downsample, nuclei_channel=args.nuclei_channel, masks=False,
        seed=args.seed, normalization=plate_norm,
        class_names=tuple(BBBC013_CLASSES) if bbbc013_classes else None,
        labels_pattern=args.labels_pattern, objects_columns=args.objects_columns,
        label_rule=args.label_rule, split_by=args.split_by,
        val_wells=tuple(args.val_wells.split(",")) if args.val_wells else None,
        max_objects=args.max_objects or None, time_budget=args.time_budget)


def load_plate_crops(args: argparse.Namespace) -> ImageSet:
    """Crops of the plate named by ``--plate``: labels from the plate map, an object table
    or a marker rule; groups = the held-out unit (``--split-by``)."""
    plate = open_plate(args)
    if plate.plate_map is None and not (args.objects or args.label_rule):
        raise UsageError("training on a plate needs labels: give --plate-map (a CSV with "
                         "well and class columns), --objects TABLE.csv, --label-rule "
                         "'CHANNEL>otsu' or --bbbc013")
    size = f"{args.crop_size} px" if args.crop_size else "auto-sized"
    print(f"sampling {args.crops} crops ({size}) from {args.plate} ...")
    data = plate.sample(sampling_config(args), labels=args.labels, objects=args.objects)
    md = data.metadata
    counts = ", ".join(f"{n} {int((data.labels == i).sum())}"
                       for i, n in enumerate(data.class_names))
    print(sampling_summary(md))
    print(f"{len(data)} crops of {md['crop_size']} px at {md['downsample']}x "
          f"({md['geometry']}); classes: {counts}; normalisation {md['normalization']['mode']}"
          f"; held out by {md['split_by']}")
    for f in md.get("findings", []):
        if not f.is_warning:  # cautions are printed with the warnings
            print(f"note ({f.code}): {f.message}")
    return data


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
    src.add_argument("--input-normalization", choices=MODES, help="what was already applied "
                     "to the --npz/--table images (stored in the bundle; default: the npz key "
                     "'normalization', else raw = none, with a warning)")
    add_plate_arguments(p)
    c = p.add_argument_group("plate crops (with --plate)")
    c.add_argument("--crops", choices=("nuclei", "grid", "random"), default="nuclei",
                   help="centred on nuclei segmented on --nuclei-channel, tiles, or random")
    c.add_argument("--crop-size", type=positive_int, help="crop side, after --downsample "
                   "(default: about 6 median nucleus diameters; given alone, --downsample "
                   "is 1)")
    c.add_argument("--downsample", type=positive_int, help="block-average fields first "
                   "(default: to a median nucleus of about 8 px)")
    c.add_argument("--per-image", type=positive_int, default=None, help="cap on crops per "
                   "field of view (default: every object, up to --max-objects; ignored with "
                   "--objects or --label-rule)")
    c.add_argument("--max-objects", type=non_negative_int, default=DEFAULT_MAX_OBJECTS,
                   help="object budget: use every segmented object up to this many crops "
                   "in all, beyond it a uniform random sample (default "
                   f"{DEFAULT_MAX_OBJECTS}; 0: no limit)")
    c.add_argument("--time-budget", type=positive_float, help="seconds of reading and "
                   "cutting crops; fields are read round-robin over wells and those not "
                   "reached in time are left out (default: no limit)")
    c.add_argument("--nuclei-channel", help="channel to segment nuclei on (default: the one "
                   "named like a nuclear stain: DNA, Hoechst, DAPI, DRAQ5, SiR-DNA, H2B, "
                   "nuclei ...; else the last, with a 'segmentation' caution)")
    c.add_argument("--labels", type=Path, help="folder of nuclei label images (cellpose, "
                   "stardist, napari) to use instead of the built-in Otsu segmentation")
    c.add_argument("--labels-pattern", help="filename regex of the label images, groups "
                   "well (or row, col) and site (default: --pattern)")
    o = p.add_argument_group("labels and hold-out (with --plate)")
    o.add_argument("--objects", type=Path, help="per-object labels: CSV with well, site (or "
                   "file), x, y, label; CellProfiler columns (Metadata_Well, Metadata_Site, "
                   "Location_Center_X/Y) are recognised. Crops centre on the objects")
    o.add_argument("--objects-columns", help="column mapping for --objects, e.g. "
                   "well=Metadata_Well,site=Metadata_Site,x=Location_Center_X,"
                   "y=Location_Center_Y,label=Class")
    o.add_argument("--label-rule", help="label each object by a marker, e.g. 'PH3>otsu' "
                   "(positive when its mean in PH3 exceeds the Otsu threshold of all "
                   "objects' means) or 'PH3>250'; on segmented nuclei or --objects")
    o.add_argument("--split-by", choices=("auto", *SPLIT_UNITS), default="auto",
                   help="unit held out for validation (default auto: well when every class "
                   "has two wells, else field or half-field, with a warning)")
    o.add_argument("--val-wells", help="comma-separated validation wells, e.g. A01,B02")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=d.epochs,
                   help=f"training epochs (default {d.epochs})")
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help=f"images per training step (default {d.batch_size})")
    t.add_argument("--lr", type=learning_rate, default=d.lr, help="network learning rate")
    t.add_argument("--mixing-lr", type=learning_rate, default=d.mixing_lr,
                   help="learning rate of the mixing weights")
    t.add_argument("--backbone", choices=("small", "resnet18"), default=d.backbone,
                   help="CNN after the mixing layer (small: fast on a CPU)")
    t.add_argument("--heads", type=positive_int, default=d.n_heads, help="mixing heads (K)")
    t.add_argument("--entropy-weight", type=non_negative_float, default=d.entropy_weight,
                   help="sparsity prior on the mixing weights (see docs/channel_importance.md)")
    t.add_argument("--channel-dropout", type=probability, default=d.channel_dropout,
                   help="probability of replacing a channel by its mean during training")
    t.add_argument("--normalization", type=_norm_mode, default=d.normalization,
                   metavar="{auto,per_field,per_crop,per_dataset,none}",
                   help="auto (default): per_field for --plate crops (each field, per "
                   "channel), as declared for --npz/--table, else per_dataset")
    t.add_argument("--val-fraction", type=open_fraction, default=d.val_fraction,
                   help="share of the groups (wells, fields) held out for validation")
    t.add_argument("--class-balance", choices=("sampling", "weights", "none"),
                   default=d.class_balance,
                   help="equalise the classes by balanced sampling (default) or loss "
                        "weights; 'none' trains on the raw proportions")
    t.add_argument("--no-augment", action="store_true",
                   help="no flips, rotations or intensity jitter during training")
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the split, the initial weights and the sampling")
    t.add_argument("--cv", type=_folds, default="auto", metavar="{auto,1,K}",
                   help="cross-validation over groups: K folds, every object held out once "
                   "(accuracy pooled, importance as mean and range over folds); 1: one "
                   "split; auto (default): 5 folds when the single split would hold out "
                   "fewer than 10 objects of some class")


def _folds(text: str) -> str | int:
    if text == "auto":
        return text
    k = positive_int(text)
    return k


def _norm_mode(text: str) -> str:
    """A --normalization value; old names map to new ones with a note on stderr."""
    import sys

    from ..core.data.normalization import canonical_mode

    if text == "auto":
        return text
    new = canonical_mode(text, warn=False)
    if new != text:
        print(f"note: --normalization {text} is deprecated; using {new}", file=sys.stderr)
    return new


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, mixing_lr=args.mixing_lr,
        backbone=args.backbone, n_heads=args.heads, entropy_weight=args.entropy_weight,
        channel_dropout=args.channel_dropout, normalization=args.normalization,
        val_fraction=args.val_fraction, augment=not args.no_augment, device=args.device,
        seed=args.seed, class_balance=args.class_balance,
        cv=getattr(args, "cv", 1) if getattr(args, "cv", 1) != "auto" else 1)


def bundle_path(output: Path) -> Path:
    """Where the bundle for ``-o output`` goes (``.safetensors`` added when missing; a
    folder or device is returned as is, for the output check to refuse)."""
    if output.suffix == ".safetensors" or (output.exists() and not output.is_file()):
        return output
    return output.with_name(output.name + ".safetensors")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..core.channels.repeats import retrain_check, train_repeats
    from ..core.channels.training import auto_folds
    from ..core.study.classification import accuracy_line
    from ..core.study.design import check_study_design
    from ..core.study.findings import data_findings
    from ..io.atomic import check_output
    from ..io.bundle import save_training_result
    from .cmd_channels import format_checks, format_findings

    check_output(bundle_path(args.output), args.overwrite, "model bundle")  # before training
    data = load_training_data(args)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1; got {args.repeats}")
    early = data_findings(data.metadata) + check_study_design(data).findings
    if any(f.is_warning for f in early):  # before a long training, so it can be stopped
        print("before training: " + format_findings(early))
    cfg = config_from_args(args)
    if args.cv == "auto" and args.repeats == 1:
        k = auto_folds(data, cfg)
        if k > 1:
            print(f"few objects: the single split would hold out fewer than 10 of some "
                  f"class, so cross-validating over {k} folds of whole groups (--cv 1 to "
                  "train once)")
            cfg = replace(cfg, cv=k)
    gen = train_dcmix(data, cfg) if args.repeats == 1 else train_repeats(data, cfg,
                                                                          args.repeats)
    result = run_with_bar(gen, quiet=args.quiet)
    if args.retrain_check:
        result.retrain_check = run_with_bar(retrain_check(data, cfg), quiet=args.quiet)
    path = save_training_result(args.output, result, overwrite=args.overwrite)
    scope = result.validation.get("scope", "validation")
    print(f"{scope}: {accuracy_line(result.validation)}, after {len(result.history)} "
          f"epochs ({result.seconds:.1f} s); bundle written to {path}")
    print()
    print(format_checks(result.findings, result.checks(), result.importance))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a DCMIX classifier and save a model bundle",
                       description="Train a DCMIX classifier (channel mixing + CNN) and save "
                                   "a model bundle with its channel importance.")
    add_data_arguments(p)
    add_training_arguments(p)
    p.add_argument("--repeats", type=int, default=1, help="train N times (seeds seed.."
                   "seed+N-1, each with its own split) and store the spread of the channel "
                   "importance; the first model is saved")
    p.add_argument("--retrain-check", action="store_true",
                   help="also retrain on each channel alone and without each channel "
                        "(2C+1 extra trainings; the time spent is reported)")
    p.add_argument("-o", "--output", type=Path, default=Path("model.safetensors"),
                   help="where to write the model bundle (default model.safetensors)")
    add_overwrite_argument(p, "model bundle")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
