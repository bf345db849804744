"""Reader limits: refusing an oversized image, and opening a large one lazily.

    python benchmarks/reader_limits.py [--side 50000] [--lazy-side 20000]

1. A zlib-compressed TIFF declaring ``--side`` x ``--side`` uint16 pixels (all zero, a few
   MB on disk) is opened with ``read_image`` under the default 4 GiB limit: the time to
   the refusal is measured (before this check, tifffile allocated the whole image).
2. A 2-channel ``--lazy-side`` x ``--lazy-side`` uint16 OME-TIFF (tiled, zlib, a gradient
   pattern) is opened in a fresh process through the napari reader (``read_layers``,
   lazy) and through ``read_array(lazy=True)`` (the batch/plate call); a 512x512 view of
   each channel is computed. Peak resident memory (``ru_maxrss``) of that process is
   reported.
3. OME-Zarr (``--zarr-side``, default 40000): an image group declaring 1 x side x side
   uint16 with no chunk written (a few hundred bytes on disk) and one declaring 2 x side x
   side are opened with ``read_image``: time and traced peak memory to the refusal
   (missing chunks; the size limit); and the cost of the missing-chunk check on a whole
   2 x 8192 x 8192 image of 256 x 256 chunks, against reading it.
Writes JSON to benchmarks/results/reader_limits.json (``--zarr-only``: only part 3, to
reader_limits_zarr.json) and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = 1024


def write_declared(path: Path, side: int, channels: int = 1, pattern: bool = False) -> None:
    import tifffile

    n = (side + TILE - 1) // TILE
    ramp = (np.add.outer(np.arange(TILE), np.arange(TILE)) % 4096).astype(np.uint16)
    zero = np.zeros((TILE, TILE), np.uint16)
    tiles = ((ramp if pattern else zero) for _ in range(channels * n * n))
    shape = (channels, side, side) if channels > 1 else (side, side)
    tifffile.imwrite(path, tiles, shape=shape, dtype=np.uint16, tile=(TILE, TILE),
                     compression="zlib", ome=True,
                     metadata={"axes": "CYX" if channels > 1 else "YX"})


CHILD = r"""
import json, resource, sys, time
import numpy as np
from napari_attribution._reader import read_layers
from napari_attribution.io.readers import read_array
t0 = time.perf_counter()
layers = read_layers(sys.argv[1])
views = [np.asarray((d[0] if isinstance(d, list) else d)[:512, :512]).mean()
         for d, _, _ in layers]  # level 0 of a pyramid
t_napari = time.perf_counter() - t0
t0 = time.perf_counter()
arr = read_array(sys.argv[1], lazy=True)
view = np.asarray(arr[:, -512:, -512:]).mean()
t_array = time.perf_counter() - t0
print(json.dumps({"layers": len(layers), "layer_type": type(layers[0][0]).__name__,
                  "levels": len(layers[0][0]) if isinstance(layers[0][0], list) else 1,
                  "shape": list(arr.shape), "napari_seconds": t_napari,
                  "read_array_seconds": t_array,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _ngff(path: Path, shape: tuple, chunks: tuple, data=None):
    """A (C, Y, X) NGFF 0.4 image group; no chunk is written unless ``data``."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = group.create_array("0", shape=shape, chunks=chunks, dtype="uint16")
    if data is not None:
        arr[:] = data
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}], "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}]}]
    return arr


def zarr_cases(tmp: Path, side: int) -> dict:
    """Part 3: OME-Zarr images declaring more than is on disk."""
    import tracemalloc

    from napari_attribution.core.runtime.errors import InputError
    from napari_attribution.io.ngff import missing_chunks
    from napari_attribution.io.readers import read_image

    out: dict = {}
    for name, channels in (("declared_1ch", 1), ("declared_2ch", 2)):
        path = tmp / f"{name}.ome.zarr"
        _ngff(path, (channels, side, side), (1, 1024, 1024))
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            read_image(path)
            message = "read (not refused)"
        except InputError as err:
            message = str(err)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = {"shape": [channels, side, side], "seconds": seconds,
                     "traced_peak_mb": peak / 1e6, "message": message}
        print(f"OME-Zarr {channels}x{side}x{side} declared: {seconds * 1000:.0f} ms, "
              f"{peak / 1e6:.1f} MB traced -> {message[:120]}")
    whole = tmp / "whole.ome.zarr"
    data = np.random.default_rng(0).integers(1, 4000, (2, 8192, 8192), dtype=np.uint16)
    arr = _ngff(whole, data.shape, (1, 256, 256), data)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        counted = missing_chunks(arr, whole / "0")
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    read_image(whole)
    read_seconds = time.perf_counter() - t0
    out["chunk_check"] = {"shape": list(data.shape), "chunks": counted[1],
                          "missing": counted[0], "check_seconds_median": sorted(times)[2],
                          "read_seconds": read_seconds}
    print(f"missing-chunk check of a whole 2x8192x8192 image ({counted[1]} chunks): "
          f"{sorted(times)[2] * 1000:.1f} ms (reading it: {read_seconds:.2f} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=50000)
    ap.add_argument("--lazy-side", type=int, default=20000)
    ap.add_argument("--zarr-side", type=int, default=40000)
    ap.add_argument("--zarr-only", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from napari_attribution.core.runtime.errors import InputError
    from napari_attribution.io.readers import read_image

    out: dict = {"python": platform.python_version()}
    if args.zarr_only:
        with tempfile.TemporaryDirectory() as tmp:
            out["zarr"] = zarr_cases(Path(tmp), args.zarr_side)
        dest = ROOT / "benchmarks" / "results" / "reader_limits_zarr.json"
        dest.write_text(json.dumps(out, indent=2) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out["zarr"] = zarr_cases(Path(tmp), args.zarr_side)
        big = Path(tmp) / "declared.tif"
        write_declared(big, args.side)
        t0 = time.perf_counter()
        try:
            read_image(big)
            message = "read (not refused)"
        except InputError as err:
            message = str(err)
        out["refusal"] = {"side": args.side, "file_mb": big.stat().st_size / 1e6,
                          "seconds": time.perf_counter() - t0, "message": message}
        print(f"{args.side}x{args.side} declared ({big.stat().st_size / 1e6:.1f} MB file): "
              f"{out['refusal']['seconds'] * 1000:.0f} ms -> {message}")
        lazy = Path(tmp) / "lazy.ome.tif"
        write_declared(lazy, args.lazy_side, channels=2, pattern=True)
        res = subprocess.run([sys.executable, "-c", CHILD, str(lazy)], capture_output=True,
                             text=True, env={"PYTHONPATH": str(ROOT / "src"),
                                             "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
        if res.returncode:
            raise SystemExit(res.stderr)
        out["lazy"] = {"side": args.lazy_side, "channels": 2,
                       "file_mb": lazy.stat().st_size / 1e6,
                       **json.loads(res.stdout.strip().splitlines()[-1])}
        print(f"{args.lazy_side}x{args.lazy_side}x2 uint16 lazily: {out['lazy']}")
    dest = ROOT / "benchmarks" / "results" / "reader_limits.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
