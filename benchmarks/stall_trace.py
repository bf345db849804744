"""Where the GUI thread's stalls come from: a watchdog for ``gui_latency.py --trace-stalls``.

A watchdog thread watches the heartbeat of the benchmark's 10 ms timer. When the beat is
more than ``late_ms`` late it samples, a few times during the stall, the GUI thread's
Python stack (``sys._current_frames``), the state of every thread of the process (running,
sleeping) and, once the stall is over, how the GUI thread spent it from
``/proc/self/task/<tid>/schedstat`` (on a CPU, waiting for one in the run queue, or
blocked: sleeping on a lock such as the GIL, or on the X server). It also keeps the
widget's last actions (progress flushes, plot draws, pixmaps, bar and label changes) so
that each stall names what came just before it, and counts them and the paint events per
widget class for every run.

A stack that sits in ``exec`` (the event loop) means the time went to C++ (painting,
composing the window) or to waiting for the GIL before a Python slot could run; the
schedstat split tells the two apart (CPU vs blocked).

Only for diagnosis: the event filter and the wrappers add a little GUI-thread work.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _schedstat(tid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting in the run queue) of thread ``tid``."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _state(tid: int) -> str:
    """One-letter state (R running or runnable, S sleeping, D disk) of thread ``tid``."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _comm(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def thread_names() -> dict[int, str]:
    """Native thread id -> a readable name (Python's thread names, else the OS's)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
    names[threading.main_thread().native_id] = "GUI"
    out = {}
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        out[tid] = names.get(tid) or _comm(tid)
    return out


def cpu_by_group() -> dict[str, float]:
    """CPU seconds of this process's threads now, grouped: GUI, llvmpipe (Mesa's
    software OpenGL), other."""
    gui = threading.main_thread().native_id
    out = {"gui": 0.0, "llvmpipe": 0.0, "other": 0.0}
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        run, _ = _schedstat(tid)
        key = "gui" if tid == gui else "llvmpipe" if _comm(tid).startswith("llvmpipe") \
            else "other"
        out[key] += run
    return out


def _stack(frame, depth: int = 8) -> list[str]:
    """Innermost first: ``function (file:line)``."""
    out = []
    while frame is not None and len(out) < depth:
        code = frame.f_code
        out.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        frame = frame.f_back
    return out


class StallTracer:
    """Watchdog of the GUI thread's heartbeat; see the module docstring."""

    def __init__(self, tick_ms: float = 10.0, late_ms: float = 40.0, samples: int = 4,
                 sample_ms: float = 10.0) -> None:
        self.tick_ms, self.late_ms = tick_ms, late_ms
        self.samples, self.sample_ms = samples, sample_ms
        self.gui_ident = threading.main_thread().ident
        self.gui_tid = threading.main_thread().native_id
        self.beat = time.perf_counter()
        self.t0 = self.beat
        self.actions: deque[tuple[float, str]] = deque(maxlen=6)
        self.counts: Counter[str] = Counter()
        self.paints: Counter[str] = Counter()
        self.stalls: list[dict] = []
        self.label = ""
        self.active = False  # the benchmark's timer runs (no stalls traced otherwise)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._filter = None

    # -- fed by the GUI thread ---------------------------------------------------------------

    def heartbeat(self) -> None:
        self.beat = time.perf_counter()

    def note(self, what: str) -> None:
        """The widget did ``what`` (a repaint-triggering call)."""
        self.actions.append((time.perf_counter(), what))
        self.counts[what] += 1

    # -- a run -------------------------------------------------------------------------------

    def start_run(self, label: str) -> None:
        """Counters to zero; the watchdog labels the stalls it finds with ``label``."""
        self.label = label
        self.counts = Counter()
        self.paints = Counter()
        self.actions.clear()
        self._cpu0 = cpu_by_group()
        self._n0 = len(self.stalls)
        self.beat = time.perf_counter()

    def end_run(self) -> dict:
        """This run's counts, paint events, CPU seconds per thread group and stalls."""
        cpu = cpu_by_group()
        return {"calls": dict(self.counts), "paints": dict(self.paints.most_common(12)),
                "cpu_s": {k: round(cpu[k] - self._cpu0[k], 3) for k in cpu},
                "traced_stalls": self.stalls[self._n0:]}

    def __enter__(self) -> StallTracer:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    # -- the watchdog --------------------------------------------------------------------------

    def _watch(self) -> None:
        traced = None
        while not self._stop.is_set():
            time.sleep(0.005)
            beat = self.beat
            late = (time.perf_counter() - beat) * 1000 - self.tick_ms
            if self.active and late > self.late_ms and beat != traced:
                traced = beat
                self._trace(beat)

    def _trace(self, beat: float) -> None:
        names = thread_names()
        stat0 = {tid: _schedstat(tid) for tid in names}
        t_detect = time.perf_counter()
        before = [f"{(t - beat) * 1000:+.0f} ms {what}" for t, what in list(self.actions)]
        samples = []
        me = threading.get_native_id()
        for _ in range(self.samples):
            asked = time.perf_counter()
            frames = sys._current_frames()
            got = time.perf_counter()
            gui = frames.get(self.gui_ident)
            running = sorted(names.get(int(t), t) for t in os.listdir("/proc/self/task")
                             if _state(int(t)) == "R" and int(t) not in (self.gui_tid, me))
            others = {}
            for t in threading.enumerate():
                f = frames.get(t.ident)
                if t.ident not in (self.gui_ident, threading.get_ident()) and f is not None:
                    others[t.name] = _stack(f, 2)
            samples.append({"at_ms": round((got - beat) * 1000 - self.tick_ms, 1),
                            "watchdog_gil_wait_ms": round((got - asked) * 1000, 1),
                            "gui_state": _state(self.gui_tid),
                            "gui_stack": _stack(gui), "running": running,
                            "python_threads": others})
            time.sleep(self.sample_ms / 1000)
            if self.beat != beat:
                break
        while self.beat == beat and not self._stop.is_set() and \
                time.perf_counter() - beat < 5:
            time.sleep(0.001)
        end = self.beat
        span = max(end - t_detect, 1e-6)
        stat1 = {tid: _schedstat(tid) for tid in stat0}
        gui0, gui1 = stat0[self.gui_tid], stat1[self.gui_tid]
        cpu = {names[t]: round((stat1[t][0] - stat0[t][0]) * 1000, 1) for t in stat0
               if stat1[t][0] - stat0[t][0] > 0.0005}
        self.stalls.append({
            "run": self.label, "at_s": round(beat - self.t0, 2),
            "late_ms": round((end - beat) * 1000 - self.tick_ms, 1),
            # from the watchdog's detection to the stall's end
            "window_ms": round(span * 1000, 1),
            "gui_cpu_ms": round((gui1[0] - gui0[0]) * 1000, 1),
            "gui_runqueue_ms": round((gui1[1] - gui0[1]) * 1000, 1),
            "thread_cpu_ms": cpu,
            "widget_before": before,
            "samples": samples})

    # -- paint events ----------------------------------------------------------------------

    def count_paints(self, app) -> None:
        """Count Paint, UpdateRequest (a window flush) and LayoutRequest events per
        receiver class, from an application-wide event filter."""
        from qtpy.QtCore import QEvent, QObject

        kinds = {QEvent.Type.Paint: "paint", QEvent.Type.UpdateRequest: "flush",
                 QEvent.Type.LayoutRequest: "layout"}
        tracer = self

        class Filter(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 (Qt API)
                kind = kinds.get(event.type())
                if kind is not None:
                    tracer.paints[f"{kind} {type(obj).__name__}"] += 1
                return False

        self._filter = Filter()
        app.installEventFilter(self._filter)


def wrap(obj: Any, name: str, tracer: StallTracer, what: str | None = None) -> None:
    """Replace ``obj.name`` (a method called as ``obj.name(...)``) with one that notes the
    call in ``tracer`` first."""
    fn = getattr(obj, name)

    def noted(*args, **kwargs):
        tracer.note(what or name)
        return fn(*args, **kwargs)

    setattr(obj, name, noted)


def instrument(tracer: StallTracer, train: Any, attr: Any) -> None:
    """Note the widgets' repaint-triggering calls: the runner's progress display, bar and
    label changes, live plot draws and pixmaps, napari's progress bar moves."""
    from napari.utils import progress

    for w, tag in ((train, "train"), (attr, "attr")):
        runner = w.runner
        wrap(runner, "_show_progress", tracer, f"{tag}: progress shown")
        wrap(runner._bar, "setValue", tracer, f"{tag}: bar.setValue")
        wrap(runner._bar, "setFormat", tracer, f"{tag}: bar.setFormat")
        wrap(runner._bar, "setRange", tracer, f"{tag}: bar.setRange")
        wrap(runner._status, "setText", tracer, f"{tag}: status.setText")
    wrap(train, "_plot", tracer, "train: plot update")
    wrap(train.plot, "draw", tracer, "train: plot draw (Agg render started)")
    wrap(train.plot.image, "setPixmap", tracer, "train: plot setPixmap")
    wrap(train.model_label, "setText", tracer, "train: model_label.setText")
    update = progress.update

    def noted_update(self, *args, **kwargs):
        tracer.note("napari progress.update")
        return update(self, *args, **kwargs)

    progress.update = noted_update


#: Stall categories, first match wins: (name, test on a traced stall).
CATEGORIES = (
    ("job start in the GUI thread", lambda smp: any(
        "start_training" in f or "run (attribution_widget" in f or "bare_worker" in f
        for f in smp["gui_stack"])),
    ("plot render thread running", lambda smp: any(
        "_render" in k for k in smp["python_threads"]) or any(
        "_render" in k for k in smp["running"])),
    ("window repaint/composition (main window event, progress bar)", lambda smp: any(
        "qt_main_window" in f or "qt_progress_bar" in f or "processEvents" in f
        for f in smp["gui_stack"])),
    ("GUI thread blocked in the event loop", lambda smp: smp["gui_state"] != "R"),
    ("GUI thread runnable in the event loop (waiting for a CPU)", lambda smp: True),
)


def classify(stall: dict) -> str:
    """The first category (of :data:`CATEGORIES`) that any sample of ``stall`` fits."""
    for name, test in CATEGORIES:
        if any(test(smp) for smp in stall["samples"]):
            return name
    return "unsampled"


def report(rows: dict[str, dict]) -> None:
    """Print, per phase, the widget's calls and paint events per run against the bare
    worker's, then every traced stall: how late, how the GUI thread spent it, its stack,
    the threads running, and what the widget did just before."""
    for phase, r in rows.items():
        if "trace" not in r:
            continue
        print(f"\n== {phase}: ticks > 50 ms per run, widget {r['runs_stalls']} vs bare "
              f"{r['baseline_runs_stalls']}")
        for kind, traces in (("widget", r["trace"]), ("bare", r["baseline_trace"])):
            for i, t in enumerate(traces):
                calls = ", ".join(f"{k} {v}" for k, v in sorted(t["calls"].items()))
                paints = ", ".join(f"{k} {v}" for k, v in t["paints"].items())
                cpu = t["cpu_s"]
                print(f"  {kind} #{i + 1}: CPU s GUI {cpu['gui']:.2f} llvmpipe "
                      f"{cpu['llvmpipe']:.2f} other {cpu['other']:.2f}")
                print(f"    calls: {calls or '-'}")
                print(f"    events: {paints or '-'}")
        for kind, traces in (("widget", r["trace"]), ("bare", r["baseline_trace"])):
            cats = Counter(classify(s) for t in traces for s in t["traced_stalls"])
            print(f"  {kind} stalls by what the samples show: "
                  + ("; ".join(f"{k}: {v}" for k, v in cats.most_common()) or "none"))
        for traces in (r["trace"], r["baseline_trace"]):
            for t in traces:
                for s in t["traced_stalls"]:
                    print_stall(s)


def print_stall(s: dict) -> None:
    """One traced stall, a few lines."""
    print(f"  stall {s['run']} at {s['at_s']:.2f} s: {s['late_ms']:.0f} ms late; in the "
          f"last {s['window_ms']:.0f} ms the GUI thread ran {s['gui_cpu_ms']:.0f} ms, waited "
          f"{s['gui_runqueue_ms']:.0f} ms for a CPU (rest: blocked)")
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(s["thread_cpu_ms"].items(),
                                                        key=lambda kv: -kv[1]))
    print(f"    thread CPU ms: {cpu}")
    for smp in s["samples"]:
        stack = " < ".join(smp["gui_stack"][:3])
        others = "; ".join(f"{k}: {v[0]}" for k, v in smp["python_threads"].items())
        print(f"    +{smp['at_ms']:.0f} ms GUI {smp['gui_state']} [{stack}] running: "
              f"{', '.join(smp['running']) or '-'}; watchdog GIL wait "
              f"{smp['watchdog_gil_wait_ms']:.0f} ms; python: {others or '-'}")
    if s["widget_before"]:
        print(f"    widget before: {' | '.join(s['widget_before'][-3:])}")
