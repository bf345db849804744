"""Classification metrics that stay honest when classes are unequal.

Balanced accuracy (the mean of per-class recalls) is 1/K for a model that always
answers the largest class, whatever the class proportions; plain accuracy is not.
"""

from __future__ import annotations

import numpy as np

from .findings import Finding, make, register_code

#: fewer held-out objects than this in some class, or a wider balanced-accuracy interval
#: than MAX_INTERVAL, and the accuracy is called small-validation
MIN_HELD_OUT = 10
MAX_INTERVAL = 0.3
#: fewer training objects than this in some class: small-training
MIN_TRAINING = 10

SMALL_VALIDATION = register_code(
    "small-validation", "caution",
    "the smallest held-out class has < 10 objects or the balanced-accuracy interval is "
    "wider than 0.3")
SMALL_TRAINING = register_code(
    "small-training", "caution", "some class has < 10 training objects")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int
                     ) -> np.ndarray:
    """Counts (K, K): row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * n_classes + predictions,
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall per true class (NaN for a class with no examples)."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray,
                      n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``labels``."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(n_classes or max(int(labels.max(initial=0)), int(np.max(predictions, initial=0))) + 1)
    recall = per_class_recall(confusion_matrix(labels, predictions, k))
    return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")


def batched_balanced_accuracy(labels: np.ndarray, correct: np.ndarray,
                              n_classes: int) -> np.ndarray:
    """Balanced accuracy of each row of ``correct`` (R, N) booleans against ``labels``;
    vectorised for bootstraps and repeated perturbations."""
    onehot = np.eye(n_classes, dtype=np.float64)[np.asarray(labels, dtype=np.int64)]
    support = onehot.sum(0)
    present = support > 0
    hits = np.asarray(correct, dtype=np.float64) @ onehot  # (R, K)
    return (hits[:, present] / support[present]).mean(1)


def wilson_interval(hits: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (95 % by default); (0, 1) for
    n = 0. Unlike a bootstrap it does not collapse to a point for 3 of 3."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def balanced_accuracy_interval(cm: np.ndarray) -> tuple[float, float] | None:
    """95 % interval of the balanced accuracy: the mean of the per-class Wilson bounds
    of the recalls (classes with held-out objects). Conservative, and honest for tiny
    classes where a bootstrap over 3 correct objects gives [1, 1]."""
    cm = np.asarray(cm)
    support = cm.sum(1)
    bounds = [wilson_interval(cm[i, i], support[i]) for i in range(cm.shape[0])
              if support[i] > 0]
    if not bounds:
        return None
    lo, hi = np.mean(bounds, axis=0)
    return float(lo), float(hi)


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy with its 95 % interval, per-class recall with Wilson
    intervals, held-out n per class and the confusion matrix as plain JSON-ready values
    (stored in bundles, printed by ``train``)."""
    k = len(class_names)
    cm = confusion_matrix(labels, predictions, k)
    recall = per_class_recall(cm)
    n = int(cm.sum())
    ba_iv = balanced_accuracy_interval(cm)
    return {
        "balanced_accuracy_95": None if ba_iv is None else list(ba_iv),
        "recall_95": {c: (None if s == 0 else list(wilson_interval(cm[i, i], s)))
                      for i, (c, s) in enumerate(zip(class_names, cm.sum(1), strict=True))},
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall)) if np.isfinite(recall).any()
        else float("nan"),
        "per_class_recall": {c: (None if np.isnan(r) else float(r))
                             for c, r in zip(class_names, recall, strict=True)},
        "support": {c: int(s) for c, s in zip(class_names, cm.sum(1), strict=True)},
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def format_classification_report(report: dict) -> str:
    """A few lines: balanced accuracy, per-class recall and the confusion matrix."""
    names = report["class_names"]
    width = max(9, *(len(n) for n in names))
    lines = [f"{report.get('scope', 'validation')}: {accuracy_line(report)} "
             f"(plain accuracy {report['accuracy']:.3f})",
             "recall per class: " + ", ".join(
                 f"{c} {'n/a' if r is None else f'{r:.3f}'} (n={report['support'][c]})"
                 for c, r in report["per_class_recall"].items()),
             "confusion matrix (rows: true, columns: predicted)",
             " " * (width + 2) + "".join(f"{n[:width]:>{width + 1}}" for n in names)]
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width + 2}}" + "".join(f"{v:>{width + 1}}" for v in row))
    return "\n".join(lines)


def stratified_bootstrap(labels: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """Resampling counts (n_boot, N): every class is resampled within itself, so each
    resample keeps the class sizes (and every class stays present)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, labels.size), dtype=np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        counts[:, members] = rng.multinomial(members.size,
                                             np.full(members.size, 1.0 / members.size),
                                             size=n_boot)
    return counts


def class_balanced_mean(values: np.ndarray, labels: np.ndarray,
                        weights: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``values`` (N,) per class, then over classes; with resampling ``weights``
    (B, N) one such mean per resample (B,). Of correctness indicators it is the
    balanced accuracy; of per-crop losses the class-balanced loss."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    w = np.ones((1, labels.size)) if weights is None else np.asarray(weights, np.float64)
    means = []
    for c in np.unique(labels):
        m = labels == c
        means.append((w[:, m] * values[m]).sum(1) / np.maximum(w[:, m].sum(1), 1e-12))
    out = np.mean(means, axis=0)
    return out[0] if weights is None else out


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Central percentile interval of bootstrap ``samples``."""
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def accuracy_line(report: dict) -> str:
    """'balanced accuracy 0.950 [0.69, 1.00] (held out: a 60, b 3)': the number, its
    95 % interval and the held-out n per class, as every face prints it."""
    iv = report.get("balanced_accuracy_95")
    ci = "" if not iv else f" [{iv[0]:.2f}, {iv[1]:.2f}]"
    n = ", ".join(f"{c} {s}" for c, s in report.get("support", {}).items())
    return f"balanced accuracy {report['balanced_accuracy']:.3f}{ci} (held out: {n})"


def sample_size_findings(report: dict, train_support: dict[str, int] | None = None,
                         cross_validated: int = 0) -> list[Finding]:
    """``small-validation`` when the smallest held-out class has fewer than
    :data:`MIN_HELD_OUT` objects or the balanced-accuracy interval is wider than
    :data:`MAX_INTERVAL`; ``small-training`` when a class has fewer than
    :data:`MIN_TRAINING` training objects."""
    out: list[Finding] = []
    support = {c: int(s) for c, s in (report.get("support") or {}).items() if s}
    iv = report.get("balanced_accuracy_95")
    width = None if not iv else iv[1] - iv[0]
    if support:
        rare = min(support, key=support.get)
        few = support[rare] < MIN_HELD_OUT
        wide = width is not None and width > MAX_INTERVAL
        if few or wide:
            why = (f"only {support[rare]} held-out {rare} object"
                   f"{'s' if support[rare] != 1 else ''}" if few else
                   f"the 95 % interval is {width:.2f} wide")
            remedy = ("add objects or fields of the rare class" if cross_validated else
                      "cross-validate (train --cv 5: every object held out once) or add "
                      "objects or fields of the rare class")
            out.append(make(
                SMALL_VALIDATION,
                f"The accuracy rests on few objects: {why} ({accuracy_line(report)}). "
                f"Read it as a rough estimate, not a measurement; {remedy}.",
                support=support, balanced_accuracy=report.get("balanced_accuracy"),
                balanced_accuracy_95=iv, cross_validated=cross_validated))
    if train_support:
        tiny = {c: n for c, n in train_support.items() if 0 < n < MIN_TRAINING}
        if tiny:
            out.append(make(
                SMALL_TRAINING,
                "Few training objects: " + ", ".join(f"{c} {n}" for c, n in tiny.items())
                + f" (fewer than {MIN_TRAINING}). A model, and a channel ranking, learnt "
                "from so few objects is fragile; add objects before trusting it.",
                train_support=dict(train_support)))
    return out
