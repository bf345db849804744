"""Peak memory of a block of work, on the CPU as on CUDA.

CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus what was
allocated at the start (tensors only). CPU (Linux): the process's resident-set high-water
mark (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) minus the resident set
at the start, after handing freed memory back to the system (so that blocks the allocator
kept from earlier work are not silently reused and missed). The CPU figure is the whole
process's: other threads' work in the same span counts too. ``None`` where neither is
available (CPU off Linux, or a kernel that refuses the reset).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from .allocator import release_freed_memory

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_high_water() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def track_peak(device: torch.device | str = "cpu") -> Iterator[dict]:
    """Measure the block's peak memory above its start: yields a dict that holds, after
    the block, ``peak_mib`` (float or None) and ``peak_source`` (how it was measured)."""
    dev = torch.device(device)
    out: dict = {"peak_mib": None, "peak_source": None}
    start = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
    elif dev.type == "cpu":
        release_freed_memory()
        if _reset_high_water():
            start = _status_kib("VmRSS")
    try:
        yield out
    finally:
        if start is not None and dev.type == "cuda":
            torch.cuda.synchronize(dev)
            out["peak_mib"] = (torch.cuda.max_memory_allocated(dev) - start) / 2**20
            out["peak_source"] = "cuda_allocated"
        elif start is not None:
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                out["peak_mib"] = max(0, hwm - start) / 1024
                out["peak_source"] = "process_rss"
