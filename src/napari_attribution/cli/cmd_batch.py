"""``napari-attribution batch``: a whole plate -> predictions, maps, tables (Dask, OME-Zarr)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.runtime.errors import UsageError
from ._checks import (
    add_missing_chunks_argument,
    missing_chunks_allowed,
    positive_int,
    printing_missing_chunks,
)
from .model_args import add_trust_argument
from .progress_bar import run_with_bar


def parse_method_params(items: list[str] | None, methods: list[str]) -> dict[str, dict]:
    """``METHOD:KEY=VALUE`` for one method, ``KEY=VALUE`` for every method run."""
    from .cmd_explain import parse_params

    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items or []:
        head, _, _ = item.partition("=")
        if ":" in head:
            method, rest = item.split(":", 1)
            if method not in out:
                raise UsageError(f"--param {item!r} names method {method!r}, which is not "
                                 f"run (--method {' --method '.join(methods) or 'NAME'})")
            out[method].update(parse_params([rest]))
        else:
            if not methods:
                raise UsageError(f"--param {item!r} given but no --method to apply it to")
            for m in methods:
                out[m].update(parse_params([item]))
    return {m: p for m, p in out.items() if p}


def parse_channels(text: str | None) -> dict[str, str] | list[str] | None:
    """``GFP=1,DNA=2`` (name=filename value) or ``dna,gfp`` (values used as names)."""
    if not text:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if all("=" in t for t in items):
        return {k.strip(): v.strip() for k, v in (t.split("=", 1) for t in items)}
    if any("=" in t for t in items):
        raise UsageError(f"--channels {text!r}: give all as NAME=VALUE or none")
    return items


def open_plate(args: argparse.Namespace):
    """The plate named on the command line (BBBC013 layout or a filename pattern)."""
    from ..io.plate import Plate, open_bbbc013

    if args.bbbc013:
        channels = parse_channels(args.channels)
        names = list(channels) if channels else ["GFP", "DNA"]
        return open_bbbc013(args.plate, names)
    if not args.pattern:
        raise UsageError("give --pattern (a filename regex with named groups well or "
                         "row/col, and site, channel) or --bbbc013")
    return Plate.scan(args.plate, args.pattern, parse_channels(args.channels),
                      plate_map=args.plate_map)


def add_plate_arguments(p: argparse.ArgumentParser) -> None:
    """How to read a plate folder: a filename pattern + plate map, or the BBBC013 layout."""
    d = p.add_argument_group("plate")
    d.add_argument("--pattern", help="filename regex with named groups well (or row, col), "
                   "site, channel, e.g. '(?P<well>[A-P]\\d+)_s(?P<site>\\d+)_(?P<channel>\\w+)"
                   "\\.tif'")
    d.add_argument("--bbbc013", action="store_true", help="the BBBC013 folder layout")
    d.add_argument("--channels", help="channels in the model's order: NAME=VALUE,... or "
                   "VALUE,... (default: all found, sorted)")
    d.add_argument("--plate-map", type=Path, help="plate-map CSV (well, class, dose, control)")


def run(args: argparse.Namespace) -> int:
    with missing_chunks_allowed(args.allow_missing_chunks), printing_missing_chunks():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..batch import BatchConfig, BatchPlan, ClusterOptions, records_from_plate, run_plan

    methods = list(dict.fromkeys(args.method or []))
    config = BatchConfig(methods=methods, params=parse_method_params(args.param, methods),
                         per_channel=args.per_channel, target=args.target,
                         input_size=args.input_size, device=args.device,
                         batch_size=args.batch_size, images_per_task=args.images_per_task,
                         downsample=args.downsample,
                         regions={"auto": None, "always": True, "never": False}[args.regions],
                         region_size=args.region_size, evidence=args.evidence_check)
    from ..io.ngff import is_ngff_plate

    if is_ngff_plate(args.plate):  # an OME-Zarr HCS plate: its fields are the images
        from ..batch.records import records_from_ngff_plate

        if args.pattern or args.bbbc013 or args.channels or args.plate_map:
            raise UsageError(f"{args.plate} is an OME-Zarr plate: its wells, fields and "
                             "channels come from its metadata; drop --pattern, --bbbc013, "
                             "--channels and --plate-map")
        records = records_from_ngff_plate(args.plate)
        channel_names = list(records[0].channel_names)
    else:
        plate = open_plate(args)
        records = records_from_plate(plate)
        channel_names = list(plate.channel_names)
    if not args.quiet:
        where = args.scheduler or (f"LocalCluster, {args.workers or 'auto'} worker(s), "
                                   f"{'threads' if args.threads else 'processes'}")
        print(f"batch: {len(records)} images from {args.plate} "
              f"(channels {', '.join(channel_names)}); methods: "
              f"{', '.join(['predict', *methods])}; on {where}")
    plan = BatchPlan.build(records, args.model, args.output, config, table=args.table,
                           trust=args.trust_model, overwrite=args.overwrite)
    cluster = ClusterOptions(scheduler=args.scheduler, n_workers=args.workers,
                             threads_per_worker=args.threads_per_worker,
                             processes=not args.threads)
    gen = run_plan(plan, cluster)
    try:
        result = run_with_bar(gen, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished images are kept in {args.output}; run the same "
              "command again to resume")
        raise
    print(f"{result.n_images} images: {result.n_computed} computed, {result.n_skipped} "
          f"already done ({result.seconds:.1f} s"
          + (f", {result.images_per_second:.2f} images/s on {result.n_workers} worker(s)"
             if result.n_computed else "") + ")")
    print(f"store: {result.store_path}\ntable: {result.table_path}\nwells: "
          f"{result.wells_path}")
    for line in result.warnings:
        print(f"warning: {line}")
    for f in result.findings:
        print(f"{'warning' if f.is_warning else 'note'} ({f.code}): {f.message}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="predictions and attribution maps for a whole plate (Dask, OME-Zarr)",
        description="Run a model bundle over every image of a plate on Dask (a local "
                    "cluster, or a running one with --scheduler); write class "
                    "probabilities, attribution maps and provenance to an OME-Zarr store "
                    "plus per-image and per-well CSV tables. Rerunning the same command "
                    "resumes; a store from a different run is refused unless --overwrite.")
    p.add_argument("plate", type=Path, help="plate folder (files per well/site/channel, in "
                   "any format the readers support), or an OME-Zarr HCS plate (.zarr)")
    p.add_argument("-m", "--model", type=Path, required=True,
                   help="model: bundle (.safetensors), exported program (.pt2), TorchScript "
                        "(legacy) or bioimage.io package")
    add_trust_argument(p, downloads=False)  # workers reload it: give a local package
    p.add_argument("-o", "--output", type=Path, required=True, help="result store (.zarr)")
    add_plate_arguments(p)
    w = p.add_argument_group("what to compute")
    w.add_argument("--method", action="append", metavar="NAME",
                   help="attribution method for maps (repeatable), e.g. pcim, saliency; "
                        "predictions are always computed")
    w.add_argument("--param", action="append", metavar="[METHOD:]KEY=VALUE",
                   help="method parameter, e.g. pcim:steps=20 (repeatable)")
    w.add_argument("--per-channel", action="store_true", help="one map per channel")
    w.add_argument("--target", help="class index or name to explain (default: predicted)")
    w.add_argument("--input-size", type=positive_int, help="model's training input size: larger "
                   "images are explained tile by tile")
    w.add_argument("--downsample", type=positive_int, help="block-average each field by this "
                   "factor first (default: as the model's training crops were, recorded in "
                   "the bundle by train --plate; else 1)")
    w.add_argument("--regions", choices=("auto", "always", "never"), default="auto",
                   help="compute each field region by region, opened lazily (auto: fields "
                        "over 256 MiB of float32 pixels, e.g. 8192x8192 with 2 channels)")
    w.add_argument("--evidence-check", action="store_true",
                   help="check that the first method's maps localise evidence (their top "
                        "pixels matter more than the same mask moved elsewhere): "
                        "'localised', 'none' or 'undetermined' per image, about 14 forward "
                        "passes per image or tile; not for fields computed by region")
    w.add_argument("--region-size", type=positive_int, default=1024,
                   help="side of a region in pixels (default 1024): peak memory grows "
                        "with its square")
    c = p.add_argument_group("execution")
    c.add_argument("--scheduler", help="address of a running Dask scheduler "
                   "(tcp://host:8786); default: start a LocalCluster")
    c.add_argument("--workers", type=positive_int,
                   help="LocalCluster workers (default: one per GPU, else one per core)")
    c.add_argument("--threads-per-worker", type=positive_int, default=1,
                   help="threads per worker, also torch/OpenMP threads (default 1)")
    c.add_argument("--threads", action="store_true",
                   help="LocalCluster workers as threads of this process, not processes")
    c.add_argument("--device", default="auto", help="auto (GPUs spread over workers), cpu, "
                   "cuda, cuda:N")
    c.add_argument("--batch-size", type=positive_int, default=16, help="images per model call")
    c.add_argument("--images-per-task", type=positive_int, help="images per Dask task "
                   "(default: batch size)")
    add_missing_chunks_argument(c)
    c.add_argument("--overwrite", action="store_true",
                   help="replace a result store written by a different run (refused while "
                        "another run holds the store)")
    p.add_argument("--table", type=Path, help="per-image CSV (default: OUTPUT with .csv; "
                   "per-well table beside it as *_wells.csv)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
