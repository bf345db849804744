"""Batch scaling: images per second of ``run_batch`` with 1 and 2 Dask workers.

    python benchmarks/batch_scaling.py [--data ../shared/data/bbbc013] [--images 16]
                                       [--workers 1 2] [--method pcim] [--steps 3]

Each worker count gets a fresh LocalCluster of single-threaded worker processes (torch and
OpenMP pinned to one thread each). A warm-up run loads the model once on every worker;
the timed run then writes predictions and maps for ``--images`` full fields of view
(640x640 on BBBC013) to a fresh OME-Zarr store. Throughput = images / seconds from the
first task submitted to the last image stored; scaling efficiency = rate(n) / (n * rate(1)).
The model is a freshly initialised DCMIX classifier of width 16 (cost does not depend on
the weights).
Without BBBC013 a synthetic plate of the same size is written to a temporary folder.
Writes JSON to benchmarks/results/batch_scaling.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bbbc013"


def synthetic_plate(root: Path, n: int, size: int = 640):
    """``n`` two-channel fields of view as uint8 TIFFs, BBBC013's naming and size."""
    import tifffile

    from napari_attribution.io.plate import BBBC013_PATTERN, Plate

    rng = np.random.default_rng(0)
    for i in range(n):
        row, col = "ABCDEFGH"[i // 12], i % 12 + 1
        for ch in (1, 2):
            img = rng.integers(0, 255, (size, size), dtype=np.uint8)
            tifffile.imwrite(root / f"Channel{ch}-{i + 1:02d}-{row}-{col:02d}.tif", img)
    return Plate.scan(root, BBBC013_PATTERN, {"GFP": "1", "DNA": "2"})


def make_model(path: Path) -> Path:
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(0)
    model = DCMIXClassifier(ModelConfig(2, 2, width=16)).eval()
    return save_bundle(path, model, ["GFP", "DNA"], ["cytoplasmic GFP", "nuclear GFP"],
                       PercentileNormalizer(mode="per_image"))


def time_workers(n_workers: int, records, bundle: Path, work: Path, config) -> dict:
    from distributed import Client, LocalCluster

    from napari_attribution.batch import run_batch
    from napari_attribution.core.runtime.progress import run_generator

    per_task = config.images_per_task or config.batch_size
    t0 = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40,
                      env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as client:
        startup = time.perf_counter() - t0
        warm = records[-per_task * n_workers:]
        run_generator(run_batch(warm, bundle, work / f"warm{n_workers}.zarr", config,
                                client=client))
        result = run_generator(run_batch(records, bundle, work / f"run{n_workers}.zarr",
                                         config, client=client))
    return {"workers": n_workers, "images": result.n_computed,
            "seconds": round(result.compute_seconds, 3),
            "images_per_second": round(result.images_per_second, 4),
            "cluster_startup_s": round(startup, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--images", type=int, default=16, help="fields of view timed")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--method", default="pcim", help="attribution method ('none': "
                   "predictions only)")
    p.add_argument("--steps", type=int, default=3, help="PCIM steps")
    p.add_argument("--images-per-task", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    from napari_attribution.batch import BatchConfig, records_from_plate
    from napari_attribution.io.plate import open_bbbc013

    methods = [] if args.method == "none" else [args.method]
    params = {"pcim": {"steps": args.steps, "min_steps": args.steps}} \
        if args.method == "pcim" else {}
    config = BatchConfig(methods=methods, params=params, device="cpu",
                         batch_size=args.images_per_task,
                         images_per_task=args.images_per_task)
    load_before = list(os.getloadavg())  # other work on the machine skews the ratio
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if (args.data / "1049_Metadata.csv").exists():
            plate, dataset = open_bbbc013(args.data), f"BBBC013 ({args.data})"
        else:
            (work / "plate").mkdir()
            plate = synthetic_plate(work / "plate", args.images + 4)
            dataset = "synthetic plate (BBBC013 not found)"
        records = records_from_plate(plate)[:args.images]
        bundle = make_model(work / "model.safetensors")
        rows = [time_workers(n, records, bundle, work, config) for n in args.workers]
    base = rows[0]["images_per_second"] / rows[0]["workers"]
    for r in rows:
        r["efficiency"] = round(r["images_per_second"] / (r["workers"] * base), 3)
    shape = "640x640" if "BBBC013" in dataset else "640x640 synthetic"
    print(f"batch scaling: {dataset}, {len(records)} fields of view ({shape}, 2 channels), "
          f"predict + {args.method}" + (f" ({args.steps} steps)" if args.method == "pcim"
                                        else "") + f", {os.cpu_count()} CPU cores")
    print(f"{'workers':>7}  {'images':>6}  {'seconds':>8}  {'images/s':>9}  "
          f"{'efficiency':>10}  {'startup s':>9}")
    for r in rows:
        print(f"{r['workers']:>7}  {r['images']:>6}  {r['seconds']:>8.2f}  "
              f"{r['images_per_second']:>9.3f}  {100 * r['efficiency']:>9.0f}%  "
              f"{r['cluster_startup_s']:>9.2f}")
    report = {"benchmark": "batch_scaling", "dataset": dataset, "images": len(records),
              "method": args.method, "steps": args.steps,
              "images_per_task": args.images_per_task, "rows": rows,
              "load_before_after": [load_before, list(os.getloadavg())],
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": sys.version.split()[0]},
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "batch_scaling.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
