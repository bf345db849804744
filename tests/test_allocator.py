"""The allocator settings for long CPU work (glibc only)."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from napari_attribution.core.runtime import allocator

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh_cache():
    allocator.reuse_freed_memory.cache_clear()
    yield
    allocator.reuse_freed_memory.cache_clear()


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_freed_blocks_are_reused_not_faulted_in_again(fresh_cache, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert allocator.reuse_freed_memory() is True
    assert allocator.reuse_freed_memory() is True  # once per process, cached
    # a field tile's forward/backward pass (width-32 CNN, 272 px): with glibc's default
    # dynamic thresholds each pass faults ~5600 pages in afresh (measured), ~230 here
    from napari_attribution.core.channels.backbones import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(1, 2).eval().requires_grad_(False)
    x = torch.rand(1, 1, 272, 272)

    def tile_pass() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(net(xi)[0, 1], xi)

    for _ in range(3):
        tile_pass()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        tile_pass()
    per_pass = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8
    assert per_pass < 1500, per_pass


def test_user_thresholds_are_left_alone(fresh_cache, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator.reuse_freed_memory() is False


def test_release_freed_memory_is_safe_to_call_twice():
    allocator.release_freed_memory()
    allocator.release_freed_memory()
    if GLIBC:
        assert allocator._malloc_trim() is not None
