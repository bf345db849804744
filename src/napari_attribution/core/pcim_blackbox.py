"""Gradient-free PCIM for black-box models: forward passes only.

The PCIM objective (:mod:`.pcim`: blend the image's pixels with mean-one weights
``a = N·softmax(l)``, alternate the preservation and deletion games) optimised without
autograd through the model: the blending logits live on a coarse grid (one logit per
``cell`` x ``cell`` pixels, upsampled bilinearly), and their gradient is estimated by
antithetic natural-evolution-strategy sampling (Wierstra et al. 2014; Salimans et al.
2017): for ``samples`` random directions ε, the loss at ``l + σε`` and ``l - σε`` gives

    ĝ = Σ_k (L(l + σε_k) − L(l − σε_k)) ε_k / (2 σ K).

Each step costs ``2 · samples`` forward passes per image, all images and directions
batched together; the update is PCIM's normalised step (the largest logit moves by
``lr``). It works for any callable that maps (B, C, H, W) to logits, including models
that cannot be differentiated (exported, quantised or remote).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import asdict, dataclass

import torch

from .errors import InputError
from .pcim import SUBSTRATES, _target_loss, blend, make_substrate, mixing_weights
from .progress import Progress


@dataclass
class BlackboxPCIMConfig:
    """Options of gradient-free PCIM (the game, substrates and loss are PCIM's).

    ``sigma`` and ``lr`` were chosen on the 32 MNIST tuning digits of
    ``benchmarks/pcim_tuning.py`` (sigma 0.25-2, lr 0.25-2, cell 2-4, 4-16 steps);
    ``benchmarks/fidelity.py`` reports on other images.
    """

    steps: int = 8
    samples: int = 8
    sigma: float = 0.5
    lr: float = 0.25
    cell: int = 4
    substrate: str = "zero"
    preserve_substrate: str | None = "blur"
    blur_sigma: float = 5.0
    loss: str = "lse_margin"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "samples", "cell"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"black-box PCIM needs {name} >= 1; got {getattr(self, name)}")
        if not (self.sigma > 0 and self.lr > 0):
            raise InputError(f"sigma and lr must be positive; got {self.sigma}, {self.lr}")
        for name in ("substrate", "preserve_substrate"):
            value = getattr(self, name)
            if value not in SUBSTRATES and not (name == "preserve_substrate" and value is None):
                raise InputError(f"unknown {name} {value!r}; use one of {SUBSTRATES}")

    @classmethod
    def from_params(cls, params: dict) -> BlackboxPCIMConfig:
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown black-box PCIM parameter(s) {unknown}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**params)

    def to_dict(self) -> dict:
        return asdict(self)


def pcim_blackbox_batch(model, x: torch.Tensor, targets: torch.Tensor,
                        config: BlackboxPCIMConfig, per_channel: bool = False,
                        batch_size: int = 256) -> Generator[Progress, None, torch.Tensor]:
    """Log-weight maps (B, H, W) for ``x`` (B, C, H, W), forward passes only.

    Yields a :class:`Progress` after every step. ``per_channel`` is not supported (the
    number of coarse logits, and so the samples needed, would grow C-fold).
    """
    if per_channel:
        raise InputError("black-box PCIM gives pixel maps only; per-channel maps need the "
                         "gradient version (method 'pcim')")
    cfg = config
    b, c, h, w = x.shape
    gh, gw = max(1, math.ceil(h / cfg.cell)), max(1, math.ceil(w / cfg.cell))
    x = x.detach()
    delete_sub = make_substrate(x, cfg.substrate, cfg.blur_sigma)
    keep_kind = cfg.preserve_substrate or cfg.substrate
    keep_sub = make_substrate(x, keep_kind, cfg.blur_sigma)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    logits = torch.zeros(b, 1, gh, gw, device=x.device, dtype=x.dtype)
    k = int(cfg.samples)
    for step in range(cfg.steps):
        delete = step % 2 == 1
        sub = delete_sub if delete else keep_sub
        eps = torch.randn(b, k, 1, gh, gw, generator=gen).to(x.device, x.dtype)
        cand = torch.cat([logits[:, None] + cfg.sigma * eps,
                          logits[:, None] - cfg.sigma * eps], 1)      # (B, 2K, 1, gh, gw)
        flat = cand.reshape(b * 2 * k, 1, gh, gw)
        a = mixing_weights([-flat if delete else flat], (h, w))
        rep = torch.arange(b, device=x.device).repeat_interleave(2 * k)
        losses = []
        with torch.no_grad():
            for i in range(0, rep.numel(), batch_size):
                idx = rep[i:i + batch_size]
                out = model(blend(x[idx], a[i:i + batch_size], sub[idx]))
                losses.append(_target_loss(out.float(), targets[idx], cfg.loss))
        loss = torch.cat(losses).view(b, 2 * k).to(x.dtype)
        if delete:
            loss = -loss
        diff = (loss[:, :k] - loss[:, k:]).view(b, k, 1, 1, 1)
        grad = (diff * eps).sum(1) / (2 * cfg.sigma * k)
        scale = cfg.lr / grad.flatten(1).abs().amax(1).clamp_min(1e-30)
        logits = logits - scale.view(b, 1, 1, 1) * grad
        yield Progress(step + 1, cfg.steps, f"black-box PCIM step {step + 1}/{cfg.steps}",
                       partial={"loss": float(loss.mean())})
    a = mixing_weights([logits], (h, w))
    return torch.log(a.clamp_min(1e-30))[:, 0]
