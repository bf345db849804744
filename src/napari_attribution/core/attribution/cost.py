"""What an attribution run costs, before it runs: passes per method, seconds per pass.

A *pass* is one forward and backward pass of one image at the model's input size; a
forward-only pass counts as :data:`FORWARD_SHARE` of one (a backward costs about two
forwards), and as :data:`BATCHED_SHARE` where a method runs its forward passes in large
batches (RISE's masks, occlusion's windows, the evidence check and the curves).
:func:`method_passes` gives a method's passes per image (per tile of a tiled field)
from its parameters and its record in the method registry; :func:`pass_seconds`
measures once, with a tiny timed probe, how long one pass of a model takes on a device
(cached per model, device and input shape); their product, times the images and tiles,
is the expected time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch

#: a forward-only pass, as a share of a forward and backward pass
FORWARD_SHARE = 1.0 / 3.0
#: a forward-only pass run among many in one batch, as a share of a single forward and
#: backward pass: measured 0.37 (forward-only PCIM), 0.54 (RISE) and 0.66 (occlusion) on
#: 2 x 64 px crops of the default DCMIX model, one CPU thread
#: (``benchmarks/method_speed.py``, 2026-12-06; 1/10 had hinted 5-7x too little)
BATCHED_SHARE = 0.5
#: forward passes of the evidence check (2 deletion fractions x (1 + 6 random), + 1)
EVIDENCE_FORWARDS = 15
#: forward passes of deletion and insertion curves (2 modes x 21 steps)
CURVE_FORWARDS = 42


def _forward(n: float, batched: bool = False) -> float:
    return n * (BATCHED_SHARE if batched else FORWARD_SHARE)


def method_passes(method: str, params: Mapping[str, Any] | None = None,
                  size: tuple[int, int] | None = None, channels: int = 1,
                  per_channel: bool = False) -> int:
    """Forward-and-backward passes per image (or tile) that ``method`` runs with
    ``params`` (its defaults where a parameter is not given), from the method's record
    (``registry.AttributionMethod.passes``: model evaluations per image, each with a
    backward when the method needs gradients, else forward-only and batched, counted as
    :data:`BATCHED_SHARE`). ``size`` (H, W; default 64 x 64) matters for occlusion and
    forward-only PCIM; ``per_channel`` occlusion runs each window per channel. At least
    1; ``auto`` counts as PCIM (its choice where gradients work)."""
    from .methods import get_method

    spec = get_method("pcim" if method == "auto" else method)   # unknown: InputError
    h, w = size or (64, 64)
    evaluations = spec.cost(dict(params or {}), int(channels), int(h), int(w), per_channel)
    passes = evaluations if spec.needs_gradients else _forward(evaluations, batched=True)
    return max(1, math.ceil(passes))


def extra_passes(evidence: bool = False, curves: bool = False) -> int:
    """Passes per image added by the evidence check and by deletion/insertion curves."""
    forwards = (EVIDENCE_FORWARDS if evidence else 0) + (CURVE_FORWARDS if curves else 0)
    return math.ceil(_forward(forwards, batched=True))


_CACHE: dict[tuple, float] = {}


def pass_seconds(model: torch.nn.Module, shape: tuple[int, int, int],
                 device: str | torch.device = "cpu", key: str | None = None,
                 repeats: int = 2) -> float:
    """Seconds of one forward and backward pass of ``model`` on one image of ``shape``
    (C, H, W) on ``device``: a warm-up pass, then the best of ``repeats`` timed ones.
    Cached per ``key`` (e.g. the model's hash; default the module's id), device and
    shape, so it is measured once. The model is left untouched (its mode, device and
    gradient flags; only the input's gradient is taken), or a copy is timed where it
    is in training mode or on another device."""
    import copy

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    ck = (key or f"id{id(model)}", str(dev), tuple(int(s) for s in shape))
    if ck in _CACHE:
        return _CACHE[ck]
    param = next(iter(model.parameters()), None)
    here = param is None or param.device == dev
    net = model if here and not model.training else copy.deepcopy(model).to(dev).eval()
    x = torch.zeros((1, *ck[2]), device=dev)
    best = math.inf
    for i in range(repeats + 1):
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        with torch.enable_grad():
            out = net(xi)
            torch.autograd.grad(out.float().sum(), xi)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:  # the first pass warms caches and allocators up
            best = min(best, time.perf_counter() - t0)
    _CACHE[ck] = best
    return best


def cached_pass_seconds(shape: tuple[int, int, int], device: str | torch.device,
                        key: str) -> float | None:
    """The cached :func:`pass_seconds` of ``key`` on ``device`` for ``shape``, or None."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return _CACHE.get((key, str(dev), tuple(int(s) for s in shape)))


def describe_seconds(seconds: float) -> str:
    """``"about 3 s"``, ``"about 2 min"``, ``"under 1 s"``."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"
