"""PCIM over a whole field of view: one map on one scale, however many tiles it takes.

Per-tile PCIM (the old path) optimises each tile on its own: the softmax that makes the
weights mean-one and the normalised step (largest update = ``lr``) are both per tile, so a
tile holding one faint cell and a tile holding ten bright ones end with maps of the same
size, and an empty tile gets as much "evidence" as a full one. Field PCIM instead keeps
**one set of logits for the whole field** (overlaps share them, so there are no seams to
blend) and per step:

1. forms the field's weights ``a = N · softmax(l)`` over all its pixels (one normaliser);
2. runs the model on batches of tiles cut from the blended field; each tile's loss
   gradient w.r.t. its crop of ``a`` is accumulated with a window that fades towards the
   tile border (pixels the model sees near its zero padding count less), then divided by
   the summed window, so a pixel's gradient is the weighted mean over the tiles that see it;
3. takes one normalised step for the field (the largest update in the *field* is ``lr``).

A map value therefore means the same everywhere in the field, and the overlap only has to
cover the model's border effects (default ``input_size // 16`` instead of a quarter tile).

Background tiles (nothing above a field-level intensity threshold in any channel) are not
run at all: their pixels keep weight one (log-weight 0 = no evidence either way) and are
left out of the softmax. When the model takes any input size (fully convolutional with
global pooling) and the whole field fits the memory budget, the field is one tile.

Memory: the field (image, two substrates, logits, weights, gradient: a few float32 copies)
plus one batch of tiles' activations; the batch size comes from the free memory (CUDA) or
the budget, and a batch that runs out of memory is retried at half the size. On the CPU
freed blocks of up to 32 MiB are kept for the next tile (:func:`.allocator.
reuse_freed_memory`) instead of faulting fresh pages in for every tile pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.tiling import tile_starts
from ..runtime.allocator import reuse_freed_memory
from ..runtime.errors import InputError
from ..runtime.progress import Progress
from .pcim import (
    PCIMConfig,
    _entropy,
    _normalised_update,
    _phase,
    _target_loss,
    _tv,
    blend,
    make_substrate,
)

#: default fraction of the field's intensity range (blurred p5 .. p99.9) a tile must reach
#: somewhere in some channel not to count as background
BACKGROUND_FRACTION = 0.05
#: on CPU one tile at a time is fastest per tile (the convolutions are memory-bound:
#: 0.09 s per 256 px tile at batch 1, 0.12 s at 4, 0.23 s at 16 with a width-32 CNN)
CPU_MAX_BATCH = 1
#: float32 convolutions channels-last on CPU (oneDNN): 0.05-0.06 s per 256 px tile
#: forward/backward instead of 0.08 s, and 0.02 s instead of 0.06 s per probe forward
#: pass (width-32 CNN, one thread), the same results to float rounding
CPU_CHANNELS_LAST = True
#: when the model takes any input size, tiles may grow by up to this fraction of
#: ``input_size`` so that fewer of them cover the field (2048 px: 8 tiles of 272
#: instead of 9 of 256 per side, 21 % fewer tiles, 11 % fewer pixels to run)
FIT_TILE_GROWTH = 0.125
#: fitted tile sides are multiples of this: with an overlap that is one too (the
#: default 16 px for 256 px inputs) every tile starts on the same phase of the model's
#: pooling grid (strides up to 16), so the same cell gets the same gradient wherever
#: it lies (unaligned 270 px tiles doubled the benchmark's probe CV, 0.14 -> 0.27)
FIT_TILE_ALIGN = 16
#: the weights' gradient in closed form where PCIM's options allow (one scale, no cap,
#: no regulariser); False = autograd through the field's softmax (tests compare both)
CLOSED_FORM = True
#: fraction of free memory a batch may use on an accelerator
GPU_MEMORY_FRACTION = 0.6
#: memory budget on CPU when none is given (bytes)
CPU_DEFAULT_BUDGET = 768 * 2**20


def window(tile_h: int, tile_w: int, overlap: int) -> np.ndarray:
    """(tile_h, tile_w) weights: a raised-cosine ramp over ``overlap`` px at each border
    (never exactly 0), 1 inside."""
    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        if overlap > 0:
            t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
            edge = 0.5 - 0.5 * np.cos(np.pi * t)
            r[:overlap] = np.maximum(edge, 1e-3)
            r[-overlap:] = np.maximum(edge[::-1], 1e-3)
        return r
    return np.outer(ramp(tile_h), ramp(tile_w))


def background_tiles(x: np.ndarray, grid: list[tuple[int, int]], tile_h: int, tile_w: int,
                     fraction: float | None = BACKGROUND_FRACTION) -> np.ndarray:
    """Boolean per tile of ``grid``: True where no channel of the (lightly blurred) field
    ``x`` (C, H, W) rises above its field-level threshold, the larger of
    ``p5 + fraction * (p99.9 - p5)`` and ``p50 + 6 sigma`` (sigma, the noise of the
    blurred background, from ``(p50 - p5) / 1.645``). ``fraction`` None or 0 = no tile
    is background."""
    if not fraction:
        return np.zeros(len(grid), bool)
    from .pcim import gaussian_blur

    xt = torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32))
    sm = gaussian_blur(xt, 2.0)[0].numpy()
    step = max(1, int(math.sqrt(sm[0].size / 2e5)))  # percentiles on a subsample
    sub = sm[:, ::step, ::step].reshape(sm.shape[0], -1)
    p5, p50, hi = np.percentile(sub, [5, 50, 99.9], axis=1)
    sigma = (p50 - p5) / 1.645
    thr = np.maximum(p5 + fraction * (hi - p5), p50 + 6 * sigma)
    live = hi > thr  # a channel with nothing above its noise carries nothing to find
    out = np.zeros(len(grid), bool)
    if not live.any():
        return out
    for k, (y, xx) in enumerate(grid):
        peak = sm[live, y:y + tile_h, xx:xx + tile_w].reshape(int(live.sum()), -1).max(1)
        out[k] = bool(np.all(peak <= thr[live]))
    return out


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes (CUDA: the driver's figure; CPU: available RAM),
    None when unknown. Tests replace this to simulate small devices."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def activation_bytes_per_pixel(model: torch.nn.Module, channels: int, side: int,
                               device: torch.device) -> float:
    """Bytes of module outputs per input pixel for one (1, C, side, side) forward pass:
    what a forward/backward keeps per pixel, roughly (outputs of every leaf module)."""
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())] or [model]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, side, side, device=device))
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 4 * channels * side * side) / float(side * side)


def takes_any_size(model: torch.nn.Module, channels: int, side: int,
                   device: torch.device) -> bool:
    """Whether ``model`` maps a non-square input larger than ``side`` to the same logits
    shape (fully convolutional with global pooling): one probe forward pass."""
    try:
        with torch.no_grad():
            a = model(torch.zeros(1, channels, side, side, device=device))
            b = model(torch.zeros(1, channels, side + 24, side + 40, device=device))
    except Exception:
        return False
    return a.shape == b.shape


@dataclass
class FieldPlan:
    """How a field is cut: tile size, origins, which are background, batch size."""

    tile_h: int
    tile_w: int
    overlap: int
    grid: list[tuple[int, int]]
    background: np.ndarray
    batch_size: int
    one_pass: bool
    bytes_per_tile: float
    budget: float
    notes: list[str] = field(default_factory=list)
    #: PCIM steps taken, mixed precision used and its check (set by :func:`pcim_field`)
    steps_run: int = 0
    amp: bool = False
    amp_check: dict | None = None
    channels_last: bool = False
    #: tile forward/backward passes run and what the model's fast copy changed
    tile_passes: int = 0
    model_rewrites: dict | None = None

    def describe(self) -> dict:
        return {"tiling": "one_pass" if self.one_pass else "field",
                "tile": [self.tile_h, self.tile_w], "tile_overlap": self.overlap,
                "tiles": len(self.grid), "background_tiles": int(self.background.sum()),
                "tile_batch": self.batch_size, "memory_budget_bytes": self.budget,
                "steps_run": self.steps_run, "amp": self.amp, "amp_check": self.amp_check,
                "channels_last": self.channels_last, "tile_passes": self.tile_passes,
                "model_rewrites": self.model_rewrites,
                "notes": list(self.notes)}


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error from torch (CUDA, MPS or CPU)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, (RuntimeError, MemoryError)) and (
        isinstance(err, MemoryError) or "out of memory" in str(err).lower()
        or "can't allocate memory" in str(err).lower())


def smaller_batch(err: BaseException, batch: int, device: torch.device) -> int:
    """Half of ``batch`` after an out-of-memory ``err`` (the accelerator's cache emptied);
    re-raises any other error, and out of memory with a single image or tile as a clear
    error."""
    if not is_oom(err):
        raise err
    if batch <= 1:
        raise InputError(f"out of memory on {device} with a single image (or tile); use "
                         "smaller images, a smaller input_size, or the CPU") from None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return max(1, batch // 2)


def memory_budget_for(device: torch.device, given: float | None = None) -> float:
    """Bytes one batch may use: ``given``, else :data:`GPU_MEMORY_FRACTION` of the free
    memory on CUDA, else :data:`CPU_DEFAULT_BUDGET` (at most the available RAM)."""
    if given is not None:
        if not given > 0:
            raise InputError(f"memory_budget must be positive (bytes); got {given}")
        return float(given)
    free = free_memory_bytes(device)
    if device.type == "cuda" and free is not None:
        return GPU_MEMORY_FRACTION * free
    return float(min(CPU_DEFAULT_BUDGET, free)) if free else float(CPU_DEFAULT_BUDGET)


def fitted_tile(length: int, side: int, overlap: int, growth: float = FIT_TILE_GROWTH,
                align: int = FIT_TILE_ALIGN) -> int:
    """Tile length along one axis of ``length`` px: ``side``, or the shortest multiple
    of ``align`` up to ``side * (1 + growth)`` at which fewer tiles (overlapping by
    ``overlap``) cover the axis (the whole axis when it is that short)."""
    best = side
    n_best = len(tile_starts(length, side, overlap))
    top = side + int(side * growth)
    if length <= top:
        return length if n_best > 1 else side
    for n in range(n_best - 1, 0, -1):
        t = max(side, -(-(length + (n - 1) * overlap) // n))
        t = -(-t // align) * align
        if t > top:
            break
        if t > overlap and len(tile_starts(length, t, overlap)) == n:
            best = t
    return best


def batch_for(bytes_per_tile: float, budget: float, cap: int, n_tiles: int) -> int:
    """Tiles per batch: as many as fit ``budget``, at most ``cap`` and ``n_tiles``,
    at least one."""
    return max(1, min(int(cap), int(budget // max(bytes_per_tile, 1.0)), int(n_tiles)))


def plan_field(model: torch.nn.Module, x: np.ndarray, input_size: int | None,
               overlap: int | None, device: torch.device, max_batch: int | None = None,
               memory_budget: float | None = None, one_pass: bool | None = None,
               background: float | None = BACKGROUND_FRACTION) -> FieldPlan:
    """Choose one pass or tiles, the tile batch size and the background tiles for a
    field ``x`` (C, H, W). ``one_pass`` None = when the model takes any input size and
    the whole field fits the budget; ``memory_budget`` None = a share of the free memory
    (CUDA) or :data:`CPU_DEFAULT_BUDGET` (CPU)."""
    c, h, w = x.shape
    side = int(input_size) if input_size else max(h, w)
    probe_side = min(side, h, w)
    bpp = activation_bytes_per_pixel(model, c, probe_side, device)
    # forward outputs + their gradients + the field-sized inputs of one tile (x, a, blend)
    per_px = 2.0 * bpp + 4 * 4 * c
    budget = memory_budget_for(device, memory_budget)
    notes: list[str] = []
    whole = input_size is None or max(h, w) <= side
    if not whole and one_pass is not False:
        fits = per_px * h * w <= budget
        if one_pass or fits:
            if takes_any_size(model, c, probe_side, device):
                whole = True
                notes.append("one pass: the model takes any input size and the field fits "
                             f"{'the' if fits else 'no'} memory budget")
            elif one_pass:
                raise InputError("one_pass=True but the model does not accept inputs "
                                 f"larger than {side} px")
        else:
            notes.append(f"tiles: one pass would need ~{per_px * h * w / 2**20:.0f} MiB, "
                         f"budget {budget / 2**20:.0f} MiB")
    if whole:
        th, tw, ov = h, w, 0
        grid = [(0, 0)]
    else:
        th = tw = side
        ov = int(overlap if overlap is not None else side // 16)
        tile_starts(min(h, w), side, ov)  # checks the overlap
        if FIT_TILE_GROWTH > 0 and takes_any_size(model, c, probe_side, device):
            th, tw = fitted_tile(h, side, ov), fitted_tile(w, side, ov)
            if (th, tw) != (side, side):
                notes.append(f"tiles {th}x{tw} px: the model takes any input size and "
                             f"{th}x{tw} tiles cover the field with fewer than {side} px "
                             "ones")
        grid = [(y, x) for y in tile_starts(h, th, ov) for x in tile_starts(w, tw, ov)]
    per_tile = per_px * th * tw
    cap = max_batch if max_batch is not None else len(grid)
    if device.type == "cpu":
        cap = min(cap, CPU_MAX_BATCH)
    batch = batch_for(per_tile, budget, cap, len(grid))
    bg = (background_tiles(x, grid, th, tw, background) if not whole and background
          else np.zeros(len(grid), bool))
    if bg.all():
        bg[:] = False  # an all-background field is still explained (nothing to compare)
        notes.append("every tile looked like background: all explained")
    return FieldPlan(th, tw, ov, grid, bg, batch, whole, per_tile, budget, notes)


def fast_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return bool(torch.backends.mkldnn.is_available()) and (
        " amx_bf16" in flags or " avx512_bf16" in flags)


def amp_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The reduced precision for the model's forward pass, or None for float32:
    CUDA: fp16 (more mantissa than bf16; on unless ``amp=False``); CPU: bf16 when the
    CPU has native bf16 units (or ``amp=True``). :func:`check_amp` then keeps it only
    where it leaves the output and the gradient as they were."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and (amp or fast_bf16_cpu()):
        return torch.bfloat16
    return None


#: mixed precision is kept only if, on the field's first tiles, class probabilities move
#: less than this and the input gradient keeps at least ``AMP_MIN_COSINE`` cosine
AMP_MAX_PROB_DIFF = 0.02
AMP_MIN_COSINE = 0.98


def channels_last_for(device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """Whether the model runs channels-last: on CPUs with oneDNN (float32 when
    :data:`CPU_CHANNELS_LAST`, always for bf16), never elsewhere."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype is not None or CPU_CHANNELS_LAST


def _forward_grad(model, xb, sb, ab, tgt, loss, delete, dtype, channels_last=None):
    """Loss per tile and its gradient w.r.t. the weights ``ab`` (one forward/backward),
    the forward in ``dtype`` (autocast) when given, the input channels-last when
    ``channels_last`` (None: with bf16 on CPU)."""
    import contextlib

    ab = ab.detach().requires_grad_(True)
    ctx = (torch.autocast(xb.device.type, dtype=dtype) if dtype is not None
           else contextlib.nullcontext())
    with torch.enable_grad():
        inp = blend(xb, ab, sb)
        if channels_last is None:
            channels_last = dtype is not None and xb.device.type == "cpu"
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with ctx:
            out = model(inp)
        loss_i = _target_loss(out.float(), tgt.expand(len(xb)), loss)
        if delete:
            loss_i = -loss_i
        (g,) = torch.autograd.grad(loss_i.sum(), ab)
    return out.detach().float(), loss_i.detach(), g.detach().float()


def check_amp(model, xb, sb, ab, tgt, loss, dtype) -> dict:
    """Compare the reduced-precision forward/backward with float32 on one batch:
    largest probability difference and cosine of the weight gradients."""
    o32, _, g32 = _forward_grad(model, xb, sb, ab, tgt, loss, False, None)
    o16, _, g16 = _forward_grad(model, xb, sb, ab, tgt, loss, False, dtype)
    dp = float((torch.softmax(o32, 1) - torch.softmax(o16, 1)).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0))
    return {"max_prob_diff": dp, "grad_cosine": cos,
            "ok": dp <= AMP_MAX_PROB_DIFF and cos >= AMP_MIN_COSINE}


#: convolutions from at most this many input channels get :class:`InputGradConv2d`
#: in the fast copy (oneDNN's input gradient of the 1 -> 32 channel first convolution
#: took 9-35 ms per 272 px tile, one matrix product and nine shifted sums 4-5 ms)
FAST_GRAD_MAX_IN = 4


class _ConvInputGrad(torch.autograd.Function):
    """A stride-1 convolution into few channels whose input gradient is one matrix
    product (output gradient, pixels x out-channels, times the kernel) followed by the
    shifted sum of its ``kh * kw`` planes (col2im); no weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.padding, ctx.x_dtype = padding, x.dtype
        return torch.nn.functional.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, g):
        (weight,) = ctx.saved_tensors
        co, ci, kh, kw = weight.shape
        n, _, h, w = g.shape
        ph, pw = ctx.padding
        # (ci * kh * kw, n * h * w): one product, whatever g's memory layout
        cols = weight.reshape(co, -1).t().to(g.dtype) @ g.permute(0, 2, 3, 1).reshape(-1, co).t()
        cols = cols.view(ci, kh * kw, n, h, w)
        # the input gradient with a border of kh - 1, kw - 1 px (stride 1)
        out = g.new_zeros(n, ci, h + kh - 1, w + kw - 1)
        for i in range(kh * kw):
            dy, dx = divmod(i, kw)
            out[:, :, dy:dy + h, dx:dx + w] += cols[:, i].transpose(0, 1)
        hi, wi = h + kh - 1 - 2 * ph, w + kw - 1 - 2 * pw
        gx = out[:, :, ph:ph + hi, pw:pw + wi]
        return gx.to(ctx.x_dtype), None, None, None


class InputGradConv2d(torch.nn.Conv2d):
    """The same convolution, its input gradient taken as a forward convolution (see
    :class:`_ConvInputGrad`) while its weights need no gradient."""

    @classmethod
    def eligible(cls, conv: torch.nn.Module) -> bool:
        c = conv
        return (type(c) is torch.nn.Conv2d and c.in_channels <= FAST_GRAD_MAX_IN
                and c.groups == 1 and tuple(c.stride) == (1, 1)
                and tuple(c.dilation) == (1, 1) and c.padding_mode == "zeros"
                and not isinstance(c.padding, str)
                and all(0 <= p < k for p, k in zip(c.padding, c.kernel_size, strict=True)))

    @classmethod
    def of(cls, conv: torch.nn.Conv2d) -> InputGradConv2d:
        new = cls.__new__(cls)
        new.__dict__ = conv.__dict__.copy()
        new._parameters = dict(conv._parameters)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
            return super().forward(x)
        return _ConvInputGrad.apply(x, self.weight, self.bias, tuple(self.padding))


def _fast_input_grads(net: torch.nn.Module) -> int:
    """Replace, in place, each eligible convolution into few channels (the model's
    first, typically) by :class:`InputGradConv2d`. Returns how many."""
    done = 0
    for mod in list(net.modules()):
        for name, child in list(mod._modules.items()):
            if child is not None and InputGradConv2d.eligible(child):
                mod._modules[name] = InputGradConv2d.of(child)
                done += 1
    return done


def _relu_after_pool(net: torch.nn.Module) -> int:
    """Move every ReLU that a Sequential feeds straight into a MaxPool2d (the child
    before the pool, or the last child of a plain Sequential before it) behind the pool,
    in place. ``max(relu(x)) = relu(max(x))`` (ReLU is monotone) and the gradient is the
    same, but the ReLU and its backward run on a quarter of the pixels (2x2 pools).
    Returns how many moved."""
    from torch import nn

    moved = 0
    for mod in list(net.modules()):
        if type(mod) is not nn.Sequential:
            continue
        names = list(mod._modules)
        for n1, n2 in zip(names, names[1:], strict=False):
            a, b = mod._modules[n1], mod._modules[n2]
            if type(b) is not nn.MaxPool2d or b.return_indices:
                continue
            if type(a) is nn.ReLU:
                mod._modules[n1] = nn.Identity()
            elif type(a) is nn.Sequential and len(a) and type(a[-1]) is nn.ReLU:
                a._modules[list(a._modules)[-1]] = nn.Identity()
            else:
                continue
            mod._modules[n2] = nn.Sequential(b, nn.ReLU(inplace=True))
            moved += 1
    return moved


def fast_copy(model: torch.nn.Module, channels_last: bool = False) -> torch.nn.Module:
    """A copy of the (eval-mode, frozen) ``model`` with every Conv2d-BatchNorm2d pair of
    a Sequential folded into one convolution (the same function, one pass less over
    memory), ReLUs moved behind the max-pooling they feed (:func:`_relu_after_pool`),
    convolutions from few channels with a faster input gradient
    (:func:`_fast_input_grads`), channels-last if asked (faster bf16 on CPU); ``model``
    itself when it cannot be copied (scripted or exported modules) or is in training
    mode."""
    import copy

    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        return model
    try:
        net = copy.deepcopy(model)
    except Exception:
        return model
    folded = 0
    for mod in list(net.modules()):
        if not isinstance(mod, nn.Sequential):
            continue
        kids = list(mod._modules.items())
        for (n1, a), (n2, b) in zip(kids, kids[1:], strict=False):
            if (type(a) is nn.Conv2d and type(b) is nn.BatchNorm2d and not b.training
                    and b.track_running_stats and a.out_channels == b.num_features):
                mod._modules[n1] = fuse_conv_bn_eval(a, b)
                mod._modules[n2] = nn.Identity()
                folded += 1
    #: what the copy changed (the field plan's provenance records it)
    rewrites = {"conv_bn_folded": folded, "relu_after_pool": _relu_after_pool(net),
                "input_grad_convs": _fast_input_grads(net)}
    try:
        net.fast_copy_rewrites = rewrites
    except Exception:  # modules that take no new attributes (scripted)
        pass
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _field_weights(logits: list[torch.Tensor], size: tuple[int, int], cap: float | None,
                   active: torch.Tensor | None, sign: float) -> torch.Tensor:
    """Mean-one weights over the field's active pixels (1 outside them): (1, Cm, H, W)."""
    from torch.nn import functional as F

    total = None
    for lg in logits:
        up = lg if lg.shape[-2:] == size else F.interpolate(
            lg, size=size, mode="bilinear", align_corners=False)
        total = up if total is None else total + up
    cm = total.shape[1]
    if not torch.is_grad_enabled():
        # no graph: in place on one copy (the logits themselves stay as they are)
        z = total.mul(sign)
        if cap is not None:
            half = 0.5 * math.log(cap)
            z.div_(half).tanh_().mul_(half)
        if active is not None:
            z.masked_fill_(~active.expand_as(z), float("-inf"))
        n = z[0].numel() if active is None else cm * int(active.sum())
        z = torch.softmax(z.view(1, -1), 1).view(z.shape).mul_(n)
        if active is not None:
            z.masked_fill_(~active.expand_as(z), 1.0)
        return z
    total = sign * total
    if cap is not None:
        half = 0.5 * math.log(cap)
        total = half * torch.tanh(total / half)
    if active is None:
        n = total[0].numel()
        return n * torch.softmax(total.reshape(1, -1), 1).reshape(total.shape)
    mask = active.expand(1, cm, *size)
    n = int(mask.sum())
    masked = total.masked_fill(~mask, float("-inf"))
    a = n * torch.softmax(masked.reshape(1, -1), 1).reshape(total.shape)
    return torch.where(mask, a, torch.ones_like(a))


def _softmax_vjp(a: torch.Tensor, g: torch.Tensor, active: torch.Tensor | None,
                 n: int, sign: float) -> torch.Tensor:
    """Gradient w.r.t. the logits ``l`` of ``sum(g * a)`` for ``a = n softmax(sign l)``
    over the active entries (``a`` = 1 and no gradient elsewhere):
    ``sign * a * (g - sum(a g) / n)``. Overwrites ``g``."""
    g.mul_(a)                      # a g (0 where no active tile reaches: g is 0 there)
    g.sub_(a, alpha=float(g.sum()) / max(n, 1))
    if active is not None:
        g.masked_fill_(~active.expand_as(g), 0.0)
    return g.mul_(sign)


def _logits_grads(a_full: torch.Tensor, logits: list[torch.Tensor], g_acc: torch.Tensor,
                  cfg: PCIMConfig, delete: bool) -> list[torch.Tensor]:
    """Gradients w.r.t. the multi-scale logits of the tiles' accumulated weight gradient
    ``g_acc`` plus the regularisers (autograd through :func:`_field_weights`)."""
    with torch.enable_grad():
        grads = list(torch.autograd.grad(a_full, logits, grad_outputs=g_acc))
        reg = None
        if cfg.tv_weight:
            reg = cfg.tv_weight * _tv(a_full).sum()
        if cfg.sparsity_weight:
            e = cfg.sparsity_weight * _entropy(a_full).sum()
            reg = e if reg is None else reg + e
        if reg is not None:
            if delete:
                reg = -reg  # the deletion game flips the whole objective, as per tile
            extra = torch.autograd.grad(reg, logits)
            grads = [g1 + g2 for g1, g2 in zip(grads, extra, strict=True)]
    return grads


def pcim_field(model: torch.nn.Module, x: np.ndarray, target: int, config: PCIMConfig,
               plan: FieldPlan, device: torch.device, per_channel: bool = False,
               amp: bool | None = None,
               on_batch: Callable[[int], None] | None = None,
               ) -> Generator[Progress, None, np.ndarray]:
    """PCIM map of one field ``x`` (C, H, W) for class ``target`` on one scale (see the
    module docstring). Returns (H, W) or (C, H, W) float32: log-weights (0 = no evidence)
    or weights (``readout="weights"``). ``on_batch`` is called with each batch size tried
    (tests use it to watch the out-of-memory fallback)."""
    cfg = config
    if cfg.optimizer != "normalized":
        raise InputError("field tiling supports PCIM's 'normalized' optimizer only; use "
                         "tiling='per_tile' for adam")
    if device.type == "cpu":
        # every tile pass allocates its activations afresh: keep freed blocks for reuse
        # instead of faulting fresh pages in (:mod:`.allocator`; a 2048² field's
        # ``explain``: 1.03 M -> 0.15 M minor page faults, 35.1 -> 30.8 s)
        reuse_freed_memory()
    c, h, w = x.shape
    cm = c if per_channel else 1
    th, tw = plan.tile_h, plan.tile_w
    xf = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    zero = torch.zeros(()).expand_as(xf)  # a zero field that takes no memory

    def substrate_of(kind: str) -> torch.Tensor:
        return zero if kind == "zero" else make_substrate(xf, kind, cfg.blur_sigma)

    substrate = substrate_of(cfg.substrate)
    keep_kind = cfg.preserve_substrate or cfg.substrate
    keep_substrate = substrate if keep_kind == cfg.substrate else substrate_of(keep_kind)
    black = zero if cfg.game == "hybrid3" else None
    tiles = [yx for yx, bg in zip(plan.grid, plan.background, strict=True) if not bg]
    active_np = np.zeros((h, w), bool)
    for y, xx in tiles:
        active_np[y:y + th, xx:xx + tw] = True
    active = None if active_np.all() else torch.from_numpy(active_np)[None, None]
    win = torch.from_numpy(window(th, tw, plan.overlap))
    wsum = torch.zeros(h, w)
    for y, xx in tiles:
        wsum[y:y + th, xx:xx + tw] += win
    wsum = wsum.clamp_min(1e-12)
    logits = [torch.zeros(1, cm, max(1, math.ceil(h / s)), max(1, math.ceil(w / s)),
                          requires_grad=True) for s in cfg.scales]
    tgt = torch.tensor([int(target)], device=device)
    batch = plan.batch_size
    dtype = amp_dtype(device, amp)
    plan.channels_last = channels_last_for(device, dtype)
    model = fast_copy(model, channels_last=plan.channels_last)
    plan.model_rewrites = getattr(model, "fast_copy_rewrites", None)
    plan.tile_passes = 0
    prev = torch.ones(1, cm, h, w)
    # one scale, no cap, no regulariser (the defaults): the softmax's gradient in closed
    # form, no autograd graph over the field (fewer field-sized buffers at once)
    closed = (CLOSED_FORM and tuple(cfg.scales) == (1,) and cfg.max_weight is None
              and not cfg.tv_weight and not cfg.sparsity_weight)
    n_entries = cm * int(active_np.sum())
    for step in range(cfg.steps):
        phase = _phase(cfg.game, step)  # as per image: 1 deletes, 2 keeps on black
        delete = phase == 1
        sub = substrate if delete else keep_substrate if phase == 0 else black
        with torch.set_grad_enabled(not closed):
            a_full = _field_weights(logits, (h, w), cfg.max_weight, active,
                                    -1.0 if delete else 1.0)
        a_det = a_full.detach()
        g_acc = torch.zeros(1, cm, h, w)
        loss_total = 0.0
        k = 0
        while k < len(tiles):
            chunk = tiles[k:k + batch]
            if on_batch is not None:
                on_batch(len(chunk))
            try:
                xb = torch.cat([xf[..., y:y + th, xx:xx + tw] for y, xx in chunk]).to(device)
                sb = torch.cat([sub[..., y:y + th, xx:xx + tw] for y, xx in chunk]).to(device)
                ab = torch.cat([a_det[..., y:y + th, xx:xx + tw]
                                for y, xx in chunk]).to(device)
                if dtype is not None and plan.amp_check is None:
                    plan.amp_check = check_amp(model, xb, sb, ab, tgt, cfg.loss, dtype)
                    if not plan.amp_check["ok"]:
                        dtype = None
                        plan.notes.append("mixed precision off: it changed the model's "
                                          "output or gradient on this field")
                _, loss_i, g = _forward_grad(model, xb, sb, ab, tgt, cfg.loss, delete, dtype,
                                             plan.channels_last)
            except Exception as err:
                batch = smaller_batch(err, batch, device)
                continue
            g = g.cpu()
            for j, (y, xx) in enumerate(chunk):
                g_acc[..., y:y + th, xx:xx + tw] += g[j] * win
            loss_total += float(loss_i.sum())
            plan.tile_passes += len(chunk)
            k += len(chunk)
            yield Progress(int(1000 * (step + k / len(tiles)) / cfg.steps), 1000,
                           f"PCIM step {step + 1}/{cfg.steps}, tile {k}/{len(tiles)}",
                           partial={"batch": batch})
        g_acc /= wsum
        if closed:
            grads = [_softmax_vjp(a_det, g_acc, active, n_entries, -1.0 if delete else 1.0)]
        else:
            grads = _logits_grads(a_full, logits, g_acc, cfg, delete)
        del a_full, a_det, g_acc
        with torch.no_grad():
            # One normalised step for the field (one image): its largest update is ``lr``.
            _normalised_update(logits, grads, cfg.lr, None)
            del grads
            a_new = _field_weights(logits, (h, w), cfg.max_weight, active, 1.0)
            # mean |change| over the active entries (the others stay 1 in both)
            change = float(prev.sub_(a_new).abs_().sum()) / max(n_entries, 1)
            prev = a_new
        plan.steps_run = step + 1
        plan.amp = dtype is not None
        if step + 1 >= cfg.min_steps and change <= cfg.tol:
            break
    out_map = prev[0]
    if cfg.readout == "log":
        out_map = torch.log(out_map.clamp_min(1e-30))
    res = out_map.numpy().astype(np.float32)
    return res if per_channel else res[0]

