"""GUI responsiveness and job time of the widgets' workers, against a bare worker.

On the real Qt event loop (``QEventLoop.exec``; no ``processEvents`` pump), a 10 ms
``QTimer`` records its lateness (actual interval minus 10 ms) while

* the Train widget trains DCMIX (progress bar, live curves and weight bars), and
* the Pixel attribution widget runs PCIM over a stack (maps added as layers at the end),

and, in the same run, while a bare ``napari.qt.threading.create_worker`` runs the same
generator (the baseline). The bare PCIM worker shows its maps the least way a script
does (``plain_display``: napari's plain Image layer, added by the first run, given new
data by the next ones), since showing a first layer costs napari a GUI tick of its own;
``--baseline nothing`` connects nothing (the computation alone). Training adds no layer.
Widget and bare runs interleave (widget, bare, bare, widget, ... ``--repeats`` pairs, so
a drift in the machine's load falls on both alike), on an otherwise idle machine and
beside a CPU hog (one process spinning on one core).

Targets per phase (issue 23), each reported as PASS/FAIL: p95 <= 30 ms, max <= 200 ms,
job <= 1.25x the bare worker's time (medians), and no widget stall above 50 ms that
the bare worker does not have (the widget runs have no more ticks over 50 ms late than
the bare runs). The exit status is 0 only when every target of every phase passes.

A job's run ends when its worker has finished and the timer has run ``SETTLE_MS`` more
(its last repaints count in its own run). Per run the output also gives the CPU seconds
of the GUI thread and of Mesa's llvmpipe threads (software OpenGL composition).

Diagnosis: ``--trace-stalls`` records, at every tick over 40 ms late, the GUI thread's
stack, the running threads and the widget's last actions, and counts the widget's
repaint-triggering calls and paint events per run (``stall_trace.py``); ``--variant``
runs the widgets with a part switched off; ``--phases`` and ``--loads`` pick the rows.

    xvfb-run -a python benchmarks/gui_latency.py [--quick] [--json PATH]
    xvfb-run -a python benchmarks/gui_latency.py --quick --trace-stalls --phases training
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

TICK_MS = 10
TARGETS = {"p95_ms": 30.0, "max_ms": 200.0, "slowdown": 1.25, "stall_ms": 50.0}
SETTLE_MS = 300  # the timer's run after a job's end (its last repaints)
#: The stall watchdog of ``--trace-stalls`` (``stall_trace.StallTracer``), else None.
TRACER = None
VARIANTS = ("full", "no-plots", "hidden-canvas", "train-behind", "native-docks")


class TickRecorder:
    """Lateness of a 10 ms precise timer in the GUI thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.late: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        if TRACER is not None:
            TRACER.heartbeat()
        self.late.append(max(0.0, (now - self._last) * 1000 - TICK_MS))
        self._last = now

    def __enter__(self) -> TickRecorder:
        self.late = []
        self._last = time.perf_counter()
        if TRACER is not None:
            TRACER.heartbeat()
            TRACER.active = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()
        if TRACER is not None:
            TRACER.active = False

    def stats(self) -> dict:
        return lateness_stats(self.late[1:])


def gui_machine() -> dict:
    """The machine block of the GUI benchmarks' JSON: platform, CPUs, torch threads and
    version, napari version, load average now."""
    import napari
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "napari": napari.__version__,
            "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def write_result(path: Path | None, result: dict) -> None:
    """Write ``result`` as JSON to ``path`` (nothing when None)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"written {path}")


def lateness_stats(late: list[float]) -> dict:
    """Percentiles of the timer's lateness and the ticks later than a stall."""
    arr = np.asarray(late or [0.0])
    return {"ticks": int(arr.size), "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2),
            "max_ms": round(float(arr.max()), 2),
            "stalls": int((arr > TARGETS["stall_ms"]).sum()), "late": list(map(float, arr))}


def combine(runs: list[dict]) -> dict:
    """Several runs of one job: lateness pooled, seconds their median."""
    late = [v for r in runs for v in r["late"]]
    out = lateness_stats(late)
    out["seconds"] = round(float(np.median([r["seconds"] for r in runs])), 2)
    out["runs_seconds"] = [r["seconds"] for r in runs]
    out["runs_stalls"] = [r["stalls"] for r in runs]
    out["cpu_s"] = {k: round(float(np.median([r["cpu_s"][k] for r in runs])), 3)
                    for k in runs[0]["cpu_s"]}
    if "trace" in runs[0]:
        out["trace"] = [r["trace"] for r in runs]
    return out


def verdicts(w: dict, b: dict) -> dict[str, bool]:
    """PASS/FAIL of each target for a phase: widget stats ``w`` against bare ``b``."""
    ratio = w["seconds"] / b["seconds"] if b.get("seconds") else None
    return {"p95": w["p95_ms"] <= TARGETS["p95_ms"],
            "max": w["max_ms"] <= TARGETS["max_ms"],
            "job": ratio is None or ratio <= TARGETS["slowdown"],
            "stalls": w["stalls"] <= b["stalls"]}


def run_on_event_loop(start: Callable[[], object], timeout_s: float = 900,
                      label: str = "") -> dict:
    """Call ``start()`` (returns a worker), run the Qt event loop until the worker has
    finished (its ``finished`` handlers included), return timer stats, seconds and the
    CPU seconds of the GUI thread, of Mesa's llvmpipe threads and of the others (with
    ``--trace-stalls`` also the widget's calls, paint events and traced stalls)."""
    from qtpy.QtCore import QEventLoop, QTimer

    from stall_trace import cpu_by_group

    loop = QEventLoop()
    rec = TickRecorder()
    cpu0 = cpu_by_group()
    if TRACER is not None:
        TRACER.start_run(label)
    with rec:
        t0 = time.perf_counter()
        worker = start()
        if worker is None:
            raise RuntimeError("the job did not start (bad input?)")
        done: list[float] = []
        # after the widget's own handlers; the timer runs on for SETTLE_MS, so that the
        # repaints a run leaves behind count in this run, not in the next one
        worker.finished.connect(lambda: (done.append(time.perf_counter()),
                                         QTimer.singleShot(SETTLE_MS, loop.quit)))
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        seconds = (done[0] if done else time.perf_counter()) - t0
    cpu = cpu_by_group()
    out = {**rec.stats(), "seconds": round(seconds, 2),
           "cpu_s": {k: round(cpu[k] - cpu0[k], 3) for k in cpu}}
    if TRACER is not None:
        out["trace"] = TRACER.end_run()
    return out


def interleaved(widget_start: Callable[[], object], bare_start: Callable[[], object],
                repeats: int, name: str = "") -> tuple[dict, dict]:
    """Widget and bare runs in the order W B B W W B ... (``repeats`` of each)."""
    w_runs, b_runs = [], []
    for i in range(repeats):
        order = ((widget_start, w_runs, "widget"), (bare_start, b_runs, "bare"))
        for start, runs, kind in (order if i % 2 == 0 else order[::-1]):
            runs.append(run_on_event_loop(start, label=f"{name} {kind} #{len(runs) + 1}"))
    return combine(w_runs), combine(b_runs)


def bare_worker(make_gen: Callable[[], object],
                show: Callable[[object], None] | None = None) -> Callable[[], object]:
    """A starter for the baseline: the same generator in a bare ``create_worker``;
    ``show`` (if given) receives the generator's result in the GUI thread."""

    def start():
        from napari.qt.threading import create_worker

        from napari_attribution._qt._runner import _drive

        worker = create_worker(_drive, make_gen(), _start_thread=False)
        if show is not None:
            worker.returned.connect(show)
        worker.start()
        return worker

    return start


def plain_display(viewer, name: str = "bare result") -> Callable[[object], None]:
    """The least a script does to see a result in napari (the ``show`` of the
    ``display`` baseline): the maps as an Image layer with napari's defaults, added by
    the first run and given the new data by the next ones (as the widget replaces the
    layer of an identical earlier run)."""

    def show(result) -> None:
        maps = np.asarray(result.maps, np.float32)
        if name in viewer.layers:
            viewer.layers[name].data = maps
        else:
            viewer.add_image(maps, name=name)

    return show


def apply_variant(variant: str, viewer, train, attr) -> None:
    """Switch a part of the widgets off for diagnosis (``--variant``)."""
    if variant == "no-plots":
        train._plot = lambda weights: None
    elif variant == "hidden-canvas":
        viewer.window._qt_viewer.canvas.native.setVisible(False)  # diagnosis only
    elif variant == "native-docks":  # the widgets in native windows of their own
        from qtpy.QtCore import Qt

        for w in (train, attr):
            w.setAttribute(Qt.WidgetAttribute.WA_NativeWindow)
    elif variant == "train-behind":  # the Pixel attribution tab on top
        viewer.window._dock_widgets["Pixel attribution"].raise_()  # diagnosis only


class CpuHog:
    """One process spinning on one core for the duration of a ``with`` block."""

    def __enter__(self) -> CpuHog:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (smaller jobs)")
    p.add_argument("--images", type=int, default=None, help="training images")
    p.add_argument("--size", type=int, default=48, help="image side (px)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--pcim-images", type=int, default=None)
    p.add_argument("--pcim-steps", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=None,
                   help="widget and bare runs of each job and load (default 2; 3 full)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--phases", default="training,PCIM",
                   help="comma-separated jobs to measure (training, PCIM)")
    p.add_argument("--loads", default="idle,cpu hog",
                   help="comma-separated loads (idle, cpu hog)")
    p.add_argument("--trace-stalls", action="store_true",
                   help="diagnosis: a watchdog records the GUI thread's stack, thread "
                        "states and the widget's last actions at every tick over 40 ms "
                        "late, and counts repaint-triggering calls and paint events per run "
                        "(benchmarks/stall_trace.py); adds a little GUI work")
    p.add_argument("--variant", default="full", choices=VARIANTS,
                   help="diagnosis: run the widgets with a part switched off: no-plots "
                        "(no live training plot updates), hidden-canvas (napari's canvas "
                        "hidden), train-behind (the Train dock's tab not on top), native-docks "
                        "(the widgets in native windows of their own)")
    p.add_argument("--baseline", default="display", choices=("display", "nothing"),
                   help="what the bare PCIM worker does with its result: display (the "
                        "default) shows the maps as napari's plain Image layer, added once "
                        "and then given new data, the least a script does to see them; "
                        "nothing connects nothing (the floor of the computation alone)")
    args = p.parse_args(argv)
    phases = [x.strip().lower() for x in args.phases.split(",") if x.strip()]
    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    n_images = args.images or (120 if args.quick else 300)
    epochs = args.epochs or (4 if args.quick else 12)
    n_pcim = args.pcim_images or (32 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 3)

    import napari
    from qtpy.QtCore import QSettings

    from napari_attribution._qt import AttributionWidget, TrainWidget
    from napari_attribution.core.attribution.explain import explain_classifier
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(Path(os.environ.get("TMPDIR", "/tmp")) / "na-bench-settings"))
    data = make_cell_phenotype(n_images=n_images, size=args.size, seed=0)
    viewer = napari.Viewer(show=True)
    for c, name in enumerate(data.channel_names):
        viewer.add_image(data.images[:, c], name=name, blending="additive",
                         colormap=["blue", "green", "magenta", "gray"][c],
                         metadata={"labels": data.labels.tolist(),
                                   "class_names": list(data.class_names)})
    train = TrainWidget(viewer)
    attr = AttributionWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train")
    viewer.window.add_dock_widget(attr, name="Pixel attribution", tabify=True)
    cfg = TrainConfig(epochs=epochs, batch_size=32, device=args.device, seed=0,
                      progress_every=1)

    apply_variant(args.variant, viewer, train, attr)
    # warm-up (first torch calls allocate and pick kernels) and the model PCIM explains
    run_on_event_loop(lambda: train.start_training(dataclasses.replace(cfg, epochs=1)))
    if args.trace_stalls:
        from qtpy.QtWidgets import QApplication

        from stall_trace import StallTracer, instrument

        global TRACER
        TRACER = StallTracer(tick_ms=TICK_MS)
        instrument(TRACER, train, attr)
        TRACER.count_paints(QApplication.instance())
        TRACER.__enter__()
    rows: dict[str, dict] = {}
    with TickRecorder() as rec:
        from qtpy.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        QTimer.singleShot(2000, loop.quit)
        loop.exec()
    rows["idle (no job)"] = {**rec.stats(), "seconds": 2.0}
    rows["idle (no job)"].pop("late")

    def pcim_gen():
        # the generator the widget's Explain runs (the bundle's preparation, the evidence
        # check after the maps), with nothing connected
        bundle = train.session.bundle
        return explain_classifier(bundle, data.images[:n_pcim], None, method="pcim",
                              steps=args.pcim_steps, device=args.device, evidence=True,
                              input_size=None)

    def measure(name: str, widget_start, make_gen, show=None) -> None:
        if name.lower() not in phases:
            return
        for load in loads:
            phase = f"{name} ({load})"
            bare = bare_worker(make_gen, show)
            if load == "cpu hog":
                with CpuHog():
                    w, b = interleaved(widget_start, bare, repeats, phase)
            else:
                w, b = interleaved(widget_start, bare, repeats, phase)
            w.pop("late"), b.pop("late")
            rows[phase] = {**w, "baseline_p95_ms": b["p95_ms"],
                           "baseline_max_ms": b["max_ms"],
                           "baseline_stalls": b["stalls"],
                           "baseline_runs_stalls": b["runs_stalls"],
                           "baseline_seconds": b["seconds"],
                           "baseline_runs_seconds": b["runs_seconds"],
                           "baseline_cpu_s": b["cpu_s"],
                           "pass": verdicts(w, b)}
            if "trace" in b:
                rows[phase]["baseline_trace"] = b["trace"]
            print(f"  {phase}: done", flush=True)

    measure("training", lambda: train.start_training(cfg), lambda: train_dcmix(data, cfg))
    attr.scope.setCurrentText("all images")
    attr.method.setCurrentText("pcim")
    attr.steps.setValue(args.pcim_steps)
    attr.curves.setChecked(False)
    attr.device.setCurrentText(args.device)
    for layer in list(viewer.layers)[:4]:  # explain the first n images
        layer.data = layer.data[:n_pcim]
    # the widget shows its maps as a layer; so does the bare worker, with napari's plain
    # defaults, unless --baseline nothing (the training widget adds no layer)
    measure("PCIM", lambda: attr.run(), pcim_gen,
            plain_display(viewer) if args.baseline == "display" else None)

    ok = True
    stall = f">{TARGETS['stall_ms']:.0f}"
    print(f"{'phase':<22}{'p95 ms':>8}{'max ms':>8}{stall:>5}{'s':>7} | {'bare p95':>9}"
          f"{'bare max':>9}{stall:>5}{'bare s':>7}{'ratio':>7} | "
          f"{'p95':>5}{'max':>5}{'job':>5}{'stall':>6}")
    for name, r in rows.items():
        if "pass" not in r:   # the idle timer alone: a reference, no targets
            print(f"{name:<22}{r['p95_ms']:>8.1f}{r['max_ms']:>8.1f}{r['stalls']:>5}"
                  f"{r['seconds']:>7.1f} |")
            continue
        ratio = r["seconds"] / r["baseline_seconds"] if r["baseline_seconds"] else float("nan")
        r["ratio"] = round(ratio, 3)
        good = r["pass"]
        ok &= all(good.values())
        flags = "".join(f"{'PASS' if good[k] else 'FAIL':>5}" for k in ("p95", "max", "job"))
        print(f"{name:<22}{r['p95_ms']:>8.1f}{r['max_ms']:>8.1f}{r['stalls']:>5}"
              f"{r['seconds']:>7.1f} | {r['baseline_p95_ms']:>9.1f}{r['baseline_max_ms']:>9.1f}"
              f"{r['baseline_stalls']:>5}{r['baseline_seconds']:>7.1f}{ratio:>7.2f} | "
              f"{flags}{'PASS' if good['stalls'] else 'FAIL':>6}")
    print("CPU seconds per run (median): GUI thread / llvmpipe (software OpenGL) threads, "
          "widget vs bare")
    for name, r in rows.items():
        if "baseline_cpu_s" in r:
            c, bc = r["cpu_s"], r["baseline_cpu_s"]
            print(f"  {name:<22} widget {c['gui']:.2f} / {c['llvmpipe']:.2f}   "
                  f"bare {bc['gui']:.2f} / {bc['llvmpipe']:.2f}")
    if TRACER is not None:
        TRACER.__exit__(None, None, None)
        from stall_trace import report

        report(rows)
    if args.variant != "full":
        print(f"variant: {args.variant} (a diagnosis, not the benchmark's verdict)")
    print("baseline: a bare worker running the same generator"
          + (", PCIM's maps shown as napari's plain Image layer" if args.baseline == "display"
             else ", nothing shown"))
    print(f"targets: p95 <= {TARGETS['p95_ms']:.0f} ms, max <= {TARGETS['max_ms']:.0f} ms, "
          f"job <= {TARGETS['slowdown']}x the bare worker (median of {repeats} interleaved "
          f"runs), no more ticks over {TARGETS['stall_ms']:.0f} ms late than the bare worker: "
          f"{'PASS' if ok else 'FAIL'}")
    result = {
        "benchmark": "gui_latency", "tick_ms": TICK_MS, "targets": TARGETS, "phases": rows,
        "all_pass": bool(ok), "repeats": repeats,
        "setup": {"train_images": n_images, "size": args.size, "epochs": epochs,
                  "pcim_images": n_pcim, "pcim_steps": args.pcim_steps,
                  "device": args.device, "quick": args.quick, "variant": args.variant,
                  "baseline": args.baseline,
                  "trace_stalls": args.trace_stalls},
        "machine": gui_machine(), "date": time.strftime("%Y-%m-%d"),
    }
    write_result(args.json, result)
    viewer.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
