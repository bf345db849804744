"""Whether a model's input gradients are usable, for the gradient methods and ``auto``.

Gradient PCIM and the gradient baselines need the model's input gradient. A model run
under ``torch.no_grad``, one that detaches or thresholds its input, or one that rounds
its logits has none worth the name: autograd fails (no graph), or returns zeros or one
value everywhere, and a map built from it is constant or an error deep inside the
method. :func:`gradient_problem` says which, in one line; ``explain`` turns it into an
:class:`InputError` that names the forward-only method (:data:`FORWARD_ONLY`), or with
``method="auto"`` runs that method instead.

A model that ignores the image (zero gradient *and* the same output whatever the
input) is not a gradient problem: its maps are honestly flat.
"""

from __future__ import annotations

import torch

from ..runtime.errors import InputError
from .pcim import gaussian_blur

#: the method that needs forward passes only
FORWARD_ONLY = "pcim_blackbox"
#: messages of torch's autograd when the output has no graph
_NO_GRAPH = ("does not require grad", "does not have a grad_fn", "grad can be implicitly "
             "created only", "One of the differentiated Tensors")


def is_gradient_error(err: BaseException) -> bool:
    """Whether ``err`` is autograd's complaint that the model's output has no graph."""
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _NO_GRAPH)


def _responds(model: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the logits change when the image is replaced by zeros or by its blur."""
    with torch.no_grad():
        for other in (torch.zeros_like(x), gaussian_blur(x, 3.0)):
            o = model(other).float()
            tol = 1e-6 * (1.0 + float(out.abs().max()))
            if float((o - out).abs().max()) > tol:
                return True
    return False


def gradient_problem(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> str | None:
    """``None`` when ``model``'s input gradient on ``x`` (B, C, H, W) is usable, else what
    is wrong with it (absent, non-finite, zero or constant while the output depends on
    the image), in words. Costs one forward and backward pass (plus two forward passes
    when the gradient is zero or constant)."""
    x = x.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            return None      # explain reports the shape problem itself
        if not out.requires_grad:
            return ("its output carries no gradient (it runs without autograd, e.g. under "
                    "torch.no_grad, or detaches or thresholds its input)")
        gen = torch.Generator().manual_seed(int(seed))
        r = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
        try:
            (g,) = torch.autograd.grad(out, x, r, allow_unused=True)
        except RuntimeError as err:
            return f"backpropagation through it fails ({str(err).splitlines()[0]})"
    if g is None:
        return "its output does not depend on the input through differentiable operations"
    if not torch.isfinite(g).all():
        return "its input gradient is not finite"
    flat = g.flatten(1)
    spread = flat.amax(1) - flat.amin(1)
    if bool((spread <= 1e-7 * flat.abs().amax(1).clamp_min(1e-30)).all()) \
            and _responds(model, x.detach(), out.detach().float()):
        if bool((flat == 0).all()):
            return ("its input gradient is zero although its output changes with the image "
                    "(rounded or quantised outputs, or non-differentiable steps)")
        return "its input gradient is the same at every pixel (no pixel information)"
    return None


def gradient_error(method: str, problem: str) -> InputError:
    """The one-line error for ``method`` on a model with ``problem``."""
    return InputError(f"{method} needs the model's gradients, but {problem}; use the "
                      f"forward-only method '{FORWARD_ONLY}' (or method 'auto', which "
                      "picks it for such models)")
