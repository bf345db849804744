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

Images larger than the model's input (tiled fields, :func:`evidence_check_tiled`): the
masks are drawn over the whole field, and a field's target probability is the mean over
non-overlapping tiles of the model's input size covering it (the last row and column
flush with the edge); the same states follow. Cost: the same number of passes over the
field, each one forward pass per tile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..runtime.errors import InputError

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
    masks = deletion_masks(_check_maps(maps, (n, c, h, w)), cfg).astype(np.float32)
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
    return _summary(probs, cfg)


def _check_maps(maps: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Maps as (N, H, W) float32 (per-channel maps summed: whole pixels are deleted)."""
    n, _, h, w = shape
    m = np.asarray(maps, np.float32)
    if m.ndim == 4:
        m = m.sum(1)
    if m.shape != (n, h, w):
        raise InputError(f"maps of shape {np.shape(maps)} do not fit images {shape}")
    return m


def deletion_masks(m: np.ndarray, cfg: EvidenceConfig) -> np.ndarray:
    """Boolean masks (N, 1 + n_random, len(fractions), H*W) for maps ``m`` (N, H, W):
    index 0 = the map's top pixels (ties broken by a tiny seeded jitter), 1.. = random
    pixels of the same number."""
    n = m.shape[0]
    npix = m[0].size
    rng = np.random.default_rng(cfg.seed)
    flat = m.reshape(n, npix)
    jitter = rng.random(flat.shape) * 1e-6 * (np.abs(flat).max(1, keepdims=True) + 1e-12)
    rank = np.argsort(np.argsort(-(flat + jitter), axis=1, kind="stable"), axis=1)
    k_all = [max(1, int(round(f * npix))) for f in cfg.fractions]
    masks = np.zeros((n, 1 + cfg.n_random, len(k_all), npix), bool)
    for j, k in enumerate(k_all):
        masks[:, 0, j] = rank < k
        for r in range(cfg.n_random):
            rr = np.argsort(rng.random((n, npix)), axis=1)
            masks[:, 1 + r, j] = rr < k
    return masks


def evidence_check_tiled(model: torch.nn.Module, images: np.ndarray, maps: np.ndarray,
                         targets: np.ndarray, tile: int,
                         config: EvidenceConfig | None = None, batch_size: int = 2,
                         device: str | torch.device = "cpu") -> dict:
    """:func:`evidence_check` for images larger than the model's ``tile`` x ``tile``
    input: masks over the whole image, probabilities the mean over non-overlapping
    tiles (``batch_size`` tiles per forward pass). Adds ``tile`` and ``tiles`` to the
    answer."""
    from ..data.tiling import tile_grid

    cfg = config or EvidenceConfig()
    x_all = np.asarray(images, np.float32)
    n, c, h, w = x_all.shape
    masks = deletion_masks(_check_maps(maps, (n, c, h, w)), cfg)
    grid = tile_grid(h, w, tile, 0)
    n_var = masks.shape[1] * masks.shape[2]
    probs = np.zeros((n, 1 + n_var), np.float32)
    with torch.no_grad():
        for i in range(n):
            xi = torch.as_tensor(x_all[i], device=device)
            mean = xi.mean(dim=(1, 2), keepdim=True)
            mi = masks[i].reshape(n_var, h, w)
            for v in range(1 + n_var):
                xv = xi if v == 0 else torch.where(
                    torch.as_tensor(mi[v - 1], device=device), mean, xi)
                total = 0.0
                for b0 in range(0, len(grid), batch_size):
                    tb = torch.stack([xv[:, y:y + tile, xx:xx + tile]
                                      for y, xx in grid[b0:b0 + batch_size]])
                    p = torch.softmax(model(tb).float(), 1)[:, int(targets[i])]
                    total += float(p.sum())
                probs[i, v] = total / len(grid)
    out = _summary(probs, cfg)
    out.update({"tile": int(tile), "tiles": len(grid)})
    return out


def _summary(probs: np.ndarray, cfg: EvidenceConfig) -> dict:
    """States and numbers from the target probabilities (N, 1 + V): column 0 intact,
    then the variants in :func:`deletion_masks`'s order."""
    n = probs.shape[0]
    p0 = probs[:, 0]
    pv = probs[:, 1:].reshape(n, 1 + cfg.n_random, len(cfg.fractions))
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
