"""Does a map localise evidence? A cheap check after explaining, that says when it
cannot tell.

Deleting the map's top ``f`` of pixels (replacing them by the image blurred, sigma 5 px)
should lower the model's confidence in the target clearly more than deleting the same
number of pixels elsewhere.
Three answers per image:

* ``"localised"``: the map's deletion lowers the target more than every null deletion,
  by at least ``min_gain``;
* ``"none"``: it does not, although the deletions could have shown it (the target was
  not saturated): the map's top pixels matter no more than pixels elsewhere;
* ``"undetermined"``: it does not, and the check could not have seen it: the target
  probability was near 1 (``>= saturation``) on the intact image and stayed there after
  every deletion, the map's and the null ones. Nothing here says the map is wrong; the
  decision is carried redundantly (many cells, a saturated model) or by an absence.

**Score.** The default ``score="logit"`` measures the target's log-odds
``z_t - logsumexp(z_other)`` (nats), which does not saturate: on a real BBBC013 field
the target probability is 1.000 before and after every deletion, while the log-odds
drop by 4-10 nats under the map's deletion and by about 1 under a null one.
``score="probability"`` is the check as first written (``p(target)``, saturates).

**Substrate.** ``substrate="blur"`` (default): a deleted pixel takes the value of the
image blurred with ``blur_sigma`` (5 px), so deleting dim cytoplasm changes little and
deleting a bright nucleus removes it. Replacing pixels by the channel *means*
(``"mean"``, the check as first written) brightens the dim cytoplasm of a nuclear-GFP
cell wherever a deletion lands: on BBBC013 positives a null deletion then lowers the
target as much as the map's (median gain -0.36 nats on positive fields, 59 % of PCIM
maps of positives not 'localised'; blurred: 0 %, benchmarks/evidence_check.py).

**Null.** ``null="shift"`` (default): the map's own top mask moved by a random cyclic
shift of at least a quarter of the image in each direction, so the null deletion has the
map's shape and size but sits elsewhere (a contiguous top mask is not compared with
salt-and-pepper noise, which a CNN reads differently); ``null="pixels"``: random pixels.

Per image, with ``s0`` the intact score, ``s_top(f)`` after deleting the top ``f``
pixels and ``s_r(f)`` after null deletion ``r`` (``n_random`` of them), averaged over the
``fractions``: ``drop_top = s0 - s_top``, ``drop_random`` = the mean of ``s0 - s_r``,
``gain = drop_top - drop_random``; ``beats_all_random``: the top deletion lowers the score
more than every null deletion. The ``min_gain`` default is tuned on half of the BBBC013
images by ``benchmarks/evidence_check.py`` (the 95th percentile of a random map's gain)
and reported on the other half (docs/benchmarks.md).

Cost: ``len(fractions) * (1 + n_random)`` forward passes per image, no gradients.

**Within a region** (``within``, e.g. one cell of a crop explained on its own): the
fractions count the region's pixels, the map's top pixels are ranked inside it, and the
null deletions stay in the same region, so the question becomes "do the map's top pixels
matter more than other pixels of this cell?". Deletions still happen in the intact
image; pixels outside the region are never deleted. The null (``within_null``):
``"moved"`` (default), the map's own top mask moved so that its centre lands on a random
pixel of the region, its shape kept (pixels that fall outside the region are replaced by
the region's pixels nearest the new centre); ``"pixels"``, random pixels of the region
(the first version: lenient for compact maps, a random *smooth* map of a nuclear-class
synthetic cell passed 35 % of the time, since a compact deletion that lands on the
nucleus beats scattered pixels); ``"blobs"``, random discs. The threshold inside a
region is ``within_min_gain`` (0.72 nats), the largest 95th percentile of a negative
control's gain on the tuning half of ``benchmarks/evidence_within.py``
(docs/benchmarks.md, "The evidence check within a cell").

Images larger than the model's input (tiled fields, :func:`evidence_check_tiled`): the
masks are drawn over the whole field, and a field's score is the mean over
non-overlapping tiles of the model's input size covering it (the last row and column
flush with the edge; log-odds averaged as a well's mean log-odds); the same states follow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..runtime.errors import InputError
from ..study.findings import Finding, make, register_code

EVIDENCE_STATES = ("localised", "none", "undetermined")
SCORES = ("logit", "probability")
NULLS = ("shift", "pixels")
WITHIN_NULLS = ("pixels", "blobs", "moved")
SUBSTRATES = ("mean", "blur", "zero")

EVIDENCE_NONE = register_code(
    "evidence-none", "caution",
    "deleting the map's top pixels lowers the target no more than deleting pixels "
    "elsewhere: do not read the map as the model's reason")
EVIDENCE_UNDETERMINED = register_code(
    "evidence-undetermined", "note",
    "the evidence check cannot tell: the target stays saturated after every deletion, "
    "the map's and the random ones")


@dataclass
class EvidenceConfig:
    """Options of :func:`evidence_check` (see the module docstring). ``min_gain`` is in
    the score's units (nats of log-odds for ``score="logit"``). Inside a region
    (``within``): ``within_null`` chooses the null deletions and ``within_min_gain``
    (None: ``min_gain``) the threshold, both calibrated by
    ``benchmarks/evidence_within.py``."""

    fractions: tuple[float, ...] = (0.1, 0.3)
    n_random: int = 6
    min_gain: float = 0.5
    score: str = "logit"
    null: str = "shift"
    saturation: float | None = 0.99
    substrate: str = "blur"
    blur_sigma: float = 5.0
    seed: int = 0
    within_null: str = "moved"
    within_min_gain: float | None = 0.72

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise InputError(f"evidence fractions must lie in (0, 1); got {self.fractions}")
        if self.n_random < 1:
            raise InputError(f"evidence n_random must be at least 1; got {self.n_random}")
        if self.score not in SCORES:
            raise InputError(f"evidence score must be one of {SCORES}; got {self.score!r}")
        if self.null not in NULLS:
            raise InputError(f"evidence null must be one of {NULLS}; got {self.null!r}")
        if self.within_null not in WITHIN_NULLS:
            raise InputError(f"evidence within_null must be one of {WITHIN_NULLS}; got "
                             f"{self.within_null!r}")
        if self.substrate not in SUBSTRATES:
            raise InputError(f"evidence substrate must be one of {SUBSTRATES}; got "
                             f"{self.substrate!r}")
        if self.saturation is not None and not 0 < float(self.saturation) <= 1:
            raise InputError(f"evidence saturation must lie in (0, 1] or be None; got "
                             f"{self.saturation}")

    @classmethod
    def legacy(cls) -> EvidenceConfig:
        """The check as first written: probabilities, random pixels, 4 null masks,
        ``min_gain`` 0.05, never 'undetermined' (``saturation`` None). Kept for the
        benchmark's comparison."""
        return cls(n_random=4, min_gain=0.05, score="probability", null="pixels",
                   substrate="mean", saturation=None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d


def evidence_check(model: torch.nn.Module, images: np.ndarray, maps: np.ndarray,
                   targets: np.ndarray, config: EvidenceConfig | None = None,
                   batch_size: int = 64, device: str | torch.device = "cpu",
                   within: np.ndarray | None = None) -> dict:
    """Per-image ``state`` ('localised', 'none' or 'undetermined') and the numbers behind it.

    ``model`` must be frozen (eval mode) and on ``device``; ``images`` (N, C, H, W)
    as the model takes them; ``maps`` (N, H, W) or (N, C, H, W) (summed over channels:
    whole pixels are deleted); ``within`` (N, H, W): delete only inside each image's
    region (> 0), against null deletions in that region (``within_null``, module
    docstring; threshold ``within_min_gain``). Returns
    lists: ``state``, ``reason``, ``p0``, ``p_min`` (the lowest target probability over
    all deletions), ``score0``, ``drop_top``, ``drop_random``, ``gain``,
    ``beats_all_random``, and the config (with ``within``: true when a region was used).
    """
    cfg = config or EvidenceConfig()
    x = torch.as_tensor(np.asarray(images, np.float32), device=device)
    n, c, h, w = x.shape
    masks = deletion_masks(_check_maps(maps, (n, c, h, w)), cfg,
                           within=within).astype(np.float32)
    mean = substrate_of(x, cfg)
    tg = torch.as_tensor(np.asarray(targets), device=device).long()
    mk = torch.as_tensor(masks.reshape(n, -1, 1, h, w), device=device)
    n_var = mk.shape[1]
    scores = np.zeros((n, 1 + n_var), np.float64)
    probs = np.zeros((n, 1 + n_var), np.float64)
    per = max(1, batch_size // (1 + n_var))
    with torch.no_grad():
        for i0 in range(0, n, per):
            sl = slice(i0, min(n, i0 + per))
            xi, mi = x[sl], mk[sl]
            pert = xi[:, None] + mi * (mean[sl][:, None] - xi[:, None])   # (b, V, C, H, W)
            batch = torch.cat([xi[:, None], pert], 1).reshape(-1, c, h, w)
            t = tg[sl].repeat_interleave(1 + n_var)
            s, p = target_scores(model(batch), t)
            scores[sl] = s.view(-1, 1 + n_var).cpu().numpy()
            probs[sl] = p.view(-1, 1 + n_var).cpu().numpy()
    if within is not None and cfg.within_min_gain is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, min_gain=float(cfg.within_min_gain))
    out = _summary(scores if cfg.score == "logit" else probs, probs, cfg)
    if within is not None:
        out["config"]["within"] = True
    return out


def substrate_of(x: torch.Tensor, cfg: EvidenceConfig) -> torch.Tensor:
    """What deleted pixels of ``x`` (N, C, H, W) become: the channel means (default),
    the image blurred (``blur_sigma`` px) or zero (broadcastable to ``x``)."""
    if cfg.substrate == "mean":
        return x.mean(dim=(2, 3), keepdim=True)
    from .pcim import make_substrate

    return make_substrate(x, cfg.substrate, cfg.blur_sigma)


def target_scores(logits: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the target's log-odds ``z_t - logsumexp(z_other)`` and probability."""
    z = logits.double()
    zt = z.gather(1, targets.view(-1, 1))[:, 0]
    others = z.scatter(1, targets.view(-1, 1), float("-inf"))
    log_odds = zt - torch.logsumexp(others, 1)
    return log_odds, torch.sigmoid(log_odds)


def _check_maps(maps: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Maps as (N, H, W) float32 (per-channel maps summed: whole pixels are deleted)."""
    n, _, h, w = shape
    m = np.asarray(maps, np.float32)
    if m.ndim == 4:
        m = m.sum(1)
    if m.shape != (n, h, w):
        raise InputError(f"maps of shape {np.shape(maps)} do not fit images {shape}")
    return m


def deletion_masks(m: np.ndarray, cfg: EvidenceConfig,
                   within: np.ndarray | None = None) -> np.ndarray:
    """Boolean masks (N, 1 + n_random, len(fractions), H*W) for maps ``m`` (N, H, W):
    index 0 = the map's top pixels (ties broken by a tiny seeded jitter), 1.. = the null
    deletions of the same number of pixels (``cfg.null``: the top mask cyclically shifted
    by at least a quarter of the image each way, or random pixels). ``within`` (N, H, W):
    see :func:`_masks_within`."""
    n, h, w = m.shape
    npix = h * w
    rng = np.random.default_rng(cfg.seed)
    flat = m.reshape(n, npix)
    jitter = rng.random(flat.shape) * 1e-6 * (np.abs(flat).max(1, keepdims=True) + 1e-12)
    if within is not None:
        return _masks_within(flat + jitter, np.asarray(within).reshape(n, npix) > 0, cfg,
                             rng, (h, w))
    rank = np.argsort(np.argsort(-(flat + jitter), axis=1, kind="stable"), axis=1)
    k_all = [max(1, int(round(f * npix))) for f in cfg.fractions]
    masks = np.zeros((n, 1 + cfg.n_random, len(k_all), npix), bool)
    shifts = [(int(rng.integers(h // 4, h - h // 4 + 1)), int(rng.integers(w // 4,
                                                                            w - w // 4 + 1)))
              for _ in range(cfg.n_random)]
    for j, k in enumerate(k_all):
        masks[:, 0, j] = rank < k
        top = masks[:, 0, j].reshape(n, h, w)
        for r in range(cfg.n_random):
            if cfg.null == "shift":
                masks[:, 1 + r, j] = np.roll(top, shifts[r], axis=(1, 2)).reshape(n, npix)
            else:
                rr = np.argsort(rng.random((n, npix)), axis=1)
                masks[:, 1 + r, j] = rr < k
    return masks


def _masks_within(flat: np.ndarray, region: np.ndarray, cfg: EvidenceConfig,
                  rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """:func:`deletion_masks` inside each image's ``region`` (N, H*W bool; an empty
    region counts as the whole image): ``fractions`` of the region's pixels, the map's
    top ones against ``n_random`` null sets of the region's pixels: random pixels
    (``within_null="pixels"``), random blobs (``"blobs"``: the region's pixels nearest
    a random pixel of the region, a disc clipped to the region) or the top mask moved
    (``"moved"``: :func:`_moved_mask`, its shape kept). One random pixel per null
    deletion serves every fraction."""
    n, npix = flat.shape
    masks = np.zeros((n, 1 + cfg.n_random, len(cfg.fractions), npix), bool)
    for i in range(n):
        inside = region[i] if region[i].any() else np.ones(npix, bool)
        idx = np.flatnonzero(inside)
        order = idx[np.argsort(-flat[i, idx], kind="stable")]
        blobs = seeds = near = None
        if cfg.within_null in ("blobs", "moved"):
            yx = np.stack(np.unravel_index(idx, shape), 1).astype(np.float64)
            seeds = yx[rng.integers(0, idx.size, cfg.n_random)]
            dist = ((yx[None] - seeds[:, None]) ** 2).sum(-1) + \
                0.1 * rng.random((cfg.n_random, idx.size))     # ties broken at random
            near = np.argsort(dist, axis=1, kind="stable")     # region pixels by distance
            blobs = idx[near]
        for j, f in enumerate(cfg.fractions):
            k = max(1, int(round(f * idx.size)))
            masks[i, 0, j, order[:k]] = True
            for r in range(cfg.n_random):
                if cfg.within_null == "moved":
                    pick = _moved_mask(order[:k], seeds[r], blobs[r], inside, shape)
                elif blobs is not None:
                    pick = blobs[r, :k]
                else:
                    pick = rng.choice(idx, size=k, replace=False)
                masks[i, 1 + r, j, pick] = True
    return masks


def _moved_mask(top: np.ndarray, centre: np.ndarray, by_distance: np.ndarray,
                region: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Flat indices of the top mask ``top`` (flat indices) moved so that its centroid
    lands on ``centre`` (y, x): its shape kept (a compact mask stays compact, a
    scattered one scattered); pixels that land outside the ``region`` (flat bool) are
    replaced by the region's free pixels nearest ``centre`` (``by_distance``: the
    region's flat indices ordered by distance to it), so that as many pixels are
    deleted as the top mask holds."""
    h, w = shape
    ty, tx = np.unravel_index(top, shape)
    dy, dx = (int(round(float(centre[0]) - ty.mean())),
              int(round(float(centre[1]) - tx.mean())))
    my, mx = ty + dy, tx + dx
    ok = (my >= 0) & (my < h) & (mx >= 0) & (mx < w)
    flat = my[ok] * w + mx[ok]
    flat = np.unique(flat[region[flat]])
    need = top.size - flat.size
    if need > 0:
        free = by_distance[~np.isin(by_distance, flat)]
        flat = np.concatenate([flat, free[:need]])
    return flat


def evidence_check_tiled(model: torch.nn.Module, images: np.ndarray, maps: np.ndarray,
                         targets: np.ndarray, tile: int,
                         config: EvidenceConfig | None = None, batch_size: int = 2,
                         device: str | torch.device = "cpu") -> dict:
    """:func:`evidence_check` for images larger than the model's ``tile`` x ``tile``
    input: masks over the whole image, scores the mean over non-overlapping tiles
    (``batch_size`` tiles per forward pass). Adds ``tile`` and ``tiles`` to the
    answer."""
    from ..data.tiling import tile_grid

    cfg = config or EvidenceConfig()
    x_all = np.asarray(images, np.float32)
    n, c, h, w = x_all.shape
    masks = deletion_masks(_check_maps(maps, (n, c, h, w)), cfg)
    grid = tile_grid(h, w, tile, 0)
    n_var = masks.shape[1] * masks.shape[2]
    scores = np.zeros((n, 1 + n_var), np.float64)
    probs = np.zeros((n, 1 + n_var), np.float64)
    with torch.no_grad():
        for i in range(n):
            xi = torch.as_tensor(x_all[i], device=device)
            mean = substrate_of(xi[None], cfg)[0]
            mi = masks[i].reshape(n_var, h, w)
            for v in range(1 + n_var):
                xv = xi if v == 0 else torch.where(
                    torch.as_tensor(mi[v - 1], device=device), mean, xi)
                s_sum = p_sum = 0.0
                for b0 in range(0, len(grid), batch_size):
                    tb = torch.stack([xv[:, y:y + tile, xx:xx + tile]
                                      for y, xx in grid[b0:b0 + batch_size]])
                    t = torch.full((tb.shape[0],), int(targets[i]), device=device)
                    s, p = target_scores(model(tb), t)
                    s_sum += float(s.sum())
                    p_sum += float(p.sum())
                scores[i, v] = s_sum / len(grid)
                probs[i, v] = p_sum / len(grid)
    out = _summary(scores if cfg.score == "logit" else probs, probs, cfg)
    out.update({"tile": int(tile), "tiles": len(grid)})
    return out


def _summary(scores: np.ndarray, probs: np.ndarray, cfg: EvidenceConfig) -> dict:
    """States and numbers from the target scores and probabilities (N, 1 + V): column 0
    intact, then the variants in :func:`deletion_masks`'s order."""
    n = scores.shape[0]
    s0 = scores[:, 0]
    sv = scores[:, 1:].reshape(n, 1 + cfg.n_random, len(cfg.fractions))
    drop_top = s0 - sv[:, 0].mean(1)
    drop_each = s0[:, None] - sv[:, 1:].mean(2)                  # (N, n_random)
    drop_rand = drop_each.mean(1)
    gain = drop_top - drop_rand
    # every null deletion leaves more of the target than the map's top pixels do (mean
    # over the fractions: at large fractions probabilities may both reach 0 and tie)
    beats = (drop_top[:, None] > drop_each).all(1)
    localised = (gain >= cfg.min_gain) & beats
    p_min = probs.min(1)
    saturated = np.zeros(n, bool) if cfg.saturation is None else p_min >= cfg.saturation
    state = np.where(localised, "localised", np.where(saturated, "undetermined", "none"))
    reasons = []
    for i in range(n):
        if state[i] == "localised":
            reasons.append("")
        elif state[i] == "undetermined":
            reasons.append(f"saturated: p(target) stayed >= {cfg.saturation:g} (lowest "
                           f"{p_min[i]:.4f}) after deleting up to "
                           f"{100 * max(cfg.fractions):.0f}% of the pixels, the map's and "
                           "random ones; the check cannot tell a localised map from one "
                           "that is not")
        else:
            reasons.append(f"deleting the map's top pixels lowers the target "
                           f"{'log-odds' if cfg.score == 'logit' else 'probability'} by "
                           f"{drop_top[i]:.3f}, deleting pixels elsewhere by "
                           f"{drop_rand[i]:.3f} (gain {gain[i]:+.3f} < {cfg.min_gain:g}"
                           f"{'' if beats[i] else ', not above every null deletion'})")
    return {"state": state.tolist(), "reason": reasons, "p0": probs[:, 0].tolist(),
            "p_min": p_min.tolist(), "score0": s0.tolist(),
            "drop_top": drop_top.tolist(), "drop_random": drop_rand.tolist(),
            "gain": gain.tolist(), "beats_all_random": beats.tolist(),
            "config": cfg.to_dict()}


def evidence_findings(evidence: dict | None, labels: list[str] | None = None
                      ) -> list[Finding]:
    """Findings for an evidence check's answer: one ``evidence-none`` caution for the
    maps without localised evidence, one ``evidence-undetermined`` note for those the
    check could not judge (``labels`` name the images; default their indices)."""
    if not evidence or "state" not in evidence:
        return []
    states = list(evidence["state"])
    names = labels or [f"image {i}" for i in range(len(states))]
    out = []
    for state, code in (("none", EVIDENCE_NONE), ("undetermined", EVIDENCE_UNDETERMINED)):
        idx = [i for i, s in enumerate(states) if s == state]
        if not idx:
            continue
        which = "the map" if len(states) == 1 else \
            f"{len(idx)} of {len(states)} maps ({', '.join(names[i] for i in idx[:6])}" \
            f"{', ...' if len(idx) > 6 else ''})"
        reason = (evidence.get("reason") or [""] * len(states))[idx[0]]
        if state == "none":
            msg = (f"no localised evidence in {which}: {reason}. The class may be carried "
                   "by the image as a whole or by an absence (e.g. a negative control); "
                   "do not read the map as the model's reason. Try a contrast class.")
        else:
            msg = (f"evidence check undetermined for {which}: {reason}. The map may still "
                   "be right; judge it against the biology (e.g. its overlap with nuclei).")
        gains = [float(evidence["gain"][i]) for i in idx] if "gain" in evidence else []
        out.append(make(code, msg, images=idx, n_images=len(states), gain=gains))
    return out
