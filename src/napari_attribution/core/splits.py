"""Train/validation splits grouped by a key (e.g. well) so that nothing leaks."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def grouped_split(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into train and validation by whole groups.

    Groups are assigned per class (a group's class is its most frequent label) so that
    every class with at least two groups appears on both sides. Without ``groups``
    every image is its own group.
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"validation fraction must be between 0 and 1; got {val_fraction}")
    labels = np.asarray(labels)
    n = labels.shape[0]
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_label = np.array([np.bincount(labels[inverse == g]).argmax()
                            for g in range(uniq.size)])
    val_groups: list[int] = []
    for cls in np.unique(group_label):
        members = np.flatnonzero(group_label == cls)
        rng.shuffle(members)
        k = int(round(val_fraction * members.size))
        if members.size >= 2:
            k = min(max(k, 1), members.size - 1)
        else:
            k = 0
        val_groups += members[:k].tolist()
    is_val = np.isin(inverse, val_groups)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if val_idx.size == 0 or train_idx.size == 0:
        raise InputError(
            f"cannot split {uniq.size} group(s) into training and validation; provide "
            "more groups (e.g. wells) or images"
        )
    return train_idx, val_idx
