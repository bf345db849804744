"""Large fields: peak memory of opening and batch-processing a 20000x20000 2-channel TIFF.

    OMP_NUM_THREADS=1 python benchmarks/big_images.py [--quick] [--json PATH]

Writes a 2-channel uint16 tiled TIFF (``--side`` x ``--side``, default 20000: 1.6 GB of
pixels; ``--quick``: 4096) into a temporary folder: 512x512 tiles of blobs on noise,
uncompressed. Each step then runs in a fresh child process, which reports its peak
resident memory (``ru_maxrss``), its resident memory right after its imports (current,
not peak) and its time:

* ``reader lazy``: ``read_array(path, lazy=True)`` (what plates and batch call) and a
  512x512 view of the last corner;
* ``reader eager``: ``read_array(path)``, the whole field in memory (the contrast);
* ``napari layers``: the plugin reader (``read_layers``: a lazy pyramid for sides over
  4096), a ``napari.layers.Image`` per channel (contrast limits given; napari loads the
  level it shows), and a 512x512 full-resolution view of each; ``napari layers no
  cache`` does the same with napari's opportunistic dask chunk cache off
  (``napari.utils.resize_dask_cache(0)``; by default it may keep up to a quarter of
  the machine's memory of chunks it has read);
* ``batch regions``: ``run_batch`` on that one field with a tiny DCMIX model (width 8,
  ``per_field`` normalisation), ``--method`` (PCIM with ``--steps`` steps), ``input_size``
  256, ``--batch-size`` tiles per model call (default 4), regions of ``--region-size``
  (default 1024), ``--downsample`` (default 1), on one in-process worker, region by
  region (``regions=True``: the automatic threshold would pick regions for the full
  field at full resolution, not for the quick one);
* ``batch whole`` (``--quick`` only): the same run with ``regions="never"``, the
  in-memory path, for the ratio.

Prints a table; ``--json`` writes the figures (default benchmarks/results/big_images.json).
Target: under 1 GB peak resident memory for the lazy reader, the napari layers and the
batch run on the full 20000x20000 field.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = 512

CHILD = r"""
import json, resource, sys, time
step, path, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def current():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
import numpy as np
if step.startswith("reader"):
    from napari_attribution.io.readers import read_array
    base = current(); t0 = time.perf_counter()
    arr = read_array(path, lazy=step == "reader lazy")
    view = float(np.asarray(arr[:, -512:, -512:]).mean())
    info = {"type": type(arr).__name__}
elif step.startswith("napari layers"):
    import napari.layers
    if step.endswith("no cache"):  # napari's opportunistic dask chunk cache off
        from napari.utils import resize_dask_cache
        resize_dask_cache(0)
    from napari_attribution._reader import read_layers
    base = current(); t0 = time.perf_counter()
    layers = read_layers(path)
    made = [napari.layers.Image(d, contrast_limits=(0, 4095), **{k: v for k, v in kw.items()
            if k in ("name", "colormap", "blending", "scale", "multiscale")})
            for d, kw, _ in layers]
    views = [float(np.asarray((m.data[0] if m.multiscale else m.data)[:512, :512]).mean())
             for m in made]
    info = {"layers": len(made), "type": type(made[0].data).__name__,
            "levels": len(made[0].data) if made[0].multiscale else 1}
else:
    from napari_attribution.batch import BatchConfig, records_from_plate, run_batch
    from napari_attribution.core.runtime.progress import run_generator
    from napari_attribution.io.plate import Plate
    import torch
    base = current(); t0 = time.perf_counter()
    plate = Plate.scan(extra["folder"], r"(?P<well>[A-H]\d{2})_s(?P<site>\d+)\.tif$")
    method = extra["method"]
    config = BatchConfig(methods=[method],
                         params={"pcim": {"steps": extra["steps"]}} if method == "pcim" else {},
                         input_size=256, device="cpu", batch_size=extra["batch_size"],
                         regions=extra["regions"], region_size=extra["region_size"],
                         downsample=extra["downsample"])
    result = run_generator(run_batch(records_from_plate(plate), extra["bundle"],
                                     extra["out"], config, n_workers=1, processes=False))
    store = result.open()
    maps = store.maps(method)
    corner = np.asarray(maps.field(0)[:, -256:, -256:])
    info = {"done": bool(store.done_mask().all()), "finite_corner": bool(np.isfinite(corner).all()),
            "probabilities": store.probabilities()[0].round(4).tolist(),
            "regions": store.meta["payload_summary"].get("regions")}
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_after_imports_mb": base,
                  "peak_rss_mb": rss(), **info}))
"""


def write_field(path: Path, side: int, seed: int = 0) -> None:
    """A 2-channel uint16 tiled TIFF written tile by tile (never whole in memory)."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE]
    bank = []
    for _ in range(16):
        t = rng.normal(300, 30, (TILE, TILE))
        for cy, cx in rng.integers(20, TILE - 20, (12, 2)):
            t += 2000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60)
        bank.append(np.clip(t, 0, 4095).astype(np.uint16))
    n = (side + TILE - 1) // TILE
    tiles = (bank[(i * 7 + c) % 16] for c in range(2) for i in range(n * n))
    tifffile.imwrite(path, tiles, shape=(2, side, side), dtype=np.uint16,
                     tile=(TILE, TILE), metadata={"axes": "CYX"})


def tiny_bundle(path: Path) -> Path:
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(0)
    model = DCMIXClassifier(ModelConfig(2, 2, width=8)).eval()
    return Path(save_bundle(path, model, ["dna", "gfp"], ["neg", "pos"],
                            PercentileNormalizer(mode="per_field")))


def child(step: str, path: Path, extra: dict) -> dict:
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin",
           "HOME": os.environ.get("HOME", "/tmp")}
    res = subprocess.run([sys.executable, "-c", CHILD, step, str(path), json.dumps(extra)],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{step} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 4096x4096 field")
    ap.add_argument("--side", type=int, help="field side in pixels (default 20000)")
    ap.add_argument("--steps", type=int, default=2, help="PCIM steps (default 2)")
    ap.add_argument("--method", default="pcim", help="attribution method (default pcim)")
    ap.add_argument("--region-size", type=int, default=1024, help="batch region side")
    ap.add_argument("--batch-size", type=int, default=4, help="tiles per model call")
    ap.add_argument("--downsample", type=int, default=1,
                    help="batch: block-average the field by this factor (read at full "
                         "resolution region by region; the model sees the smaller field)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                    "big_images.json")
    ap.add_argument("--only", action="append", metavar="STEP",
                    help="run only this step (repeatable); its rows replace those of the "
                         "same step in an existing --json file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    side = args.side or (4096 if args.quick else 20000)
    steps = ["reader lazy", "reader eager", "napari layers", "napari layers no cache",
             "batch regions"]
    if args.quick:
        steps.append("batch whole")
    if args.only:
        steps = [s for s in steps if s in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "plate"
        folder.mkdir()
        field = folder / "A01_s1.tif"
        t0 = time.perf_counter()
        write_field(field, side)
        print(f"wrote {field.name}: 2 x {side} x {side} uint16, "
              f"{field.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
        bundle = tiny_bundle(Path(tmp) / "tiny.safetensors")
        for step in steps:
            regions = {"batch regions": True,
                       "batch whole": False}.get(step)
            extra = {"folder": str(folder), "bundle": str(bundle), "steps": args.steps,
                     "method": args.method, "region_size": args.region_size,
                     "batch_size": args.batch_size, "downsample": args.downsample,
                     "regions": regions, "out": str(Path(tmp) / f"{step[-5:]}.zarr")}
            out = child(step, field, extra)
            rows.append({"step": step, "side": side, **out})
            print(f"  {step:<22} peak {out['peak_rss_mb']:7.0f} MB "
                  f"(after imports {out['rss_after_imports_mb']:5.0f} MB) "
                  f"{out['seconds']:8.1f} s", flush=True)
    print("\n| step | field | peak RSS (MB) | RSS after imports (MB) | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | 2 x {side}^2 uint16 | {r['peak_rss_mb']:.0f} | "
              f"{r['rss_after_imports_mb']:.0f} | {r['seconds']:.1f} |")
    if args.only and args.json.is_file():  # keep the other steps' rows
        old = json.loads(args.json.read_text())
        rows = [r for r in old.get("rows", []) if r["step"] not in args.only] + rows
    report = {"python": platform.python_version(), "side": side, "method": args.method,
              "pcim_steps": args.steps, "region_size": args.region_size,
              "batch_size": args.batch_size, "downsample": args.downsample,
              "load": os.getloadavg(), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
