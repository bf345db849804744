"""Overhead of the trust checks and the operator scan on TorchScript and torch.export files.

    python benchmarks/model_scan.py [--repeats 5] [--width 64]

The model is the package's ResNet-18-style DCMIX classifier (width 64: 11.2 M parameters,
the size of torchvision's ResNet-18) on 3 channels, saved once as TorchScript (traced)
and once as a ``torch.export`` program (``.pt2``); its backbone (the same ResNet-18
without the mixing layer) is also scripted, which keeps control flow and inlines every
functional body (a larger graph to scan). For each format the script times, as
the median of ``--repeats`` runs: loading the file without any check (``torch.jit.load``
/ ``torch.export.load``), the checks alone (graph scan on the loaded program; for ``.pt2``
also the archive-member allow-list), for ``.pt2`` the untrusted load (allow-listed
in-memory copy, restricted unpickler), and the full ``load_model`` (untrusted for
``.pt2``; trusted for TorchScript, which never loads untrusted; it also hashes the file,
builds the callable module and times a first forward call).
Target: the checks take < 1 s.
Writes JSON to benchmarks/results/model_scan.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.io import model_scan as scan
    from napari_attribution.io import model_trust as trust
    from napari_attribution.io.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model = DCMIXClassifier(ModelConfig(n_channels=3, n_classes=10, backbone="resnet18",
                                        width=args.width)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    example = torch.zeros(2, 3, 64, 64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ts_path, pt2_path = Path(tmp) / "resnet.pt", Path(tmp) / "resnet.pt2"
        sc_path = Path(tmp) / "resnet_scripted.pt"
        torch.jit.save(torch.jit.trace(model, example), str(ts_path))
        # scripting keeps control flow and inlines functional bodies: a larger graph
        torch.jit.save(torch.jit.script(model.backbone), str(sc_path))
        torch.export.save(torch.export.export(model, (example,)), str(pt2_path))
        ts = torch.jit.load(str(ts_path))
        sc = torch.jit.load(str(sc_path))
        program = torch.export.load(str(pt2_path))

        def ts_checks() -> None:
            scan.torchscript_ops(ts)

        def sc_checks() -> None:
            scan.torchscript_ops(sc)

        def pt2_checks() -> None:
            trust.check_pt2(pt2_path)
            scan.scan_exported(program)

        def pt2_restricted_load() -> None:
            with scan.restricted_unpickling():
                torch.export.load(trust.untrusted_pt2_copy(pt2_path))

        for fmt, path, raw, checks, extra in (
            ("TorchScript", ts_path, lambda: torch.jit.load(str(ts_path)), ts_checks, None),
            ("TS scripted", sc_path, lambda: torch.jit.load(str(sc_path)), sc_checks, None),
            ("torch.export", pt2_path, lambda: torch.export.load(str(pt2_path)), pt2_checks,
             pt2_restricted_load),
        ):
            row = {
                "format": fmt,
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "n_ops": len(scan.torchscript_ops(ts) if fmt == "TorchScript" else
                             scan.torchscript_ops(sc) if fmt == "TS scripted" else
                             scan.exported_ops(program)),
                "load_unchecked_s": _median_seconds(raw, args.repeats),
                "checks_s": _median_seconds(checks, args.repeats),
                "load_model_s": _median_seconds(
                    lambda p=path: load_model(p, trust=p.suffix != ".pt2"), args.repeats),
            }
            if extra is not None:
                row["restricted_load_s"] = _median_seconds(extra, args.repeats)
            rows.append(row)
    print(f"ResNet-18-style DCMIX, {n_params / 1e6:.1f} M parameters, torch "
          f"{torch.__version__}, 1 thread, median of {args.repeats}")
    print(f"{'format':<14}{'file MB':>9}{'ops':>6}{'load (no check) s':>19}"
          f"{'checks s':>10}{'restricted load s':>19}{'load_model s':>14}")
    for r in rows:
        print(f"{r['format']:<14}{r['file_mb']:>9}{r['n_ops']:>6}"
              f"{r['load_unchecked_s']:>19.3f}{r['checks_s']:>10.4f}"
              f"{r.get('restricted_load_s', float('nan')):>19.3f}{r['load_model_s']:>14.3f}")
    out = ROOT / "benchmarks" / "results" / "model_scan.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "n_params": n_params,
                               "torch": torch.__version__, "python": platform.python_version(),
                               "machine": platform.machine(), "repeats": args.repeats},
                              indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
