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
Writes JSON to benchmarks/results/reader_limits.json and prints the figures.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=50000)
    ap.add_argument("--lazy-side", type=int, default=20000)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from napari_attribution.core.runtime.errors import InputError
    from napari_attribution.io.readers import read_image

    out: dict = {"python": platform.python_version()}
    with tempfile.TemporaryDirectory() as tmp:
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
