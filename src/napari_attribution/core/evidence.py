"""Does a map localise evidence? A cheap check after explaining.

Deleting the map's top ``f`` of pixels (to the channel means) should lower the target
probability clearly more than deleting the same number of random pixels. For classes
defined by an *absence* (a negative control: "no nuclear GFP") nothing local carries
the decision: every deletion leaves the class in place and any map, random or not,
scores the same. The check then says ``"none"`` instead of letting a random-looking
map pass for an explanation.

Per image, with ``p0`` the target probability of the intact image, ``p_top(f)`` after
deleting the top-``f`` pixels and ``p_rand(f)`` the mean over ``n_random`` random masks
of equal size, averaged over the ``fractions``:

* ``drop_top = p0 - p_top``, ``drop_random = p0 - p_rand``;
* ``gain = drop_top - drop_random`` (what the map adds over chance);
* ``"localised"`` when ``gain >= min_gain`` and the top mask leaves less of the
  target than every random mask (mean over the fractions); else ``"none"``.

Cost: ``len(fractions) * (1 + n_random)`` forward passes per image, no gradients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import InputError

EVIDENCE_STATES = ("localised", "none")


@dataclass
class EvidenceConfig:
    """Options of :func:`evidence_check`. ``min_gain`` is a round value between the two
    calibrations of ``benchmarks/absence.py`` on BBBC013 tuning wells (the 95th
    percentile of a random map's gain: 0.035 and 0.099)."""

    fractions: tuple[float, ...] = (0.1, 0.3)
    n_random: int = 4
    min_gain: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise InputError(f"evidence fractions must lie in (0, 1); got {self.fractions}")
        if self.n_random < 1:
            raise InputError(f"evidence n_random must be at least 1; got {self.n_random}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d


def evidence_check(model: torch.nn.Module, images: np.ndarray, maps: np.ndarray,
                   targets: np.ndarray, config: EvidenceConfig | None = None,
                   batch_size: int = 64, device: str | torch.device = "cpu") -> dict:
    """Per-image ``state`` ('localised' or 'none') and the numbers behind it.

    ``model`` must be frozen (eval mode) and on ``device``; ``images`` (N, C, H, W)
    as the model takes them; ``maps`` (N, H, W) or (N, C, H, W) (summed over channels:
    whole pixels are deleted). Returns lists: ``state``, ``p0``, ``drop_top``,
    ``drop_random``, ``gain``, ``beats_all_random``, and the config.
    """
    cfg = config or EvidenceConfig()
    x = torch.as_tensor(np.asarray(images, np.float32), device=device)
    n, c, h, w = x.shape
    m = np.asarray(maps, np.float32)
    if m.ndim == 4:
        m = m.sum(1)
    if m.shape != (n, h, w):
        raise InputError(f"maps of shape {np.shape(maps)} do not fit images {x.shape}")
    npix = h * w
    rng = np.random.default_rng(cfg.seed)
    flat = m.reshape(n, npix)
    jitter = rng.random(flat.shape) * 1e-6 * (np.abs(flat).max(1, keepdims=True) + 1e-12)
    rank = np.argsort(np.argsort(-(flat + jitter), axis=1, kind="stable"), axis=1)
    k_all = [max(1, int(round(f * npix))) for f in cfg.fractions]
    # masks (N, 1 + R, F, npix): index 0 = the map's top pixels, 1.. = random pixels
    masks = np.zeros((n, 1 + cfg.n_random, len(k_all), npix), np.float32)
    for j, k in enumerate(k_all):
        masks[:, 0, j] = rank < k
        for r in range(cfg.n_random):
            rr = np.argsort(rng.random((n, npix)), axis=1)
            masks[:, 1 + r, j] = rr < k
    mean = x.mean(dim=(2, 3), keepdim=True)
    tg = torch.as_tensor(np.asarray(targets), device=device).long()
    mk = torch.as_tensor(masks.reshape(n, -1, 1, h, w), device=device)
    n_var = mk.shape[1]
    probs = np.zeros((n, 1 + n_var), np.float32)
    with torch.no_grad():
        for i0 in range(0, n, max(1, batch_size // (1 + n_var))):
            sl = slice(i0, min(n, i0 + max(1, batch_size // (1 + n_var))))
            xi, mi = x[sl], mk[sl]
            pert = xi[:, None] + mi * (mean[sl][:, None] - xi[:, None])   # (b, V, C, H, W)
            batch = torch.cat([xi[:, None], pert], 1).reshape(-1, c, h, w)
            p = torch.softmax(model(batch).float(), 1)
            t = tg[sl].repeat_interleave(1 + n_var)
            probs[sl] = p.gather(1, t.view(-1, 1))[:, 0].view(-1, 1 + n_var).cpu().numpy()
    p0 = probs[:, 0]
    pv = probs[:, 1:].reshape(n, 1 + cfg.n_random, len(k_all))
    drop_top = p0 - pv[:, 0].mean(1)
    drop_rand = p0 - pv[:, 1:].mean((1, 2))
    gain = drop_top - drop_rand
    # every random mask leaves more of the target than the map's top pixels do (mean
    # over the fractions: at large fractions both may reach 0 and tie)
    beats = (pv[:, 0].mean(-1, keepdims=True) < pv[:, 1:].mean(-1)).all(1)
    state = np.where((gain >= cfg.min_gain) & beats, "localised", "none")
    return {"state": state.tolist(), "p0": p0.tolist(), "drop_top": drop_top.tolist(),
            "drop_random": drop_rand.tolist(), "gain": gain.tolist(),
            "beats_all_random": beats.tolist(), "config": cfg.to_dict()}
