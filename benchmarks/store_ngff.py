"""Batch store metadata cost: creating, completing and validating an NGFF plate store.

    python benchmarks/store_ngff.py [--wells 384] [--sites 5] [--baseline-rev REV]

Creates an empty result store for ``wells x sites`` fields of view (two methods, per-channel
maps of two channels, 64x64) with ``BatchStore.create`` (the NGFF attributes built with
ome-zarr-models), then times ``mark_complete`` (which rewrites every field's omero display
windows) and ``ngff.validate_store`` (ome-zarr-models opens the plate, every well and every
field). With ``--baseline-rev`` the store module of that git revision (hand-written
metadata) creates the same store in the same process, so the two creation times compare
under the same load (the baseline runs before and after). No model and no image files are needed.
Writes JSON to benchmarks/results/store_ngff.json and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def baseline_store_module(rev: str):
    """``napari_attribution.batch.store`` as it was at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:src/napari_attribution/batch/store.py"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    name = "napari_attribution.batch._store_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "napari_attribution.batch"
    sys.modules[name] = module
    exec(compile(source, f"store.py@{rev}", "exec"), module.__dict__)
    return module


def records(wells: int, sites: int):
    from napari_attribution.batch.records import ImageRecord

    rows = "ABCDEFGHIJKLMNOP"
    out = []
    for w in range(wells):
        well = f"{rows[w // 24]}{w % 24 + 1:02d}"
        out += [ImageRecord(f"{well}_s{s}", well, str(s), (f"/x/{well}_s{s}.tif",))
                for s in range(1, sites + 1)]
    return out


def create(module, path: Path, recs) -> tuple[float, object]:
    payload = module.run_payload("0" * 64, recs, {"pcim": {"steps": 3}, "saliency": {}},
                                 True, None, (64, 64))
    t0 = time.perf_counter()
    store = module.BatchStore.create(path, payload=payload, records=recs,
                                     channel_names=["dna", "gfp"], class_names=["a", "b"],
                                     provenance={})
    return time.perf_counter() - t0, store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wells", type=int, default=384)
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--baseline-rev", default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/store_ngff.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from napari_attribution.batch import ngff, store

    recs = records(args.wells, args.sites)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline_rev:
            base = baseline_store_module(args.baseline_rev)
            seconds, _ = create(base, Path(tmp) / "base.zarr", recs)
            rows.append(("create (hand-written metadata, " + args.baseline_rev + ")",
                         seconds))
        seconds, st = create(store, Path(tmp) / "new.zarr", recs)
        rows.append(("create (ome-zarr-models)", seconds))
        if args.baseline_rev:  # again after: the first creation pays for warming up
            seconds, _ = create(base, Path(tmp) / "base2.zarr", recs)
            rows.append(("create (hand-written, " + args.baseline_rev + ", again)", seconds))
        rng = np.random.default_rng(0)
        st.write_image(0, np.array([0.5, 0.5]),
                       {m: rng.normal(size=(2, 64, 64)) for m in st.methods},
                       {m: 0 for m in st.methods}, 0.0)
        t0 = time.perf_counter()
        st.mark_complete({})
        rows.append(("mark_complete (display windows)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        hcs = ngff.validate_store(Path(tmp) / "new.zarr")
        rows.append(("validate_store (ome-zarr-models)", time.perf_counter() - t0))
        assert hcs.n_wells == args.wells
    load = os.getloadavg()[0]
    print(f"{len(recs)} fields ({args.wells} wells x {args.sites} sites), "
          f"load {load:.2f}, {platform.node()}")
    print(f"{'step':<52}{'seconds':>10}")
    for name, s in rows:
        print(f"{name:<52}{s:>10.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"fields": len(recs), "wells": args.wells,
                                     "sites": args.sites, "load_1min": load,
                                     "seconds": dict(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
