"""Classification metrics that stay honest when classes are unequal.

Balanced accuracy (the mean of per-class recalls) is 1/K for a model that always
answers the largest class, whatever the class proportions; plain accuracy is not.
"""

from __future__ import annotations

import numpy as np


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


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix as plain
    JSON-ready values (stored in bundles, printed by ``train``)."""
    k = len(class_names)
    cm = confusion_matrix(labels, predictions, k)
    recall = per_class_recall(cm)
    n = int(cm.sum())
    return {
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
    lines = [f"validation: balanced accuracy {report['balanced_accuracy']:.3f} "
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
