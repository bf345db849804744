"""Shortcut check: can plain per-channel brightness tell the classes apart, and if so,
is that the biology or a batch effect?

A stain, exposure or batch difference between wells shows up as a whole-channel
intensity difference; so does a phenotype that changes a marker's brightness (GFP moving
into the nucleus, PH3 in mitosis). Intensity statistics alone cannot tell the two apart;
only the design can. The check therefore has two steps:

1. Fit small multinomial logistic regressions (numpy features, torch fit) on the SAME
   train/validation split as the CNN: all statistics of all channels, all statistics of
   each channel, and each single statistic alone; report held-out balanced accuracy.
   A channel is *flagged* when one statistic alone separates the classes well above
   chance or about as well as the CNN.
2. Judge each flagged channel by the design (:func:`assess_units`):

   * ``shortcut-batch`` (alarm): the design cannot separate biology from batch: some
     class is a single well (or plate) of its own, or the statistic separates wells
     *within* a class about as well as it separates the classes;
   * ``shortcut-inconsistent`` (caution): the difference fails in a held-out well;
   * ``phenotype-intensity`` (note): otherwise: the phenotype changes the channel's
     intensity, consistently in the held-out wells when whole wells were held out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .classification import balanced_accuracy, wilson_interval
from .findings import Finding, make, register_code

STATISTICS = ("mean", "std", "p05", "p50", "p95", "object_mean")
# a single channel statistic is "well above chance" at this share of the way to 1.0
WELL_ABOVE = 0.6
CLOSE_TO_CNN = 0.05
#: wells need this many objects to be compared with each other
MIN_PER_WELL = 10
#: within-class well difference >= this share of the class difference: "as large as"
WITHIN_AS_WELL_AS = 0.8
#: a held-out well below this accuracy of the statistic breaks the consistency
CONSISTENT_ACCURACY = 0.6

SHORTCUT_BATCH = register_code(
    "shortcut-batch", "alarm",
    "a channel's intensity separates the classes and the design cannot tell biology from "
    "batch (class = well or plate, or wells within a class differ as much as the classes)")
SHORTCUT_INCONSISTENT = register_code(
    "shortcut-inconsistent", "caution",
    "a channel's intensity separates the classes overall but not in some held-out well")
PHENOTYPE_INTENSITY = register_code(
    "phenotype-intensity", "note",
    "the phenotype changes a channel's intensity, with no sign of a batch effect in the "
    "design (consistent across held-out wells when wells were held out)")


def intensity_features(images: np.ndarray, object_masks: np.ndarray | None = None
                       ) -> np.ndarray:
    """Per image and channel: mean, std, 5/50/95th percentiles and the object mean
    (inside ``object_masks`` (N, H, W) when given, else a central disc of a quarter of
    the crop side in radius: nuclei-centred crops have their object there): (N, C, 6)."""
    x = np.asarray(images, dtype=np.float32)
    n, c, h, w = x.shape
    flat = x.reshape(n, c, -1)
    pct = np.percentile(flat, [5, 50, 95], axis=-1).transpose(1, 2, 0)
    if object_masks is None or np.shape(object_masks) != (n, h, w):
        yy, xx = np.mgrid[:h, :w]
        disc = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= max(1.0, min(h, w) / 4)
        obj = flat[:, :, disc.ravel()].mean(-1)
    else:
        m = np.asarray(object_masks, bool).reshape(n, 1, -1)
        area = m.sum(-1)
        obj = np.where(area > 0, (flat * m).sum(-1) / np.maximum(area, 1), flat.mean(-1))
    return np.concatenate([flat.mean(-1)[..., None], flat.std(-1)[..., None], pct,
                           obj[..., None]], axis=-1)


@dataclass
class ShortcutCheck:
    """Held-out balanced accuracy of intensity-statistics baselines, and what the design
    says about the channels they flag (``findings``)."""

    channel_names: list[str]
    chance: float
    all_features: float  # every statistic of every channel
    per_channel: dict[str, float]  # every statistic of one channel
    per_statistic: dict[str, dict[str, float]]  # channel -> statistic -> accuracy
    cnn_balanced_accuracy: float | None = None
    flagged: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    #: per flagged channel: class and within-class well separation, held-out wells
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """Messages of the alarms and cautions."""
        return [f.message for f in self.findings if f.is_warning]

    def best_statistic(self, channel: str) -> tuple[str, float]:
        stats = self.per_statistic[channel]
        name = max(stats, key=stats.get)
        return name, stats[name]

    def to_dict(self) -> dict[str, Any]:
        return {"channel_names": list(self.channel_names), "chance": self.chance,
                "all_features_balanced_accuracy": self.all_features,
                "per_channel_balanced_accuracy": dict(self.per_channel),
                "per_statistic_balanced_accuracy": {k: dict(v) for k, v in
                                                    self.per_statistic.items()},
                "cnn_balanced_accuracy": self.cnn_balanced_accuracy,
                "flagged": list(self.flagged), "warnings": list(self.warnings),
                "findings": [f.as_dict() for f in self.findings],
                "evidence": {k: dict(v) for k, v in self.evidence.items()},
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> ShortcutCheck:
        return cls(channel_names=list(d["channel_names"]), chance=float(d["chance"]),
                   all_features=float(d["all_features_balanced_accuracy"]),
                   per_channel=dict(d["per_channel_balanced_accuracy"]),
                   per_statistic={k: dict(v) for k, v in
                                  d["per_statistic_balanced_accuracy"].items()},
                   cnn_balanced_accuracy=d.get("cnn_balanced_accuracy"),
                   flagged=list(d.get("flagged", [])),
                   findings=[Finding.from_dict(f) for f in d.get("findings") or []],
                   evidence={k: dict(v) for k, v in (d.get("evidence") or {}).items()},
                   seconds=float(d.get("seconds", 0.0)))

    def assess(self, cnn_balanced_accuracy: float | None = None) -> None:
        """Set ``flagged``: channels whose brightness alone separates the classes well
        above chance, or about as well as the CNN (no findings: see :func:`assess_units`)."""
        self.cnn_balanced_accuracy = cnn_balanced_accuracy
        self.flagged = []
        high = self.chance + WELL_ABOVE * (1 - self.chance)
        floor = self.chance + 0.5 * (1 - self.chance)  # "close to the CNN" needs this too
        for ch in self.channel_names:
            _, acc = self.best_statistic(ch)
            close = (cnn_balanced_accuracy is not None and acc >= floor
                     and acc >= cnn_balanced_accuracy - CLOSE_TO_CNN)
            if acc >= high or close:
                self.flagged.append(ch)


def _effect(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two groups' values are: the difference of their medians, in the
    statistic's own units. Wells and classes are compared on the same scale, so their
    ratio needs no spread at all: a separation (AUC) saturates at 1 whenever both differ
    cleanly, and an effect in spreads explodes for a statistic that is nearly constant
    within a well (a low percentile of a per-field-normalised channel)."""
    if a.size == 0 or b.size == 0:
        return 0.0
    return abs(float(np.median(a)) - float(np.median(b)))


def _confound(labels: np.ndarray, units: dict[str, np.ndarray]) -> str | None:
    """A description when some class is a single well (or plate) holding no other class."""
    for kind in ("well", "plate"):
        keys = units.get(kind)
        if keys is None:
            continue
        classes = np.unique(labels)
        if classes.size < 2 or (kind == "plate" and np.unique(keys).size < 2):
            continue
        for c in classes:
            own = np.unique(keys[labels == c])
            if own.size == 1 and np.unique(labels[keys == own[0]]).size == 1:
                return f"class = {kind}: a class comes from one {kind} ({own[0].lstrip('/')})"
    return None


def _well_and_class_effects(v: np.ndarray, labels: np.ndarray, classes: np.ndarray,
                            wells: np.ndarray | None):
    """(class effect, within-class well effect, an example pair, every pair's effect) of
    one statistic ``v``: the largest effect between two classes, and the median effect
    over a class's pairs of wells (the class with the largest median counts)."""
    between = max(_effect(v[labels == a], v[labels == b])
                  for i, a in enumerate(classes) for b in classes[i + 1:])
    within, pair, seps = 0.0, None, []
    if wells is None:
        return between, within, pair, seps
    for c in classes:
        ws = [w for w in np.unique(wells[labels == c])
              if np.sum((wells == w) & (labels == c)) >= MIN_PER_WELL]
        cls = [(_effect(v[(wells == w1) & (labels == c)], v[(wells == w2) & (labels == c)]),
                (str(w1).lstrip("/"), str(w2).lstrip("/")))
               for i, w1 in enumerate(ws) for w2 in ws[i + 1:]]
        # a typical pair of the class's wells (the median), not the most extreme of many
        # pairs: on BBBC013 (16 + 8 control wells) the worst of 148 pairs is far from the
        # class medians
        if cls and float(np.median([sp for sp, _ in cls])) > within:
            within = float(np.median([sp for sp, _ in cls]))
            pair = max(cls)[1]
        seps += cls
    return between, within, pair, seps


def assess_units(check: ShortcutCheck, features: np.ndarray, labels: np.ndarray,
                 val_index: np.ndarray, val_pred: dict[str, np.ndarray],
                 units: dict[str, np.ndarray] | None = None, per_field: bool = False
                 ) -> None:
    """Turn the flagged channels into findings, judged by the design (module docstring).

    ``features`` (N, C, S) raw statistics; ``val_pred``: per flagged channel, the held-out
    predictions of its best single statistic; ``units``: per-image keys (``well``,
    ``plate``) from :func:`~.design.unit_keys`; ``per_field``: the images were normalised
    per field already (then the advice does not ask for it).
    """
    units = units or {}
    labels = np.asarray(labels)
    wells = units.get("well")
    confound = _confound(labels, units)
    classes = np.unique(labels)
    found: list[Finding] = []
    batch_channels: list[str] = []
    for ch in check.flagged:
        ci = check.channel_names.index(ch)
        stat, acc = check.best_statistic(ch)
        # sizes, not separations: both saturate at 1 when wells and classes each
        # separate cleanly, which says nothing about which difference is larger. Of the
        # statistics that separate the classes about as well as the best one, judge the
        # one where the classes stand out most from the wells: a batch alarm needs every
        # such statistic to move as much between wells of one class as between classes.
        stats = check.per_statistic[ch]
        candidates = [s for s in STATISTICS if s in stats and stats[s] >= acc - 0.05]
        best = None
        for s in candidates:
            between_s, within_s, pair_s, seps_s = _well_and_class_effects(
                features[:, ci, STATISTICS.index(s)], labels, classes, wells)
            ratio = within_s / between_s if between_s > 0 else float("inf")
            if best is None or ratio < best[0]:
                best = (ratio, s, between_s, within_s, pair_s, seps_s)
        _, stat, between, within, pair, seps = best
        acc = stats[stat]
        ev: dict[str, Any] = {"statistic": stat, "balanced_accuracy": acc,
                              "class_effect": round(between, 3)}
        if wells is not None:
            ev["within_class_well_effect"] = round(within, 3)
            ev["within_class_well_pairs"] = len(seps)
            held, counts = _held_out_wells(wells, val_index, labels, val_pred[ch])
            ev["held_out_wells"] = held
            ev["held_out_well_n"] = counts
        check.evidence[ch] = ev
        said = (f"{ch}'s {stat.replace('_', ' ')} alone separates the classes on held-out "
                f"images (balanced accuracy {acc:.2f}, chance {check.chance:.2f})")
        if confound is not None:
            batch_channels.append(ch)
            continue
        if pair is not None and between > 0 and within >= WITHIN_AS_WELL_AS * between:
            fix = ("per-field normalisation is already on and does not remove it"
                   if per_field else "normalise per field")
            found.append(make(
                SHORTCUT_BATCH,
                f"{said}, but wells of the same class differ in it about as much "
                f"(median difference {within:.3g} over that class's pairs, e.g. {pair[0]} "
                f"vs {pair[1]}; against {between:.3g} between the classes): a "
                f"well effect in {ch} is as large as the phenotype, so the CNN may be "
                f"reading the batch, not the biology. {fix[0].upper() + fix[1:]}; check "
                "those wells (stain, exposure, density) and add wells per class.",
                channel=ch, **ev))
            continue
        held = ev.get("held_out_wells") or {}
        counts = ev.get("held_out_well_n") or {}
        # a well goes the other way only when its whole 95 % interval stays below the
        # bar: 0.58 from 40 crops is noise, 0.1 from 6 is not
        bad = {w: a for w, a in held.items()
               if wilson_interval(a * counts.get(w, 0), counts.get(w, 0))[1]
               < CONSISTENT_ACCURACY}
        if bad:
            found.append(make(
                SHORTCUT_INCONSISTENT,
                f"{said}, but not in held-out well(s) "
                + ", ".join(f"{w} ({a:.2f})" for w, a in bad.items())
                + f": the intensity difference is not the same in every well, so a "
                f"well effect may drive part of it. Look at {ch} in those wells.",
                channel=ch, **ev))
        elif held:
            found.append(make(
                PHENOTYPE_INTENSITY,
                f"The phenotype changes {ch}'s intensity ({stat.replace('_', ' ')}, "
                f"balanced accuracy {acc:.2f} alone); consistent in {len(held)} held-out "
                "well" + ("s" if len(held) != 1 else "") + ".", channel=ch, **ev))
        else:
            where = ("no wells were given, so whether it holds across wells is not "
                     "checked" if wells is None else
                     "the wells were not held out whole, so it is not checked on new wells")
            found.append(make(
                PHENOTYPE_INTENSITY,
                f"The phenotype changes {ch}'s intensity ({stat.replace('_', ' ')}, "
                f"balanced accuracy {acc:.2f} alone); {where}.", channel=ch, **ev))
    if batch_channels:
        names = ", ".join(batch_channels)
        found.insert(0, make(
            SHORTCUT_BATCH,
            f"The brightness of {names} alone separates the classes on held-out images, "
            f"and the design cannot tell that from a batch effect ({confound}): a stain, "
            "exposure or plate difference between those units separates the classes as "
            "well as the biology. "
            + ("Per-field normalisation is already on and cannot remove it. "
               if per_field else "Normalise per field, and ")
            + "image each class in several wells (and plates), hold out whole wells, and "
            "retrain.", channels=batch_channels, confound=confound,
            **{f"{ch}_balanced_accuracy": check.best_statistic(ch)[1]
               for ch in batch_channels}))
    check.findings = found


def _held_out_wells(wells: np.ndarray, val_index: np.ndarray, labels: np.ndarray,
                    pred: np.ndarray) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracy of the statistic on each well that is wholly held out (held-out wells
    with at least 3 objects), and each such well's object count; empty when validation
    does not hold out whole wells."""
    val_index = np.asarray(val_index)
    in_val = np.zeros(wells.size, bool)
    in_val[val_index] = True
    val_wells = set(wells[val_index].tolist())
    if val_wells & set(wells[~in_val].tolist()):
        return {}, {}
    out, counts = {}, {}
    vw, vy = wells[val_index], labels[val_index]
    for w in sorted(val_wells):
        m = vw == w
        if m.sum() >= 3:
            out[str(w).lstrip("/")] = round(float((pred[m] == vy[m]).mean()), 3)
            counts[str(w).lstrip("/")] = int(m.sum())
    return out, counts


def _fit_masked_logreg(x_tr: torch.Tensor, y_tr: torch.Tensor, masks: torch.Tensor,
                       n_classes: int, l2: float = 1e-3, iters: int = 60) -> torch.Tensor:
    """Fit one class-weighted logistic regression per row of ``masks`` (M, F) at once;
    returns the weights (M, F + 1, K) (last row: bias)."""
    m, f = masks.shape
    xb = torch.cat([x_tr, torch.ones(x_tr.shape[0], 1)], 1)
    mask = torch.cat([masks, torch.ones(m, 1)], 1)[..., None]
    w = torch.zeros(m, f + 1, n_classes, requires_grad=True)
    counts = torch.bincount(y_tr, minlength=n_classes).float()
    cw = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)),
                     torch.zeros_like(counts))
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.einsum("nf,mfk->nmk", xb, w * mask)  # (N, M, K)
        loss = F.cross_entropy(logits.permute(0, 2, 1), y_tr[:, None].expand(-1, m),
                               weight=cw, reduction="mean") * m
        loss = loss + l2 * (w[:, :-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w * mask).detach()


def shortcut_check(images: np.ndarray, labels: np.ndarray, train_index: np.ndarray,
                   val_index: np.ndarray, channel_names: list[str],
                   object_masks: np.ndarray | None = None,
                   cnn_balanced_accuracy: float | None = None,
                   units: dict[str, np.ndarray] | None = None,
                   per_field: bool = False) -> ShortcutCheck:
    """Fit intensity-statistics baselines on ``train_index`` and score them on
    ``val_index`` (held-out balanced accuracy), then judge the flagged channels by the
    design (``units``: per-image ``well``/``plate`` keys); see the module docstring."""
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    feats = intensity_features(images, object_masks)  # (N, C, S)
    n, c, s = feats.shape
    x = feats.reshape(n, c * s)
    mu, sd = x[train_index].mean(0), x[train_index].std(0)
    x = (x - mu) / np.where(sd > 1e-12, sd, 1.0)
    masks = [np.ones(c * s)]
    for ci in range(c):
        m = np.zeros((c, s))
        m[ci] = 1
        masks.append(m.ravel())
    for ci in range(c):
        for si in range(s):
            m = np.zeros((c, s))
            m[ci, si] = 1
            masks.append(m.ravel())
    torch_masks = torch.tensor(np.stack(masks), dtype=torch.float32)
    with torch.enable_grad():
        w = _fit_masked_logreg(torch.tensor(x[train_index], dtype=torch.float32),
                               torch.from_numpy(labels[train_index]), torch_masks, n_classes)
    xv = torch.tensor(np.c_[x[val_index], np.ones(len(val_index))], dtype=torch.float32)
    pred = torch.einsum("nf,mfk->nmk", xv, w).argmax(-1).numpy()  # (Nv, M)
    yv = labels[val_index]
    acc = [balanced_accuracy(yv, pred[:, j], n_classes) for j in range(pred.shape[1])]
    present = np.unique(labels).size
    result = ShortcutCheck(
        channel_names=list(channel_names), chance=1.0 / max(present, 1),
        all_features=acc[0],
        per_channel={ch: acc[1 + i] for i, ch in enumerate(channel_names)},
        per_statistic={ch: {st: acc[1 + c + i * s + j] for j, st in enumerate(STATISTICS)}
                       for i, ch in enumerate(channel_names)})
    result.assess(cnn_balanced_accuracy)
    val_pred = {}
    for ch in result.flagged:
        i, j = channel_names.index(ch), STATISTICS.index(result.best_statistic(ch)[0])
        val_pred[ch] = pred[:, 1 + c + i * s + j]
    assess_units(result, feats, labels, val_index, val_pred, units, per_field)
    result.seconds = time.perf_counter() - t0
    return result


def format_shortcut(check: ShortcutCheck) -> str:
    """Text table: per channel, balanced accuracy from its intensity statistics."""
    width = max(8, *(len(n) for n in check.channel_names))
    cnn = ("" if check.cnn_balanced_accuracy is None
           else f", CNN {check.cnn_balanced_accuracy:.3f}")
    lines = [f"shortcut check: intensity statistics only, same split (chance "
             f"{check.chance:.3f}; all channels {check.all_features:.3f}{cnn})",
             f"{'channel':<{width}}  all stats  best single statistic"]
    for ch in check.channel_names:
        stat, acc = check.best_statistic(ch)
        flag = "  <- brightness alone separates the classes" if ch in check.flagged else ""
        lines.append(f"{ch:<{width}}  {check.per_channel[ch]:9.3f}  {acc:.3f} ({stat}){flag}")
    return "\n".join(lines)
