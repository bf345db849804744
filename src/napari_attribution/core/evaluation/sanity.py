"""Sanity checks (Adebayo et al. 2018) as a metric over several seeds.

* **Model-parameter randomisation**: every parameter of the model re-initialised
  (:func:`.metrics.randomize_model`, DCMIX's mixing layer included), one random model
  per seed; the maps of the trained and the random model are compared image by image
  with Spearman's ρ, on the signed maps and on their absolute values.
* **Data-label randomisation** (optional, it trains): a randomised copy trained briefly
  on the evaluation images with shuffled labels (:func:`label_randomised_model`).

A method whose maps survive either randomisation -- mean |ρ| over images above
:data:`FAIL_ABS_RHO` in any seed, signed or absolute -- explains the image, not the
model, and is marked failing.
"""

from __future__ import annotations

import numpy as np
import torch

from ..runtime.errors import InputError
from .metrics import randomize_model, sanity_spearman

#: |ρ| above which maps count as surviving randomisation
FAIL_ABS_RHO = 0.5


def per_seed_rho(maps: np.ndarray, random_maps: np.ndarray) -> tuple[float, float]:
    """(signed, absolute): the mean over images of Spearman's ρ between the trained
    model's and a random model's maps, and between their absolute values."""
    return (float(np.mean(sanity_spearman(maps, random_maps))),
            float(np.mean(sanity_spearman(maps, random_maps, absolute=True))))


def _worst(values: list[float]) -> float:
    """The value of largest magnitude (the seed whose maps survived most), signed."""
    return float(values[int(np.argmax(np.abs(values)))])


def summarise(signed: list[float], absolute: list[float], seeds: list[int]) -> dict:
    """Median and worst ρ over seeds (signed and absolute maps), the per-seed values,
    the seeds that survived and whether the method fails (see :data:`FAIL_ABS_RHO`)."""
    if not signed:
        raise InputError("no sanity seeds to summarise")
    survived = [s for s, a, b in zip(seeds, signed, absolute, strict=True)
                if abs(a) > FAIL_ABS_RHO or abs(b) > FAIL_ABS_RHO]
    return {"seeds": list(seeds), "signed": list(signed), "absolute": list(absolute),
            "median": float(np.median(signed)), "worst": _worst(signed),
            "abs_median": float(np.median(absolute)), "abs_worst": _worst(absolute),
            "threshold": FAIL_ABS_RHO, "survived_seeds": survived,
            "failing": bool(survived)}


def label_randomised_model(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                           seed: int = 0, epochs: int = 30, lr: float = 1e-3,
                           batch_size: int = 32, device: str = "cpu"
                           ) -> tuple[torch.nn.Module, float]:
    """A randomised copy of ``model`` trained for ``epochs`` on ``images`` with their
    ``labels`` shuffled (seeded): (model in eval mode, its accuracy on the shuffled
    labels, i.e. how much of the noise it memorised)."""
    y = np.asarray(labels)
    if y.shape[0] != np.shape(images)[0]:
        raise InputError(f"{y.shape[0]} labels for {np.shape(images)[0]} images")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError("label randomisation needs integer class labels")
    rng = np.random.default_rng(seed)
    shuffled = torch.as_tensor(rng.permutation(y), device=device).long()
    net = randomize_model(model, seed=seed).to(device)
    x = torch.as_tensor(np.asarray(images, np.float32), device=device)
    for p in net.parameters():
        p.requires_grad_(True)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(int(epochs)):
        order = torch.randperm(x.shape[0], generator=gen).to(device)
        for i in range(0, x.shape[0], batch_size):
            idx = order[i:i + batch_size]
            if idx.numel() < 2 and x.shape[0] > 1:
                continue  # BatchNorm needs two samples
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx]), shuffled[idx])
            loss.backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 256]).argmax(1) for i in range(0, x.shape[0], 256)])
    return net, float((pred == shuffled).float().mean())
