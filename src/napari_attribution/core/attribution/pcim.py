"""PCIM: pixel-wise channel isolation mixing (pixel attribution by learned blending).

Every pixel p of an image x is isolated as its own "channel" x ⊙ e_p. PCIM learns
non-negative blending weights ``a`` over these H·W pixel-channels (C·H·W with
``per_channel``), ``a = N · softmax(l)`` so that their mean is one and uniform weights
reproduce the input exactly, feeds the blended image ``s + a ⊙ (x - s)`` to a frozen
classifier and lowers the target's loss. ``s`` is the substrate a pixel fades to when
its weight drops to zero (zero, the blurred image or the channel means). The learned
``a`` is the attribution map.

Defaults (chosen with ``benchmarks/pixel_attribution.py``, see docs/pixel_attribution.md):

* ``game="hybrid"``: even steps play the *preservation* game (weights ``softmax(l)``
  must keep the target), odd steps the *deletion* game (weights ``softmax(-l)``, i.e.
  the high-``l`` pixels removed, must destroy it). Preservation alone drifts towards
  a few amplified pixels that suffice for the class (good insertion, poor deletion);
  the alternation keeps the ranking faithful to both, at one forward/backward per step.
* ``game="hybrid3"`` (experimental, for insertion from zero): a cycle of three, the
  two games above and a preservation game on a black background (what is kept must
  carry the class on zero). See docs/pixel_attribution.md for what it buys.
* ``preserve_substrate="blur"``, ``substrate="zero"``: in the preservation game the
  pixels PCIM lets go fade into the blurred image (a background the model has seen the
  like of: what is kept must carry the class on its own), in the deletion game the
  removed pixels become zero (their information is really gone). With zero for both,
  preservation rewards a few amplified pixels on black, far outside the training
  range, and insertion suffers; blur for both lets deletion keep the class from the
  blurred remains. The pair beats Integrated Gradients on deletion *and* insertion on
  all four benchmark sets (``benchmarks/pcim_tuning.py``).
* ``loss="lse_margin"``: target logit minus log-sum-exp of the others; it does not
  saturate when the model is confident (cross-entropy's gradient vanishes there).
* ``optimizer="normalized"``: per image, the largest logit update is ``lr``; this
  keeps the ranking carried by the gradient magnitudes (Adam's first steps are
  sign-like and flatten it, so its result depends mostly on the learning rate).
* ``scales``: logits as a sum of maps at several resolutions (coarse = smooth);
  full resolution only by default.

Images in a batch are independent: each has its own map, converges on its own and is
frozen once its map stops changing (``tol``); one forward/backward serves the batch.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn import functional as F

from ..runtime.errors import InputError
from ..runtime.progress import Progress
from .method_config import MethodConfig, setting

SUBSTRATES = ("zero", "blur", "mean")
OPTIMIZERS = ("normalized", "adam")
LOSSES = ("lse_margin", "margin", "ce", "logit")
GAMES = ("hybrid", "preserve", "hybrid3")
READOUTS = ("log", "weights")


@dataclass
class PCIMConfig(MethodConfig):
    """PCIM options; the defaults were chosen with ``benchmarks/pixel_attribution.py``."""

    title: ClassVar[str] = "PCIM"
    steps: int = setting(8, minimum=1, maximum=1000,
                         help="optimisation steps (one forward and backward pass each)")
    lr: float = setting(0.5, label="learning rate", minimum=1e-4, maximum=100.0,
                        advanced=True)
    optimizer: str = setting("normalized", choices=OPTIMIZERS, advanced=True)
    scales: tuple[int, ...] = (1,)
    substrate: str = setting("zero", choices=SUBSTRATES, advanced=True,
                             help="what a deleted pixel fades to")
    preserve_substrate: str | None = setting("blur", choices=SUBSTRATES, advanced=True,
                                             help="what a pixel let go fades to in the "
                                                  "preservation game")
    blur_sigma: float = setting(5.0, label="blur sigma", minimum=0.1, maximum=100.0,
                                advanced=True)
    max_weight: float | None = setting(None, minimum=1.01, maximum=1e6, advanced=True)
    tv_weight: float = setting(0.0, minimum=0.0, maximum=100.0, advanced=True)
    sparsity_weight: float = setting(0.0, minimum=0.0, maximum=100.0, advanced=True)
    tol: float = setting(1e-3, minimum=0.0, maximum=1.0, advanced=True,
                         help="an image stops once its map changes less than this")
    min_steps: int = setting(3, minimum=1, maximum=1000, advanced=True)
    readout: str = setting("log", choices=READOUTS, advanced=True)
    loss: str = setting("lse_margin", choices=LOSSES, advanced=True)
    game: str = setting("hybrid", choices=GAMES, advanced=True)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"PCIM needs at least one step; got steps={self.steps}")
        if not self.lr > 0:
            raise InputError(f"PCIM learning rate must be positive; got {self.lr}")
        for name in ("substrate", "preserve_substrate"):
            value = getattr(self, name)
            if value not in SUBSTRATES and not (name == "preserve_substrate" and value is None):
                raise InputError(f"unknown {name} {value!r}; use one of {SUBSTRATES}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        for name, value, allowed in (("loss", self.loss, LOSSES), ("game", self.game, GAMES),
                                     ("readout", self.readout, READOUTS)):
            if value not in allowed:
                raise InputError(f"unknown PCIM {name} {value!r}; use one of {allowed}")
        self.scales = tuple(int(s) for s in self.scales)
        if not self.scales or min(self.scales) < 1:
            raise InputError(f"scales must be positive integers; got {self.scales}")
        if self.max_weight is not None and self.max_weight <= 1:
            raise InputError(f"max_weight must exceed 1 (uniform weight); got {self.max_weight}")



@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float, radius: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """(n, n) matrix of a 1-D Gaussian blur with reflection padding (``y = M @ x``)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (offsets / sigma) ** 2)
    k = k / k.sum()
    rows = torch.arange(n).view(-1, 1).expand(n, 2 * radius + 1)
    src = rows + offsets.long().view(1, -1)
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((rows.reshape(-1), src.reshape(-1)), k.repeat(n), accumulate=True)
    return m.to(dtype=dtype, device=device)


#: sides up to this use the cached blur matrices (a few MB), larger ones the convolution
_MATRIX_BLUR_MAX = 2048
#: images with both sides above twice this take the blur matrices' products this many
#: rows at a time, over only the columns the kernel reaches (the rest are zeros: at
#: 2048 px ~5x fewer operations than the full products)
BLUR_BLOCK = 256


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflection padding.

    Done as two products with cached (H, H) and (W, W) blur matrices (5-20x faster on CPU
    than the depthwise convolution, the same result to float rounding; banded, in row
    blocks of :data:`BLUR_BLOCK`, on large images); sides above 2048 pixels use padding
    and a depthwise convolution.
    """
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1) if min(x.shape[-2:]) > 1 else 0
    if radius < 1:
        return x
    h, w = x.shape[-2:]
    if max(h, w) <= _MATRIX_BLUR_MAX and x.dtype in (torch.float32, torch.float64):
        mh = _blur_matrix(h, float(sigma), radius, x.dtype, x.device)
        mw = _blur_matrix(w, float(sigma), radius, x.dtype, x.device)
        if min(h, w) <= 2 * BLUR_BLOCK:
            return torch.matmul(torch.matmul(mh, x), mw.T)
        return _banded_products(x, mh, mw, radius)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _banded_products(x: torch.Tensor, mh: torch.Tensor, mw: torch.Tensor, radius: int
                     ) -> torch.Tensor:
    """``mh @ x @ mw.T`` for blur matrices of half-bandwidth ``radius``, in row blocks."""
    h, w = x.shape[-2:]
    y = torch.empty_like(x)
    for r0 in range(0, h, BLUR_BLOCK):
        r1, c0, c1 = min(h, r0 + BLUR_BLOCK), max(0, r0 - radius), min(h, r0 + BLUR_BLOCK + radius)
        y[..., r0:r1, :] = torch.matmul(mh[r0:r1, c0:c1], x[..., c0:c1, :])
    out = torch.empty_like(x)
    for r0 in range(0, w, BLUR_BLOCK):
        r1, c0, c1 = min(w, r0 + BLUR_BLOCK), max(0, r0 - radius), min(w, r0 + BLUR_BLOCK + radius)
        out[..., r0:r1] = torch.matmul(y[..., c0:c1], mw[r0:r1, c0:c1].T)
    return out


def make_substrate(x: torch.Tensor, kind: str, blur_sigma: float = 5.0) -> torch.Tensor:
    """What a pixel becomes when its weight is zero: zeros, blurred image or channel mean."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "blur":
        return gaussian_blur(x, blur_sigma)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    raise InputError(f"unknown substrate {kind!r}; use one of {SUBSTRATES}")


def mixing_weights(logits: list[torch.Tensor], size: tuple[int, int],
                   cap: float | None = None) -> torch.Tensor:
    """Mean-one non-negative weights from multi-resolution logits: (B, Cm, H, W)."""
    total = None
    for lg in logits:
        up = lg if lg.shape[-2:] == size else F.interpolate(
            lg, size=size, mode="bilinear", align_corners=False)
        total = up if total is None else total + up
    b = total.shape[0]
    n = total[0].numel()
    if cap is not None:
        # Logits squashed into [-L, L] bound the weight ratio by e^{2L}; with mean one,
        # no weight can exceed e^{2L} = cap (no pixel amplified beyond ``cap``).
        half = 0.5 * math.log(cap)
        total = half * torch.tanh(total / half)
    a = n * torch.softmax(total.reshape(b, -1), dim=1)
    return a.reshape(total.shape)


def blend(x: torch.Tensor, weights: torch.Tensor, substrate: torch.Tensor) -> torch.Tensor:
    """The image PCIM feeds to the model: ``substrate + weights * (x - substrate)``."""
    return substrate + weights * (x - substrate)


def _target_loss(out: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image loss that decreases as the evidence for the target grows."""
    if kind == "ce":
        return F.cross_entropy(out, targets, reduction="none")
    zt = out.gather(1, targets.view(-1, 1))[:, 0]
    if kind == "logit":
        return -zt
    others = out.scatter(1, targets.view(-1, 1), float("-inf"))
    if kind == "margin":
        return others.amax(1) - zt
    if kind == "lse_margin":
        return torch.logsumexp(others, 1) - zt
    raise InputError(f"unknown PCIM loss {kind!r}")


def _tv(a: torch.Tensor) -> torch.Tensor:
    """Per-image total variation of the weights (mean absolute neighbour difference)."""
    dy = (a[..., 1:, :] - a[..., :-1, :]).abs().flatten(1).mean(1)
    dx = (a[..., :, 1:] - a[..., :, :-1]).abs().flatten(1).mean(1)
    return dy + dx


def _entropy(a: torch.Tensor) -> torch.Tensor:
    """Per-image normalised entropy of the weight distribution (1 = uniform)."""
    p = a.flatten(1) / a.flatten(1).sum(1, keepdim=True)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    return h / math.log(max(p.shape[1], 2))


def _total_logits(logits: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Sum of the multi-resolution logits at full resolution."""
    total = None
    for lg in logits:
        up = lg if lg.shape[-2:] == size else F.interpolate(
            lg, size=size, mode="bilinear", align_corners=False)
        total = up if total is None else total + up
    return total


def _softmax_weights(total: torch.Tensor, cap: float | None, negate: bool) -> torch.Tensor:
    """``softmax(±capped(total))`` over each image's pixels: the weights divided by N
    (the caller folds N into the image difference, saving a multiplication per step)."""
    if cap is not None:
        half = 0.5 * math.log(cap)
        total = half * torch.tanh(total / half)
    flat = total.reshape(total.shape[0], -1)
    return torch.softmax(flat.neg() if negate else flat, 1).view(total.shape)


def _phase(game: str, step: int) -> int:
    """0: preservation game (preservation substrate), 1: deletion game, 2: preservation
    game on a black background (``hybrid3`` only)."""
    if game == "hybrid":
        return step % 2
    if game == "hybrid3":
        return step % 3
    return 0


def _closed_form(cfg: PCIMConfig) -> bool:
    """Whether the logits' gradient is taken in closed form (one full-resolution map, no
    cap, no regulariser); otherwise autograd runs through PCIM's weights."""
    return (cfg.scales == (1,) and cfg.max_weight is None and not cfg.tv_weight
            and not cfg.sparsity_weight)


def _softmax_vjp_batch(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per row of (B, N) ``p = softmax(l)``, the gradient w.r.t. ``l`` of ``sum(g * p)``:
    ``p * (g - sum(p g))``. Overwrites ``g``. The batched form of
    ``field._softmax_vjp`` (one field, with an activity mask and a sign), three tensor
    calls also at batch 1."""
    g.mul_(p)
    return g.addcmul_(p, g.sum(1, keepdim=True), value=-1.0)


def _loss_and_output_grad(out: torch.Tensor, targets: torch.Tensor, kind: str,
                          cache: dict) -> tuple[float, torch.Tensor | None]:
    """The batch's summed loss of the model's logits ``out`` (no graph) and its gradient
    w.r.t. ``out`` in closed form; ``None`` for the gradient where autograd must take
    it (``margin`` beyond two classes: ties share the gradient). ``cache`` keeps the
    batch's constants (built on the first step)."""
    k = out.shape[1]
    if kind in ("lse_margin", "margin") and k == 2:
        # two classes: both losses are z_other - z_target, one product and a sum
        pm = cache.get("pm")
        if pm is None:
            pm = cache["pm"] = 1.0 - 2.0 * F.one_hot(targets, 2).to(out.dtype)
        return float((out * pm).sum()), pm
    if kind not in ("lse_margin", "ce", "logit"):
        return float(_target_loss(out, targets, kind).sum()), None
    onehot = cache.get("onehot")
    if onehot is None:
        onehot = cache["onehot"] = F.one_hot(targets, k).to(out.dtype)
        cache["index"] = targets.view(-1, 1)
        # lse_margin: the target's -inf mask, added to the logits
        cache["mask"] = torch.zeros_like(out).masked_fill_(onehot > 0, -math.inf)
    zt = float(out.gather(1, cache["index"]).sum())
    if kind == "logit":
        return -zt, onehot.neg()
    z = out + cache["mask"] if kind == "lse_margin" else out
    ls = torch.log_softmax(z, 1)
    # logsumexp(z) = max(z) - max(log_softmax(z)) per image; d/dz = softmax(z)
    lse = (float(z.max()) - float(ls.max()) if out.shape[0] == 1
           else float((z.amax(1) - ls.amax(1)).sum()))
    return lse - zt, ls.exp_().sub_(onehot)


def _step_grads(model: torch.nn.Module, logits: list[torch.Tensor], p: torch.Tensor,
                base: torch.Tensor | None, diff: torch.Tensor, targets: torch.Tensor,
                cfg: PCIMConfig, delete: bool, graph: bool, cache: dict
                ) -> tuple[list[torch.Tensor], float]:
    """One game's descent gradients and its objective, summed over the batch.

    ``p``: the game's weights over N, (B, N) (``softmax(±l)``; with their graph when
    ``graph``), blended as ``base + p · diff`` (``p · diff`` without a base). The
    objective is the loss, negated in the deletion game (``delete``: maximised), plus
    the regularisers. Only the model runs under autograd: its input gradient is
    chained by hand through the blend and, without ``graph``, the softmax; the result
    is then one (B, N) gradient for the flat full-resolution logits, else one gradient
    per tensor of ``logits`` (autograd through the weights).
    """
    b = p.shape[0]
    pd = p.detach() if graph else p
    p4 = pd.view(b, -1, *diff.shape[2:])
    xb = p4 * diff if base is None else torch.addcmul(base, p4, diff)
    xb.requires_grad_(True)
    if torch.is_grad_enabled():
        out = model(xb)
    else:
        with torch.enable_grad():
            out = model(xb)
    loss, g_out = _loss_and_output_grad(out.detach(), targets, cfg.loss, cache)
    if g_out is None:
        with torch.enable_grad():
            loss_t = _target_loss(out, targets, cfg.loss).sum()
        (gx,) = torch.autograd.grad(loss_t, xb)
    else:
        (gx,) = torch.autograd.grad(out, xb, g_out)
    g = torch.mul(gx, diff)                          # d loss / d p
    if g.shape[1] != p4.shape[1]:                    # one weight for all channels
        g = g.sum(1)
    g = g.reshape(b, -1)    # the input's gradient may be channels-last
    if delete:
        loss = -loss
    if not graph:
        # d(±loss)/dl = p (g - <p, g>) in both games (the two signs cancel)
        return [_softmax_vjp_batch(pd, g)], loss
    with torch.enable_grad():
        obj = (p * g).sum()
        if delete:
            obj = -obj
        reg = None
        if cfg.tv_weight:
            reg = cfg.tv_weight * _tv(p.shape[1] * p.view(p4.shape))
        if cfg.sparsity_weight:
            e = cfg.sparsity_weight * _entropy(p)
            reg = e if reg is None else reg + e
        if reg is not None:
            reg = reg.sum()
            obj = obj + reg
            loss += float(reg.detach())
        grads = list(torch.autograd.grad(obj, logits))
    return grads, loss


def _normalised_update(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float,
                       active: torch.Tensor | None) -> None:
    """``params -= lr · grads / max|grads|`` per image (the largest update is ``lr``);
    images where ``active`` (broadcastable to the scale) is false stay."""
    b = params[0].shape[0]
    if b == 1 and len(grads) == 1 and active is None:   # the scale as a Python number
        gmax = max(float(grads[0].max()), -float(grads[0].min()))
        params[0].add_(grads[0], alpha=-lr / max(gmax, 1e-30))
        return
    if len(grads) == 1:
        gmax = torch.linalg.vector_norm(grads[0].reshape(b, -1), math.inf, dim=1)
    else:
        gmax = torch.stack([torch.linalg.vector_norm(g.flatten(1), math.inf, dim=1)
                            for g in grads], 1).amax(1)
    scale = torch.div(-lr, gmax.clamp_min_(1e-30)).view(b, *(1,) * (params[0].dim() - 1))
    if active is not None:
        scale.mul_(active)
    for lg, g in zip(params, grads, strict=True):
        lg.addcmul_(scale, g)


_NO_CONTEXT = contextlib.nullcontext()


def pcim_batch(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
               config: PCIMConfig, per_channel: bool = False
               ) -> Generator[Progress, None, torch.Tensor]:
    """Optimise one weight map per image of ``x`` (B, C, H, W) for ``targets`` (B,).

    Yields a :class:`Progress` after every step; returns the map, (B, H, W) or
    (B, C, H, W) with ``per_channel``, on ``x``'s device: the log-weights ``log a``
    (``readout="log"``: 0 = left as in the input, > 0 amplified = evidence for the
    target, < 0 suppressed) or the weights ``a`` themselves (``readout="weights"``).
    ``model`` must be in eval mode.

    Per step the work outside the model is kept small (it matters at batch 1 on small
    models): the substrates and ``N · (x - s)`` are computed once, the blend is one
    fused ``addcmul``, only the model runs under autograd (the loss's and the blend's
    gradients, and for one full-resolution map without cap or regulariser the
    softmax's, are taken in closed form), and the preservation weights computed for
    the convergence check are reused by the next preservation step.
    """
    cfg = config
    b, c, h, w = x.shape
    cm = c if per_channel else 1
    n = cm * h * w
    x = x.detach()
    substrate = make_substrate(x, cfg.substrate, cfg.blur_sigma)
    keep_kind = cfg.preserve_substrate or cfg.substrate
    keep_substrate = (substrate if keep_kind == cfg.substrate
                      else make_substrate(x, keep_kind, cfg.blur_sigma))
    # blend = s + (N p) (x - s) = s + p (N (x - s)): N folded in once
    diff_del = (x - substrate).mul_(n)
    diff_keep = diff_del if keep_substrate is substrate else (x - keep_substrate).mul_(n)
    diff_zero = None
    if cfg.game == "hybrid3":   # the third game keeps the target from a black background
        diff_zero = diff_del if cfg.substrate == "zero" else x * n
    games = ((keep_substrate, diff_keep), (substrate, diff_del), (None, diff_zero))
    graph = not _closed_form(cfg)    # autograd through the weights (multi-scale, cap, ...)
    logits = [torch.zeros(b, cm, max(1, math.ceil(h / s)), max(1, math.ceil(w / s)),
                          device=x.device, dtype=x.dtype, requires_grad=graph)
              for s in cfg.scales]
    # what the update moves: the flat full-resolution logits, or every scale's logits
    params = logits if graph else [logits[0].view(b, n)]
    opt = torch.optim.Adam(logits, lr=cfg.lr) if cfg.optimizer == "adam" else None
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    active_col = active.view(b, *(1,) * (params[0].dim() - 1))   # follows ``active``
    all_active = True
    prev = torch.full((b, n), 1.0 / n, device=x.device, dtype=x.dtype)  # p, not N p
    p_keep = None    # preservation weights of the current logits (with their graph)
    cache: dict = {}  # the loss's per-batch constants
    no_grad = torch.no_grad() if graph else _NO_CONTEXT  # updates of leaves with grad
    for step in range(cfg.steps):
        phase = _phase(cfg.game, step)
        delete = phase == 1
        if p_keep is not None and not delete:
            p = p_keep
        elif graph:
            with torch.enable_grad():
                p = _softmax_weights(_total_logits(logits, (h, w)), cfg.max_weight,
                                     delete).view(b, n)
        else:
            p = torch.softmax(params[0].neg() if delete else params[0], 1)
        p_keep = None
        grads, loss = _step_grads(model, logits, p, *games[phase], targets, cfg, delete,
                                    graph, cache)
        del p
        with no_grad:
            if opt is None:
                # Normalised gradient descent: per image, the largest update is ``lr``.
                _normalised_update(params, grads, cfg.lr, None if all_active else active_col)
            else:
                keep = active.view(b, 1, 1, 1).to(x.dtype)
                old = [lg.detach().clone() for lg in logits]
                for lg, g in zip(logits, grads, strict=True):
                    lg.grad = g.reshape_as(lg)
                opt.step()
                for lg, o in zip(logits, old, strict=True):
                    lg.copy_(keep * lg + (1 - keep) * o)
        # The new preservation weights: the convergence check's, and the next step's
        # when that step plays the preservation game.
        next_keeps = step + 1 < cfg.steps and _phase(cfg.game, step + 1) != 1
        if graph:
            with torch.set_grad_enabled(next_keeps):
                p_new = _softmax_weights(_total_logits(logits, (h, w)), cfg.max_weight,
                                         False).view(b, n)
        else:
            p_new = torch.softmax(params[0], 1)
        if next_keeps:
            p_keep = p_new
            p_new = p_new.detach()
        n_active = b
        if step + 1 >= cfg.min_steps:
            # mean |a_new - a_prev| > tol, with a = N p: sum |p_new - p_prev| > tol
            if b == 1:     # one image: one reduction, compared in Python
                if not float(prev.sub_(p_new).abs_().sum()) > cfg.tol:
                    active.zero_()
                    n_active = 0
            else:
                active &= torch.linalg.vector_norm(p_new - prev, 1, dim=1) > cfg.tol
                n_active = int(active.sum())
        prev = p_new
        all_active = n_active == b
        yield Progress(step + 1, cfg.steps, f"PCIM step {step + 1}/{cfg.steps}",
                       partial={"loss": loss / b, "active": n_active})
        if n_active == 0:
            break
    out_map = prev.view(b, cm, h, w) * n
    if cfg.readout == "log":
        out_map = torch.log(out_map.clamp_min(1e-30))
    return out_map[:, 0] if not per_channel else out_map
