"""Whole fields: PCIM on 1024x1360 and 2048x2048 two-channel fields, old path vs new.

    OMP_NUM_THREADS=1 python benchmarks/whole_field.py [--quick] [--json PATH]
                                                       [--width 32] [--seed 0]
                                                       [--old-batches 1,4,32]

In one run and on one machine, for each field size:

* **old**: ``explain(..., tiling="per_tile", tile_overlap=64, batch_size=B)`` (main's
  behaviour before field PCIM: 256 px tiles overlapping 64 px, each tile optimised and
  normalised on its own, maps blended) for every B of ``--old-batches`` (default 1, 4
  and 32); speed-ups are against the **fastest** of them in the same run (issue 24: at
  batch 1 the old path was 2x faster than at 32, with a fifth of the memory);
* **new**: ``explain(...)`` with its defaults (``tiling="auto"``: one scale per field,
  overlap 16 px, background tiles skipped, batch size from memory, tiles fitted to the
  field because the model takes any input size (2048 px: 270 px tiles), channels-last
  on CPU; one pass is refused on CPU because the field does not fit the 768 MiB default
  budget).

Each run happens in a fresh child process (``OMP_NUM_THREADS`` as given, default 1) that
reports seconds per field (``explain`` only; wall clock, and the process's CPU time,
which other processes on a shared machine disturb less) and its peak resident memory
(``ru_maxrss``: the whole process, torch included; ``+work`` = above the RSS before the
run). The parent computes, from the maps:

* ``probe CV``: identical probe cells are placed on a lattice (some mid-tile, some across
  tile boundaries, some alone, some among other cells); the coefficient of variation of
  their mean map value (lower = values comparable across the field);
* ``empty+``: 99th percentile of the map on empty pixels (>= 24 px from any cell) divided
  by the 99th percentile on cell pixels (<= 0: no positive evidence on background);
* ``seam``: mean absolute jump of the map across the rows/columns where the path's tiles
  start or end, divided by the mean jump elsewhere (1 = no seams).

The model is a DCMIX classifier (small backbone, ``--width``) freshly initialised with
``--seed`` (cost does not depend on the weights; the comparability metrics compare the
two paths on the same weights). CUDA rows are filled when a GPU is present.
Writes ``benchmarks/results/whole_field.json`` (or ``--json``) and prints a table.
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
TILE, OLD_OVERLAP = 256, 64
PROBE_SPACING = 512


def make_field(h: int, w: int, seed: int = 0, sparse: bool = False):
    """Two-channel field (DNA, Marker) with random cells (~1 per 180x180 px; ``sparse``:
    only inside a few colonies covering about a third of the field) and identical probe
    cells on a lattice; returns field (2, H, W), cell mask, probe masks."""
    rng = np.random.default_rng(seed)
    allowed = np.ones((h, w), bool)
    if sparse:
        allowed[:] = False
        gy, gx = np.ogrid[:h, :w]
        while allowed.mean() < 0.33:
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            allowed |= np.hypot(gy - cy, gx - cx) < rng.uniform(0.1, 0.2) * max(h, w)
    x = rng.normal(0.05, 0.02, (2, h, w)).astype(np.float32)
    cells = np.zeros((h, w), bool)
    yy, xx = np.mgrid[-24:25, -24:25]
    d = np.hypot(yy, xx)
    nuc, cyto = d < 9, (d >= 9) & (d < 18)

    def stamp(cy, cx, m):
        sl = (slice(cy - 24, cy + 25), slice(cx - 24, cx + 25))
        x[0][sl] += 0.8 * nuc
        x[1][sl] += m * (0.9 * nuc + 0.35 * cyto)
        cells[sl] |= nuc | cyto

    probes = []
    k = 0
    for cy in range(160, h - 100, PROBE_SPACING // 2):
        for cx in range(160 + (k % 2) * (TILE // 2), w - 100, PROBE_SPACING):
            probes.append((cy, cx))
        k += 1
    taken = np.zeros((h, w), bool)
    for cy, cx in probes:
        taken[max(0, cy - 60):cy + 60, max(0, cx - 60):cx + 60] = True
    n_random = int(allowed.sum() / 180 ** 2)
    placed = 0
    for _ in range(20 * n_random):
        if placed >= n_random:
            break
        cy, cx = rng.integers(30, h - 30), rng.integers(30, w - 30)
        if not allowed[cy, cx] or taken[cy, cx] or cells[cy - 20:cy + 20, cx - 20:cx + 20].any():
            continue
        stamp(int(cy), int(cx), float(rng.uniform(0.6, 1.2)))
        placed += 1
    probe_masks = []
    for cy, cx in probes:
        stamp(cy, cx, 1.0)
        m = np.zeros((h, w), bool)
        m[cy - 24:cy + 25, cx - 24:cx + 25] = nuc | cyto
        probe_masks.append(m)
    return x, cells, probe_masks


def make_model(width: int, seed: int):
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    torch.manual_seed(seed)
    return DCMIXClassifier(ModelConfig(2, 2, width=width)).eval()


def child(args) -> None:
    """One explain run; prints a JSON line with seconds and peak RSS, saves the map."""
    import resource

    import torch

    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.core.runtime.progress import run_generator

    h, w = args.child_shape
    x, _, _ = make_field(h, w, args.seed, args.child_sparse)
    model = make_model(args.width, args.seed)
    kw = dict(input_size=TILE, device=args.device)
    if args.child_path.startswith("old"):
        kw.update(tiling="per_tile", tile_overlap=OLD_OVERLAP,
                  batch_size=int(args.child_path.partition("@")[2] or 32))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_generator(explain(model, x[None], 1, **kw))
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(args.child_out, res.maps[0])
    out = {"seconds": sec, "cpu_seconds": cpu, "peak_rss": rss, "rss_before": rss0,
           "tiling": res.params.get("tiling"), "tiles": res.params.get("tiles_per_image"),
           "background_tiles": res.params.get("background_tiles"),
           "tile_batch": res.params.get("tile_batch"),
           "tile_overlap": res.params.get("tile_overlap"),
           "tile": res.params.get("tile") or [TILE, TILE],
           "channels_last": res.params.get("channels_last"), "amp": res.params.get("amp"),
           "steps_run": res.params.get("steps_run")}
    if args.device == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    print("RESULT " + json.dumps(out))


def grid_lines(n: int, overlap: int, tile: int = TILE) -> list[int]:
    from napari_attribution.core.data.tiling import tile_starts

    lines = set()
    for s in tile_starts(n, tile, overlap):
        lines.update((s, s + tile))
    return sorted(v for v in lines if 0 < v < n)


def metrics(m: np.ndarray, cells: np.ndarray, probes: list[np.ndarray], overlap: int,
            tile: tuple[int, int] = (TILE, TILE)) -> dict:
    from scipy import ndimage

    vals = np.array([m[p].mean() for p in probes])
    cv = float(vals.std() / max(abs(vals.mean()), 1e-12))
    empty = ndimage.distance_transform_edt(~cells) >= 24
    ref = np.percentile(m[cells], 99)
    emp = float(np.percentile(m[empty], 99) / max(abs(ref), 1e-12))
    jy = np.abs(np.diff(m, axis=0))  # jump between row r-1 and r at index r-1
    jx = np.abs(np.diff(m, axis=1))
    ly, lx = grid_lines(m.shape[0], overlap, tile[0]), grid_lines(m.shape[1], overlap, tile[1])
    on = np.concatenate([jy[[v - 1 for v in ly]].ravel(), jx[:, [v - 1 for v in lx]].ravel()])
    offy = np.setdiff1d(np.arange(jy.shape[0]), [v - 1 for v in ly])
    offx = np.setdiff1d(np.arange(jx.shape[1]), [v - 1 for v in lx])
    off = np.concatenate([jy[offy].ravel(), jx[:, offx].ravel()])
    return {"probe_cv": cv, "empty_pos": emp, "seam": float(on.mean() / max(off.mean(), 1e-12)),
            "probe_values": vals.tolist()}


def run_child(path: str, shape, args, tmp: Path, device: str, sparse: bool) -> dict:
    out = tmp / f"{path}_{device}_{shape[0]}x{shape[1]}_{int(sparse)}.npy"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--child-path", path, "--child-shape", str(shape[0]),
           str(shape[1]), "--child-out", str(out), "--device", device,
           "--width", str(args.width), "--seed", str(args.seed)] + \
        (["--child-sparse"] if sparse else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    line = [v for v in proc.stdout.splitlines() if v.startswith("RESULT ")][-1]
    res = json.loads(line[7:])
    res["map"] = np.load(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="512x680 and 1024x1024 fields instead of 1024x1360 and 2048x2048")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/whole_field.json"))
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--old-batches", default="1,4,32",
                    help="batch sizes of the old per-tile path; speed-ups are against the "
                         "fastest (default 1,4,32)")
    ap.add_argument("--child-path")
    ap.add_argument("--child-shape", type=int, nargs=2)
    ap.add_argument("--child-out")
    ap.add_argument("--child-sparse", action="store_true")
    args = ap.parse_args()
    if args.child_path:
        child(args)
        return
    import torch

    batches = [int(b) for b in args.old_batches.split(",") if b.strip()]
    big = (1024, 1024) if args.quick else (2048, 2048)
    shapes = [((512, 680) if args.quick else (1024, 1360), False), (big, False), (big, True)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as td:
        for dev in devices:
            for shape, sparse in shapes:
                x, cells, probes = make_field(*shape, seed=args.seed, sparse=sparse)
                paths = [f"old@{b}" for b in batches] + ["new"]
                res = {p: run_child(p, shape, args, Path(td), dev, sparse) for p in paths}
                best_old = min((p for p in paths if p != "new"),
                               key=lambda p: res[p]["seconds"])
                for p in paths:
                    r = res[p]
                    ov = OLD_OVERLAP if p != "new" else int(r["tile_overlap"] or 0)
                    name = f"{shape[0]}x{shape[1]}" + (" sparse" if sparse else "")
                    row = {"device": dev, "field": name, "path": p,
                           "cell_fraction": float(cells.mean()),
                           **{k: v for k, v in r.items() if k != "map"},
                           **metrics(r["map"], cells, probes, ov, r["tile"])}
                    if not row["tiles"]:
                        from napari_attribution.core.data.tiling import tile_grid

                        row["tiles"] = [len(tile_grid(*shape, TILE, OLD_OVERLAP))]
                        row["background_tiles"] = [0]
                    row["best_old"] = best_old
                    row["speedup"] = res[best_old]["seconds"] / r["seconds"]
                    row["cpu_speedup"] = res[best_old]["cpu_seconds"] / r["cpu_seconds"]
                    row["peak_ratio"] = (r["peak_rss"] - r["rss_before"]) / max(
                        res[best_old]["peak_rss"] - res[best_old]["rss_before"], 1)
                    rows.append(row)
                    print(f"{dev} {row['field']} {p}: {r['seconds']:.1f} s", flush=True)
    load1 = os.getloadavg()
    hdr = (f"{'device':6} {'field':16} {'path':7} {'tiling':9} {'tiles':>5} {'bg':>4} "
           f"{'tile':>7} {'s/field':>8} {'speed-up':>8} {'CPU s':>6} {'CPU x':>6} "
           f"{'peak RSS':>9} {'+work':>7} "
           f"{'probe CV':>8} "
           f"{'empty+':>7} {'seam':>5}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        tiles, bg = r["tiles"][0], r["background_tiles"][0]
        print(f"{r['device']:6} {r['field']:16} {r['path']:7} {str(r['tiling']):9} "
              f"{tiles:>5} {bg:>4} {'x'.join(map(str, r['tile'])):>7} "
              f"{r['seconds']:8.1f} {r['speedup']:7.2f}x {r['cpu_seconds']:6.1f} "
              f"{r['cpu_speedup']:5.2f}x "
              f"{r['peak_rss'] / 2**20:7.0f}MB {(r['peak_rss'] - r['rss_before']) / 2**20:5.0f}MB "
              f"{r['probe_cv']:8.3f} {r['empty_pos']:7.3f} {r['seam']:5.2f}")
    print("speed-up and CPU x: against the fastest old configuration of the same field "
          f"({', '.join(sorted({r['best_old'] for r in rows}))}), measured in this run")
    if "cuda" not in devices:
        print("cuda   (all)            not measured: no GPU lent")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    out = {"rows": [{k: v for k, v in r.items()} for r in rows],
           "cuda": None if "cuda" in devices else "not measured: no GPU lent",
           "load_before": load0, "load_after": load1, "quick": args.quick,
           "width": args.width, "seed": args.seed, "torch": torch.__version__,
           "old_batches": batches,
           "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1")}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
