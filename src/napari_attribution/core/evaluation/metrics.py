"""Metrics for attribution maps.

Pixel level: deletion and insertion AUC (Petsiuk et al. 2018, RISE) with several
substrates, ROAD (Rong et al. 2022, noisy linear imputation; :data:`FIDELITY_METRICS`
names them all and :func:`trained_perturbations` says which ones a method optimises
during attribution, so that tables can label them), pointing game
and relevance mass inside a ground-truth mask, and the model-randomisation sanity
check (Adebayo et al. 2018). Channel level: accuracy when only the top-k channels
are kept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from ..attribution.pcim import make_substrate
from ..models.classifier import frozen
from ..runtime.errors import InputError
from ..study.classification import interval


def _check_maps(maps: np.ndarray, images: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    n, c, h, w = images.shape
    if maps.shape not in ((n, h, w), (n, c, h, w)):
        raise InputError(f"maps of shape {maps.shape} do not fit images of shape "
                         f"{images.shape}; expected {(n, h, w)} or {(n, c, h, w)}")
    if not np.isfinite(maps).all():
        raise InputError("attribution maps contain NaN or infinite values")
    return maps


#: how the perturbation metrics order elements of equal relevance (stated in outputs)
TIE_BREAKING = "random"


def _rank_positions(maps: np.ndarray, seed: int) -> np.ndarray:
    """Per map, the rank (0 = most relevant) of every element.

    Elements of exactly equal value are ordered at random (:data:`TIE_BREAKING`): a
    seeded random key (``seed``) breaks each tie, never the raster order, so a constant
    map scores like a random order and a map that is three-quarters one value does not
    score by where its pixels lie. Distinct values keep their order exactly.
    """
    flat = maps.reshape(maps.shape[0], -1)
    rng = np.random.default_rng(seed)
    key = rng.random(flat.shape)
    order = np.lexsort((key, -flat.astype(np.float64)), axis=1)
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(flat.shape[1])[None], axis=1)
    return pos


def largest_tie(maps: np.ndarray) -> np.ndarray:
    """Per map, the share of its elements taken by its most frequent value (1/n for a
    tie-free map, 1.0 for a constant one): how much the tie-breaking decides."""
    flat = np.asarray(maps).reshape(np.shape(maps)[0], -1)
    out = np.empty(flat.shape[0], np.float64)
    for i, row in enumerate(flat):
        _, counts = np.unique(row, return_counts=True)
        out[i] = counts.max() / row.size
    return out


def tie_report(maps: np.ndarray, seed: int) -> dict:
    """What the metrics did with ties in ``maps``: the rule, its seed, and the mean and
    largest share of a map taken by one value (pixel maps as ROAD sees them, and the maps
    as given)."""
    pm = _pixel_maps(maps)
    share = largest_tie(pm)
    return {"rule": TIE_BREAKING, "seed": int(seed),
            "largest_tie_mean": float(share.mean()), "largest_tie_max": float(share.max())}


def _auc(curve: np.ndarray) -> np.ndarray:
    """Normalised trapezoid area under curves (..., S+1) sampled on [0, 1]."""
    s = curve.shape[-1] - 1
    return (curve.sum(-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / s


SUBSTRATE_KINDS = ("zero", "mean", "blur")


def _substrate(x: torch.Tensor, kind: float | str, blur_sigma: float) -> torch.Tensor:
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        return torch.full_like(x, float(kind))
    if kind not in SUBSTRATE_KINDS:
        raise InputError(f"unknown substrate {kind!r}; use a number or one of "
                         f"{list(SUBSTRATE_KINDS)}")
    return make_substrate(x, kind, blur_sigma)


def perturbation_curves(model: torch.nn.Module, images: np.ndarray, maps: np.ndarray,
                        targets: np.ndarray, mode: str = "deletion", n_steps: int = 50,
                        substrate: float | str | None = None, blur_sigma: float = 5.0,
                        batch_size: int = 256, device: str = "cpu", seed: int = 0
                        ) -> np.ndarray:
    """Target probability as the most relevant pixels are deleted or inserted: (N, S+1).

    ``deletion`` starts from the image and fades pixels, most relevant first, into
    ``substrate`` (default ``"zero"``); ``insertion`` starts from ``substrate`` (default
    ``"blur"``: Gaussian, ``blur_sigma``) and puts the original pixels back. A substrate
    is a number, ``"zero"``, ``"mean"`` (per image and channel) or ``"blur"``. (N, H, W)
    maps move whole pixels (all channels); (N, C, H, W) maps move single pixel-channels.
    """
    if mode not in ("deletion", "insertion"):
        raise InputError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    x = np.asarray(images, np.float32)
    maps = _check_maps(maps, x)
    n, c, h, w = x.shape
    per_channel = maps.ndim == 4
    pos = torch.as_tensor(_rank_positions(maps, seed), device=device)
    n_el = pos.shape[1]
    n_steps = int(min(n_steps, n_el))
    counts = np.round(np.linspace(0, n_el, n_steps + 1)).astype(np.int64)
    xt = torch.as_tensor(x, device=device)
    if substrate is None:
        substrate = "zero" if mode == "deletion" else "blur"
    sub = _substrate(xt, substrate, blur_sigma)
    start, end = (xt, sub) if mode == "deletion" else (sub, xt)
    tg = torch.as_tensor(np.asarray(targets), device=device).long()
    curves = np.zeros((n, n_steps + 1), np.float32)
    steps_per_chunk = max(1, batch_size // max(1, n))
    with torch.no_grad(), frozen(model) as model:
        for s0 in range(0, n_steps + 1, steps_per_chunk):
            ks = counts[s0:s0 + steps_per_chunk]
            m = torch.stack([(pos < int(k)) for k in ks], 1).float()  # (N, K, n_el)
            m = m.view(n, len(ks), *((c, h, w) if per_channel else (1, h, w)))
            batch = start[:, None] + m * (end - start)[:, None]
            curves[:, s0:s0 + len(ks)] = _target_probs(
                model, batch.reshape(-1, c, h, w), tg.repeat_interleave(len(ks)),
                batch_size).view(n, len(ks)).cpu().numpy()
    return curves


def _target_probs(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """Softmax probability of each row's target class, in batches (no gradients)."""
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x[i:i + batch_size]), 1)
                           for i in range(0, x.shape[0], batch_size)])
    return probs.gather(1, targets.view(-1, 1))[:, 0]


def road_curves(model: torch.nn.Module, images: np.ndarray, maps: np.ndarray,
                targets: np.ndarray, order: str = "morf",
                fractions: np.ndarray | None = None, noise: float = 0.01,
                batch_size: int = 256, device: str = "cpu", seed: int = 0) -> np.ndarray:
    """ROAD (Rong et al. 2022): target probability as a growing fraction of pixels is
    removed by noisy linear imputation (:mod:`.road`): (N, len(fractions)).

    ``order="morf"`` removes the most relevant pixels first (a faithful map makes the
    probability fall fast: lower AUC is better); ``"lerf"`` the least relevant first
    (the probability should hold: higher is better). Fractions default to 0, 0.1 … 0.9.
    Per-channel maps are summed over channels: ROAD removes whole pixels.
    """
    from .road import noisy_linear_impute

    if order not in ("morf", "lerf"):
        raise InputError(f"ROAD order must be 'morf' or 'lerf'; got {order!r}")
    x = np.asarray(images, np.float32)
    pm = _pixel_maps(_check_maps(maps, x))
    if order == "lerf":
        pm = -pm
    fractions = np.linspace(0, 0.9, 10) if fractions is None else np.asarray(fractions)
    pos = _rank_positions(pm, seed)
    n, c, h, w = x.shape
    perturbed = np.empty((n, len(fractions), c, h, w), np.float32)
    for i in range(n):
        for j, f in enumerate(fractions):
            removed = (pos[i] < int(round(f * h * w))).reshape(h, w)
            perturbed[i, j] = noisy_linear_impute(x[i], removed, noise, seed + 7919 * i + j)
    tg = torch.as_tensor(np.asarray(targets), device=device).long()
    with frozen(model) as net:
        probs = _target_probs(net, torch.as_tensor(perturbed.reshape(-1, c, h, w),
                                                   device=device),
                              tg.repeat_interleave(len(fractions)), batch_size)
    return probs.view(n, len(fractions)).cpu().numpy()


def deletion_auc(model, images, maps, targets, **kwargs) -> np.ndarray:
    """Per-image deletion AUC (lower = better): see :func:`perturbation_curves`."""
    return _auc(perturbation_curves(model, images, maps, targets, "deletion", **kwargs))


def insertion_auc(model, images, maps, targets, **kwargs) -> np.ndarray:
    """Per-image insertion AUC (higher = better): see :func:`perturbation_curves`."""
    return _auc(perturbation_curves(model, images, maps, targets, "insertion", **kwargs))


@dataclass(frozen=True)
class FidelityMetric:
    """A named perturbation score: how pixels are removed, and which way is better."""

    name: str
    mode: str                      # "deletion", "insertion" or "road"
    substrate: str = "zero"        # deletion target / insertion start; ROAD: "morf"/"lerf"
    blur_sigma: float = 5.0
    higher_is_better: bool = False
    description: str = ""

    def scores(self, model, images, maps, targets, n_steps: int = 50,
               device: str = "cpu", seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """Per-image AUC of this metric's curve."""
        if self.mode == "road":
            curves = road_curves(model, images, maps, targets, order=self.substrate,
                                 device=device, seed=seed, batch_size=batch_size)
        else:
            curves = perturbation_curves(model, images, maps, targets, self.mode,
                                         n_steps=n_steps, substrate=self.substrate,
                                         blur_sigma=self.blur_sigma, device=device,
                                         seed=seed, batch_size=batch_size)
        return _auc(curves)

    def matches(self, mode: str, substrate: str, blur_sigma: float) -> bool:
        """Whether this metric uses exactly the given perturbation."""
        return (self.mode == mode and self.substrate == substrate
                and (substrate != "blur" or abs(self.blur_sigma - blur_sigma) < 1e-9))


FIDELITY_METRICS: dict[str, FidelityMetric] = {m.name: m for m in (
    FidelityMetric("deletion", "deletion", "zero",
                   description="fade most relevant first to zero (RISE deletion)"),
    FidelityMetric("deletion_mean", "deletion", "mean",
                   description="fade most relevant first to the image's channel means"),
    FidelityMetric("deletion_blur", "deletion", "blur", blur_sigma=10.0,
                   description="fade most relevant first to a Gaussian blur, sigma 10"),
    FidelityMetric("insertion", "insertion", "blur", higher_is_better=True,
                   description="restore most relevant first from a Gaussian blur, sigma 5 "
                               "(RISE insertion)"),
    FidelityMetric("insertion_zero", "insertion", "zero", higher_is_better=True,
                   description="restore most relevant first from zero"),
    FidelityMetric("insertion_mean", "insertion", "mean", higher_is_better=True,
                   description="restore most relevant first from the channel means"),
    FidelityMetric("road_morf", "road", "morf",
                   description="ROAD noisy linear imputation, most relevant first"),
    FidelityMetric("road_lerf", "road", "lerf", higher_is_better=True,
                   description="ROAD noisy linear imputation, least relevant first"),
)}


def trained_perturbations(method: str, params: dict | None = None) -> list[str]:
    """Names of the fidelity metrics whose perturbation ``method`` optimises during
    attribution (scores on them are not independent evidence of fidelity).

    The method's record says which games it plays (``trained_on``): PCIM's (and
    black-box PCIM's) deletion game fades to its ``substrate`` and its preservation game
    to its ``preserve_substrate``, i.e. the deletion and insertion metrics with those
    substrates. Gradient methods optimise no perturbation.
    """
    from ..attribution.methods import registered_methods

    spec = registered_methods().get(method)
    if spec is None:
        return []
    games = spec.perturbations(params)
    return [m.name for m in FIDELITY_METRICS.values()
            if any(m.matches(*g) for g in games)]


def bootstrap_interval(values: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite ``values`` and its percentile bootstrap
    interval; NaNs when there are no finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    return (float(v.mean()), *interval(means, level))


def _pixel_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    return maps.sum(1) if maps.ndim == 4 else maps


def _check_masks(masks: np.ndarray, maps: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks).astype(bool)
    if masks.shape != maps.shape:
        raise InputError(f"masks of shape {masks.shape} do not fit maps of shape {maps.shape}")
    return masks


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """Per image: 1.0 if the map's maximum lies in the mask (dilated by ``tolerance``
    pixels), else 0.0; NaN for an empty mask."""
    pm = _pixel_maps(maps)
    masks = _check_masks(masks, pm)
    if tolerance > 0:
        t = int(tolerance)
        mt = torch.as_tensor(masks[:, None].astype(np.float32))
        masks = torch.nn.functional.max_pool2d(mt, 2 * t + 1, 1, t)[:, 0].numpy() > 0
    out = np.full(pm.shape[0], np.nan, np.float32)
    for i, (m, k) in enumerate(zip(pm, masks, strict=True)):
        if k.any():
            out[i] = float(k.flat[int(np.argmax(m))])
    return out


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: share of the positive attribution that lies inside the mask
    (Arras et al. 2022); NaN for an empty mask or a map without positive values."""
    pm = np.maximum(_pixel_maps(maps), 0)
    masks = _check_masks(masks, pm)
    total = pm.reshape(pm.shape[0], -1).sum(1)
    inside = (pm * masks).reshape(pm.shape[0], -1).sum(1)
    ok = (total > 0) & masks.reshape(masks.shape[0], -1).any(1)
    return np.where(ok, inside / np.where(total > 0, total, 1), np.nan).astype(np.float32)


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    sv = v[order]
    _, first, counts = np.unique(sv, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0
    ranks = np.empty(v.shape[0], np.float64)
    ranks[order] = np.repeat(avg, counts)
    return ranks


def _spearman_numpy(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _average_ranks(np.ravel(a)), _average_ranks(np.ravel(b))
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (ties get average ranks; 0.0 when either
    is constant). ``scipy.stats.spearmanr`` where SciPy is installed (a dependency of
    scikit-image), else the same computation in numpy."""
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    try:
        from scipy.stats import spearmanr
    except ImportError:  # pragma: no cover - SciPy comes with scikit-image
        return _spearman_numpy(a, b)
    return float(spearmanr(a, b).statistic)


def randomize_model(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with *every* parameter re-initialised (Adebayo et al.'s full
    cascading randomisation); normalisation statistics are reset too.

    Layers with an initialiser (``reset_parameters``: convolutions, linear and
    normalisation layers) use it; every other parameter -- DCMIX's channel-mixing
    logits, a custom layer's scale -- is drawn from N(0, 1), so that no learned value
    survives (a mixing layer keeping its learned 0.98 weight on one channel would keep
    the trained model's channel preference).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError("the randomisation check needs a regular torch module, not "
                         "TorchScript")
    if not any(hasattr(m, "reset_parameters") for m in model.modules()):
        raise InputError("the randomisation check needs a model built from torch layers "
                         "(exported programs have none to re-initialise)")
    rand = copy.deepcopy(model)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    reset: set[int] = set()
    for m in rand.modules():
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
            reset.update(id(p) for p in m.parameters(recurse=False))
    with torch.no_grad():
        for p in rand.parameters():
            if id(p) not in reset:
                p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype))
    for m in rand.modules():
        m.training = False
    return rand


def sanity_spearman(maps_trained: np.ndarray, maps_random: np.ndarray,
                    absolute: bool = False) -> np.ndarray:
    """Per-image Spearman between maps of the trained and of the randomised model.

    A method that explains the model, not the image, gives values near 0.
    """
    a, b = _pixel_maps(maps_trained), _pixel_maps(maps_random)
    if a.shape != b.shape:
        raise InputError(f"map shapes differ: {a.shape} vs {b.shape}")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    return np.array([spearman(x, y) for x, y in zip(a, b, strict=True)], np.float32)


def topk_channel_accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                          ranking: list[int], k: int, fill: str = "mean",
                          batch_size: int = 64, device: str = "cpu") -> float:
    """Accuracy when only the ``k`` top-ranked channels are kept; the others are set to
    their dataset mean (``fill='mean'``) or zero."""
    x = np.array(images, np.float32, copy=True)
    c = x.shape[1]
    if sorted(ranking) != list(range(c)):
        raise InputError(f"ranking must be a permutation of the {c} channel indices; "
                         f"got {list(ranking)}")
    if not 1 <= k <= c:
        raise InputError(f"k must be between 1 and {c}; got {k}")
    for ch in ranking[k:]:
        x[:, ch] = x[:, ch].mean() if fill == "mean" else 0.0
    xt = torch.as_tensor(x, device=device)
    y = torch.as_tensor(np.asarray(labels), device=device).long()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(xt[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / x.shape[0]
