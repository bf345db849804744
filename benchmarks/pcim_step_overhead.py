"""PCIM's cost per optimisation step against a raw forward+backward of the same model.

A PCIM step is one forward and one backward pass of the frozen model on the blended
images plus PCIM's own work (the softmax over pixels, the blend, the loss, the update,
the convergence check). The raw reference is what any gradient method must pay: a
forward pass, cross-entropy and the gradient to the input, same batch. The ratio
``PCIM step / raw`` is PCIM's overhead (target <= 1.1x, batch 1 included).

Models: a tiny two-layer CNN on 28 px images (MNIST-like: the model is so cheap that
PCIM's own work shows), the DCMIX classifier of the fidelity benchmarks (``small``
backbone, width 16, 2-channel 48 px BBBC013 crops) and the default DCMIX classifier
(channel mixing + the ``small`` backbone, width 32) on 2-channel 64 px crops. Runs of
8 raw passes and of 8 PCIM steps (``tol=0``: no early stop) alternate; medians are
compared, so load from other processes affects both alike; rows whose raw runs are
cheap repeat more often than ``--reps`` (about a second of raw runs). Each run is
timed by the wall clock and by the thread's CPU time (``time.thread_time``: the time
the process was descheduled on a shared machine left out); both ratios are reported.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pcim_step_overhead.py [--reps 25]
        [--json benchmarks/results/pcim_step_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from napari_attribution.core.attribution.pcim import PCIMConfig, pcim_batch

STEPS = 8


def tiny_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, 10))


def dcmix_default() -> torch.nn.Module:
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    return DCMIXClassifier(ModelConfig(n_channels=2, n_classes=2))


def dcmix_bench() -> torch.nn.Module:
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    return DCMIXClassifier(ModelConfig(n_channels=2, n_classes=2, width=16))


MODELS = {"tiny CNN, 1x28x28": (tiny_cnn, (1, 28, 28), 10),
          "DCMIX small width 16, 2x48x48": (dcmix_bench, (2, 48, 48), 2),
          "DCMIX default (small, width 32), 2x64x64": (dcmix_default, (2, 64, 64), 2)}


def measure(model: torch.nn.Module, shape: tuple, n_classes: int, batch: int,
            reps: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, *shape)
    t = torch.randint(0, n_classes, (batch,))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = PCIMConfig(steps=STEPS, tol=0.0)

    def raw() -> None:
        for _ in range(STEPS):
            xi = x.clone().requires_grad_(True)
            out = model(xi)
            torch.autograd.grad(F.cross_entropy(out, t, reduction="sum"), xi)

    def pcim() -> None:
        gen = pcim_batch(model, x, t, cfg)
        n = 0
        try:
            while True:
                next(gen)
                n += 1
        except StopIteration:
            pass
        assert n == STEPS

    for _ in range(2):
        raw()
        pcim()
    # cheap rows repeat until the raw runs total about a second (load spikes average out)
    t0 = time.perf_counter()
    raw()
    reps = max(reps, min(1000, int(1.0 / max(time.perf_counter() - t0, 1e-6))))
    t_raw, t_pcim, c_raw, c_pcim = [], [], [], []
    for _ in range(reps):
        for fn, wall, cpu in ((raw, t_raw, c_raw), (pcim, t_pcim, c_pcim)):
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    raw_ms = 1000 * float(np.median(t_raw)) / STEPS
    step_ms = 1000 * float(np.median(t_pcim)) / STEPS
    return {"batch": batch, "reps": reps, "raw_fwd_bwd_ms": raw_ms, "pcim_step_ms": step_ms,
            "ratio": step_ms / raw_ms,
            "ratio_cpu_time": float(np.median(c_pcim)) / float(np.median(c_raw))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for name, (build, shape, k) in MODELS.items():
        model = build()
        for b in (int(v) for v in args.batches.split(",")):
            r = measure(model, shape, k, b, args.reps)
            rows.append({"model": name, **r})
            print(f"{name:42s} batch {b:3d}: raw {r['raw_fwd_bwd_ms']:7.2f} ms, "
                  f"PCIM step {r['pcim_step_ms']:7.2f} ms, ratio {r['ratio']:.3f} "
                  f"(CPU time {r['ratio_cpu_time']:.3f})", flush=True)
    lines = ["| model | batch | raw fwd+bwd (ms) | PCIM step (ms) | ratio | ratio, CPU time |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['raw_fwd_bwd_ms']:.2f} | "
              f"{r['pcim_step_ms']:.2f} | {r['ratio']:.3f} | {r['ratio_cpu_time']:.3f} |"
              for r in rows]
    table = "\n".join(lines)
    print(table)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average (1 min): {load_start} at the start, {load} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, torch "
                       f"{torch.__version__}, {torch.get_num_threads()} thread(s)",
            "load_average_1min": load, "load_average_1min_start": load_start,
            "reps": args.reps, "steps": STEPS,
            "rows": rows, "markdown": table}, indent=2))
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
