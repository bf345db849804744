"""What a run costs before it runs (``core.attribution.cost``) and torch's threads
beside the GUI (``core.runtime.threads``)."""

from __future__ import annotations

import pytest
import torch

from napari_attribution.core.attribution.cost import (
    BATCHED_SHARE,
    cached_pass_seconds,
    describe_seconds,
    extra_passes,
    method_passes,
    pass_seconds,
)
from napari_attribution.core.runtime import threads
from napari_attribution.core.runtime.errors import InputError


def test_method_passes_follow_each_methods_parameters():
    assert method_passes("pcim", {"steps": 12}) == 12
    assert method_passes("auto", {}) == method_passes("pcim", {}) == 8
    assert method_passes("saliency", {}) == method_passes("gradcam", {}) == 1
    assert method_passes("integrated_gradients", {"n_steps": 20}) == 20
    assert method_passes("extremal_mask", {"steps": 10}) == 20
    assert method_passes("rise", {"n_masks": 500}) == round(500 * BATCHED_SHARE)
    assert method_passes("rise", {}) == 2 * method_passes("rise", {"n_masks": 500})
    # occlusion: the default window scales with the image; an explicit one does not
    small = method_passes("occlusion", {"window": 4, "stride": 2}, size=(32, 32))
    large = method_passes("occlusion", {"window": 4, "stride": 2}, size=(64, 64))
    assert large > 3 * small
    assert method_passes("occlusion", {}, size=(32, 32)) == \
        method_passes("occlusion", {}, size=(64, 64))
    assert method_passes("occlusion", {}, channels=3, per_channel=True) > \
        2 * method_passes("occlusion", {}, channels=3)
    bb = method_passes("pcim_blackbox", {})
    assert bb > 1 and method_passes("pcim_blackbox", {"max_forward": 300}) < bb
    with pytest.raises(InputError):
        method_passes("no-such-method", {})
    # the expensive ones cost more than the cheap ones, in the order measured on 64 px
    # crops by benchmarks/method_speed.py (gradcam 9, PCIM 61, extremal 886, RISE 5878 ms)
    order = [method_passes(m, {}) for m in ("gradcam", "pcim", "extremal_mask", "rise")]
    assert order == sorted(order) and len(set(order)) == 4
    assert extra_passes() == 0 < extra_passes(evidence=True) < extra_passes(True, True)


def test_pass_seconds_is_measured_once_and_leaves_the_model_alone():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    net.train()
    assert cached_pass_seconds((2, 16, 16), "cpu", "k1") is None
    t = pass_seconds(net, (2, 16, 16), "cpu", key="k1")
    assert 0 < t < 5
    assert cached_pass_seconds((2, 16, 16), "cpu", "k1") == t
    assert pass_seconds(net, (2, 16, 16), "cpu", key="k1") == t          # cached
    assert cached_pass_seconds((2, 32, 32), "cpu", "k1") is None          # per size
    assert net.training and all(p.requires_grad and p.grad is None
                                for p in net.parameters())


def test_describe_seconds():
    assert describe_seconds(0.2) == "under 1 s"
    assert describe_seconds(12.4) == "about 12 s"
    assert describe_seconds(600) == "about 10 min"
    assert describe_seconds(4 * 3600) == "about 4.0 h"


def test_gui_leaves_a_core_unless_the_user_set_threads(monkeypatch):
    assert threads.gui_thread_count(8) == 7 and threads.gui_thread_count(1) == 1
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "_DONE", {})
        assert threads.leave_a_core_for_gui({"OMP_NUM_THREADS": "3"}) is None
        assert torch.get_num_threads() == before
        monkeypatch.setattr(threads, "_DONE", {})
        n = threads.leave_a_core_for_gui({})
        assert n == min(threads.gui_thread_count(), before) == torch.get_num_threads()
        assert threads.leave_a_core_for_gui({}) == n     # once per process
    finally:
        torch.set_num_threads(before)
