"""torch's thread count beside a GUI: leave the event loop a core of its own."""

from __future__ import annotations

import os

#: environment variables through which a user sets the thread count themselves
USER_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS")

_DONE: dict[str, int | None] = {}


def gui_thread_count(cpus: int | None = None) -> int:
    """Threads for torch's intra-op pool beside a GUI: every core but one (at least 1)."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, int(cpus) - 1)


def leave_a_core_for_gui(environ: dict | None = None) -> int | None:
    """Set torch's intra-op thread count to :func:`gui_thread_count` (once per process),
    unless the user set one of :data:`USER_THREAD_VARS`. Returns the count set, or None
    when it was left alone."""
    import torch

    env = os.environ if environ is None else environ
    if "done" in _DONE:
        return _DONE["done"]
    if any(str(env.get(k, "")).strip() for k in USER_THREAD_VARS):
        _DONE["done"] = None
        return None
    n = min(gui_thread_count(), max(1, torch.get_num_threads()))
    torch.set_num_threads(n)
    _DONE["done"] = n
    return n
