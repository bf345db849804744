"""Peak memory of a block of work (CPU: the process's resident-set high-water mark)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_attribution.core.runtime.peak_memory import track_peak

LINUX = sys.platform.startswith("linux")


@pytest.mark.skipif(not LINUX, reason="the CPU peak reads /proc/self")
def test_cpu_peak_sees_a_block_allocated_and_freed_inside():
    big = np.ones(40 * 2**20 // 8)  # 40 MiB used and freed before the block: not counted
    del big
    with track_peak("cpu") as peak:
        a = np.ones(120 * 2**20 // 8)  # 120 MiB, touched
        a[::512] = 2.0
        del a
    assert peak["peak_source"] == "process_rss"
    assert 110 <= peak["peak_mib"] < 200, peak
    with track_peak("cpu") as small:
        b = np.ones(2**20 // 8)
        del b
    assert small["peak_mib"] < 60, small  # the reset took: not the 120 MiB above


def test_unknown_where_it_cannot_be_measured(monkeypatch):
    from napari_attribution.core.runtime import peak_memory

    monkeypatch.setattr(peak_memory, "_reset_high_water", lambda: False)
    with track_peak("cpu") as peak:
        np.ones(1000)
    assert peak == {"peak_mib": None, "peak_source": None}
