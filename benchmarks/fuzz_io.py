"""Fuzz counts for the readers, plate maps and bundle metadata.

    python benchmarks/fuzz_io.py [--tiff 2000] [--plate-maps 1000] [--bundles 500]

Runs the cases of ``tests/fuzz_io_cases.py`` (random TIFF/OME-TIFF files, then one of:
no change, truncation, an OME SizeC/Z/T/X/Y or PhysicalSize rewrite, a corrupted header
or IFD byte, a page of another shape, a random description; random plate-map CSVs;
random edits of bundle metadata) through hypothesis with a fixed seed, and counts the
outcomes: clear errors, correct reads, raw tracebacks and silent-wrong reads (the last
two must be 0). Writes benchmarks/results/fuzz_io.json and prints a table. ``--src=DIR``
tests another checkout's package with these cases.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--src=")), ROOT / "src")
sys.path[:0] = [str(SRC), str(ROOT / "tests")]


def _run(strategy, fn, n: int, kind: str, failures: Counter, examples: dict) -> None:
    from hypothesis import HealthCheck, given, settings

    if n <= 0:
        return

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(case):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                fn(case, Path(tmp))
            except AssertionError as err:
                what = "raw_traceback" if str(err).startswith("raw ") else "silent_wrong"
                failures[(kind, what)] += 1
                examples.setdefault(f"{kind}/{what}", str(err)[:300])

    check()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiff", type=int, default=2000)
    ap.add_argument("--plate-maps", type=int, default=1000)
    ap.add_argument("--bundles", type=int, default=500)
    ap.add_argument("--src", help="package source to test (default: this tree's src)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_io.json"))
    args = ap.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    from safetensors import safe_open

    import fuzz_io_cases as fc
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.data.synthetic import make_cell_phenotype
    from napari_attribution.core.runtime.progress import run_generator
    from napari_attribution.io.bundle import save_training_result

    failures: Counter = Counter()
    examples: dict = {}
    _run(fc.tiff_cases(), fc.run_tiff_case, args.tiff, "tiff", failures, examples)
    _run(fc.plate_map_cases(), fc.run_plate_map_case, args.plate_maps, "plate_map",
         failures, examples)
    data = make_cell_phenotype(n_images=64, size=24, seed=0)
    result = run_generator(train_dcmix(data, TrainConfig(epochs=1, device="cpu")))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_training_result(Path(tmp) / "m.safetensors", result)
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["napari_attribution"])
            state = {k: f.get_tensor(k) for k in f.keys()}
    _run(fc.bundle_cases(), lambda c, d: fc.run_bundle_case(c, meta, state, d),
         args.bundles, "bundle", failures, examples)
    table = {}
    for kind in ("tiff", "plate_map", "bundle"):
        row = {o: fc.COUNTS[(kind, o)] for o in ("clear_error", "correct")}
        row.update({o: failures[(kind, o)] for o in ("raw_traceback", "silent_wrong")})
        row["cases"] = sum(row.values())
        table[kind] = row
        print(f"{kind:<10} cases {row['cases']:>5}  clear errors {row['clear_error']:>5}  "
              f"correct reads {row['correct']:>5}  raw tracebacks {row['raw_traceback']:>3}"
              f"  silent-wrong {row['silent_wrong']:>3}")
    out = {"counts": table, "failure_examples": examples}
    out["src"] = str(Path(SRC).resolve().relative_to(ROOT.parent)
                     if Path(SRC).resolve().is_relative_to(ROOT.parent) else SRC)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
