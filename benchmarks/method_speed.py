"""Seconds per image of every attribution method at its own best batch size, and how
close the widgets' cost hint comes to it.

For each method (PCIM with its defaults, IG with PCIM's pass count and with 50 steps,
forward-only PCIM, saliency, occlusion, Grad-CAM, RISE, extremal mask: ``--methods``)
and each batch size of ``--batches`` (default 1, 4, 16, 32), one child process (fresh
torch, ``OMP_NUM_THREADS`` as given, default 1) runs ``explain`` on N two-channel crops
of a DCMIX classifier (default backbone, 64 px; the model's weights do not change the
cost) after one warm-up batch, and reports wall seconds, CPU seconds and the peak
resident memory above the start of the timed run (``runtime.peak_memory.track_peak``:
high-water mark reset after the warm-up). Speed-ups are stated against each rival's
**fastest** batch size measured in the same run (issue 24: "every speed claim is
against the best configuration of the rival").

The cost hint is what the Pixel attribution widget shows before a run
(``core.attribution.cost``: passes per image from the method's record times one timed
forward+backward pass); the table gives measured / hinted at the default batch size 32.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/method_speed.py [--images 16]
        [--size 64] [--batches 1,4,16,32] [--methods ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: label -> (registered method, settings)
METHODS = {
    "PCIM": ("pcim", {}),
    "IG8": ("integrated_gradients", {"n_steps": 8}),
    "IG50": ("integrated_gradients", {}),
    "PCIM-blackbox": ("pcim_blackbox", {}),
    "saliency": ("saliency", {}),
    "occlusion": ("occlusion", {}),
    "gradcam": ("gradcam", {}),
    "RISE": ("rise", {}),
    "extremal": ("extremal_mask", {}),
}


def _model(size: int):
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    torch.manual_seed(0)
    return DCMIXClassifier(ModelConfig(n_channels=2, n_classes=2)).eval()


def _images(n: int, size: int):
    import numpy as np

    return np.random.default_rng(0).random((n, 2, size, size)).astype(np.float32)


def child(label: str, batch: int, n: int, size: int) -> dict:
    """One method at one batch size: seconds, CPU seconds, peak RSS above the start."""
    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.core.runtime.peak_memory import track_peak
    from napari_attribution.core.runtime.progress import run_generator

    method, params = METHODS[label]
    model, x = _model(size), _images(n, size)
    run_generator(explain(model, x[:batch], 1, method, device="cpu", batch_size=batch,
                          **params))                                   # warm-up
    with track_peak("cpu") as peak:
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_generator(explain(model, x, 1, method, device="cpu", batch_size=batch,
                                    **params))
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds_per_image": sec / n, "cpu_per_image": cpu / n,
            "peak_above_start_mib": peak["peak_mib"],
            "batch_used": res.params.get("batch_size")}


def hint(label: str, size: int) -> float:
    """The widget's expected seconds per image (no evidence check, no curves)."""
    from napari_attribution.core.attribution.cost import method_passes, pass_seconds

    method, params = METHODS[label]
    return method_passes(method, params, (size, size), 2) * pass_seconds(
        _model(size), (2, size, size), "cpu")


def run_child(label: str, batch: int, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--child", label, "--child-batch", str(batch),
           "--images", str(args.images), "--size", str(args.size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads([v for v in proc.stdout.splitlines() if v.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16, help="crops per run")
    p.add_argument("--size", type=int, default=64, help="crop side (px)")
    p.add_argument("--batches", default="1,4,16,32", help="batch sizes to try per method")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated labels of {list(METHODS)}")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/method_speed.json")
    p.add_argument("--child")
    p.add_argument("--child-batch", type=int)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.child_batch, args.images, args.size)))
        return
    import torch

    labels = [m for m in args.methods.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    load0 = os.getloadavg()
    rows = []
    for label in labels:
        runs = {b: run_child(label, b, args) for b in batches}
        best = min(runs, key=lambda b: runs[b]["seconds_per_image"])
        hinted = hint(label, args.size)
        ref = runs[32] if 32 in runs else runs[best]
        rows.append({"label": label, "method": METHODS[label][0],
                     "params": METHODS[label][1], "runs": runs, "best_batch": best,
                     **{k: runs[best][k] for k in ("seconds_per_image", "cpu_per_image",
                                                   "peak_above_start_mib")},
                     "hint_per_image": hinted,
                     "measured_over_hint": ref["seconds_per_image"] / hinted})
        print(f"{label}: best batch {best}, {runs[best]['seconds_per_image'] * 1000:.0f} ms "
              "per image", flush=True)
    load1 = os.getloadavg()
    pcim = next((r for r in rows if r["label"] == "PCIM"), None)
    hdr = (f"{'method':14} {'best batch':>10} {'ms/image':>9} {'CPU ms':>7} "
           f"{'+MiB':>6} {'x PCIM':>7} {'hint ms':>8} {'meas/hint':>9}   ms/image per batch")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        rel = r["seconds_per_image"] / pcim["seconds_per_image"] if pcim else float("nan")
        per = "  ".join(f"{b}:{v['seconds_per_image'] * 1000:.0f}"
                        for b, v in r["runs"].items())
        print(f"{r['label']:14} {r['best_batch']:>10} {r['seconds_per_image'] * 1000:9.1f} "
              f"{r['cpu_per_image'] * 1000:7.1f} {r['peak_above_start_mib']:6.0f} "
              f"{rel:6.2f}x {r['hint_per_image'] * 1000:8.1f} "
              f"{r['measured_over_hint']:9.2f}   {per}")
    print(f"{args.images} crops of 2 x {args.size} px per run, DCMIX default backbone, CPU, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}; 'x PCIM': time per "
          "image at each method's best batch over PCIM's at its best; meas/hint: measured "
          "at batch 32 (else the best) over the widget's hint; "
          f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    out = {"rows": rows, "images": args.images, "size": args.size, "batches": batches,
           "load_before": load0, "load_after": load1, "torch": torch.__version__,
           "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
