"""Train/validation splits by held-out unit (well, field, half or quadrant of a field).

Images of one group (a well, a field, a half-field ...) are never on both sides, so
nothing leaks. Splits stratify by class: every class is in training and validation, or
the split is refused with advice. Groups may hold several classes (per-object labels in
one field). Spatial units (``half``, ``quadrant``) drop crops that cross the dividing
line, so that no pixel is both trained on and validated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..runtime.errors import InputError
from .findings import register_code

SPLIT_UNITS = ("well", "field", "half", "quadrant")
SPLIT_NOT_BY_WELL = register_code(
    "split-not-by-well", "caution",
    "validation holds out parts of the training wells, not whole wells")
_ADVICE = ("hold out a smaller unit (split_by 'field', 'half' or 'quadrant'; on the command "
           "line --split-by) or add wells")


def grouped_split(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_groups: Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into training and validation by whole groups.

    Without ``groups`` every image is its own group. ``val_groups`` fixes the validation
    groups (e.g. chosen wells). Otherwise groups holding a single class are assigned per
    class (about ``val_fraction`` of each class's groups); groups holding several classes
    are picked so that every class reaches validation. Raises :class:`InputError` when a
    class would be missing from training or validation.
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"validation fraction must be between 0 and 1; got {val_fraction}")
    labels = np.asarray(labels)
    n = labels.shape[0]
    groups = np.arange(n) if groups is None else np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    n_cls = int(labels.max()) + 1 if n else 0
    counts = np.zeros((uniq.size, n_cls), np.int64)
    np.add.at(counts, (inverse, labels), 1)
    if uniq.size < 2:
        raise InputError(f"cannot split {uniq.size} group(s) into training and validation (it "
                         "takes at least two groups); "
                         + _ADVICE)
    if val_groups is not None:
        wanted = {str(g) for g in val_groups}
        names = np.array([str(g) for g in uniq])
        unknown = sorted(wanted - set(names.tolist()))
        if unknown:
            raise InputError(f"validation group(s) {unknown} not in the data; groups are "
                             f"{names.tolist()[:20]}")
        is_val_group = np.isin(names, sorted(wanted))
    elif (np.count_nonzero(counts, axis=1) <= 1).all():
        is_val_group = _per_class(counts, val_fraction, np.random.default_rng(seed))
    else:
        is_val_group = _greedy_mixed(counts, val_fraction, np.random.default_rng(seed))
    _check_coverage(counts, is_val_group, uniq, class_names,
                    _ADVICE if val_groups is None else "choose validation groups (wells) "
                    "holding every class and leave each class some for training")
    is_val = is_val_group[inverse]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _per_class(counts: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Single-class groups: about ``frac`` of each class's groups, at least one of two."""
    group_label = counts.argmax(1)
    is_val = np.zeros(counts.shape[0], bool)
    for cls in np.unique(group_label):
        members = np.flatnonzero(group_label == cls)
        rng.shuffle(members)
        k = int(round(frac * members.size))
        k = min(max(k, 1), members.size - 1) if members.size >= 2 else 0
        is_val[members[:k]] = True
    return is_val


def _greedy_mixed(counts: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Groups holding several classes: first one group per class (rarest class first)
    that leaves every class in training, then more until each class has ``frac``."""
    n_groups = counts.shape[0]
    order = rng.permutation(n_groups)
    is_val = np.zeros(n_groups, bool)
    total = counts.sum(0)
    target = frac * total

    def keeps_training(g: int) -> bool:
        train = total - counts[is_val].sum(0) - counts[g]
        return bool(np.all(train[total > 0] > 0))

    for cls in np.argsort(total):
        if total[cls] == 0 or counts[is_val, cls].sum() > 0:
            continue
        for g in order:
            if not is_val[g] and counts[g, cls] > 0 and keeps_training(g):
                is_val[g] = True
                break
    for g in order:
        if is_val[g]:
            continue
        val = counts[is_val].sum(0)
        if val.sum() >= frac * total.sum():
            break
        main = int(counts[g].argmax())
        if val[main] + counts[g, main] <= 1.5 * target[main] and keeps_training(g):
            is_val[g] = True
    return is_val


def _check_coverage(counts: np.ndarray, is_val: np.ndarray, uniq: np.ndarray,
                    class_names: Sequence[str] | None, advice: str) -> None:
    names = list(class_names) if class_names else [str(i) for i in range(counts.shape[1])]
    for side, mask in (("validation", is_val), ("training", ~is_val)):
        present = counts[mask].sum(0)
        missing = [c for c in range(counts.shape[1]) if counts[:, c].sum() and not present[c]]
        if missing:
            where = {names[c]: [str(g) for g in uniq[counts[:, c] > 0]][:5] for c in missing}
            raise InputError(
                f"cannot split {uniq.size} group(s) so that every class is in training and "
                f"validation: the split leaves class(es) "
                f"{', '.join(names[c] for c in missing)} out of {side} (found only in "
                f"group(s) {where}); " + advice)


def spatial_groups(unit: str, well: np.ndarray, site: np.ndarray, y: np.ndarray,
                   x: np.ndarray, crop: int, field_shape: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(groups, keep): the held-out unit of each crop and which crops to keep.

    ``y``, ``x`` are crop corners and ``crop`` the crop side, ``field_shape`` (n, 2) the
    field sizes, all in the same (full-resolution) pixels. ``half`` cuts each field into
    left/right, ``quadrant`` into four; crops crossing a cut are dropped (``keep``).
    """
    if unit not in SPLIT_UNITS:
        raise InputError(f"unknown split unit {unit!r}; choose one of {SPLIT_UNITS}")
    well = np.asarray(well).astype(str)
    n = well.shape[0]
    keep = np.ones(n, bool)
    if unit == "well":
        return well, keep
    fields = np.char.add(np.char.add(well, "_s"), np.asarray(site).astype(str))
    if unit == "field":
        return fields, keep
    shape = np.asarray(field_shape).reshape(n, 2)
    mid_x, mid_y = shape[:, 1] // 2, shape[:, 0] // 2
    x, y = np.asarray(x), np.asarray(y)
    left = x + crop <= mid_x
    right = x >= mid_x
    keep &= left | right
    part = np.where(left, "L", "R")
    if unit == "quadrant":
        top, bottom = y + crop <= mid_y, y >= mid_y
        keep &= top | bottom
        part = np.char.add(np.where(top, "T", "B"), part)
    return np.char.add(np.char.add(fields, "_"), part), keep


def choose_split_unit(labels: np.ndarray, well: np.ndarray, site: np.ndarray,
                      class_names: Sequence[str]) -> tuple[str, list[str]]:
    """The default held-out unit and the warnings it comes with.

    ``well`` when every class has at least two wells; otherwise ``field`` when every
    class has at least two fields of view, else ``half`` — each with a warning that
    validation then measures generalisation within wells, not across them.
    """
    labels, well = np.asarray(labels), np.asarray(well).astype(str)
    fields = np.char.add(np.char.add(well, "_s"), np.asarray(site).astype(str))
    present = np.unique(labels)
    n_wells = {c: np.unique(well[labels == c]).size for c in present}
    if all(v >= 2 for v in n_wells.values()):
        return "well", []
    n_fields = {c: np.unique(fields[labels == c]).size for c in present}
    unit = "field" if all(v >= 2 for v in n_fields.values()) else "half"
    few = ", ".join(f"{class_names[c]} ({n_wells[c]} well"
                    f"{'s' if n_wells[c] != 1 else ''}: "
                    f"{', '.join(np.unique(well[labels == c])[:3])})"
                    for c in present if n_wells[c] < 2)
    return unit, [
        f"split by {unit}, not by well: class(es) {few} lack a second well to hold out. "
        "Validation then holds out other parts of the same wells, so held-out accuracy "
        "says nothing about generalising to new wells, and a difference between wells "
        "(stain, density, focus) cannot be told from the biology. Put each class in "
        "several wells (and plates) to measure that."]


def group_folds(labels: np.ndarray, groups: np.ndarray | None, k: int, seed: int = 0
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` folds over whole groups, as (train, validation) index pairs: every image is
    held out exactly once. Groups are dealt to folds by their main class (rarest class
    first, largest groups first) so that each fold gets a share of every class.

    Raises :class:`InputError` when fewer than two groups exist or a fold would train
    on a single class."""
    labels = np.asarray(labels)
    groups = np.arange(labels.size) if groups is None else np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    if uniq.size < 2 or k < 2:
        raise InputError(f"cross-validation needs at least two groups and two folds; got "
                         f"{uniq.size} group(s), {k} fold(s)")
    k = min(k, uniq.size)
    n_cls = int(labels.max()) + 1
    counts = np.zeros((uniq.size, n_cls), np.int64)
    np.add.at(counts, (inverse, labels), 1)
    rng = np.random.default_rng(seed)
    fold_of = np.full(uniq.size, -1)
    load = np.zeros((k, n_cls))
    # rarest class first: its groups are spread before the common ones fill the folds
    for cls in np.argsort(counts.sum(0)):
        members = [g for g in rng.permutation(uniq.size)
                   if fold_of[g] < 0 and counts[g, cls] > 0]
        for g in sorted(members, key=lambda g: -counts[g, cls]):
            f = int(np.lexsort((load.sum(1), load[:, cls]))[0])
            fold_of[g] = f
            load[f] += counts[g]
    folds = []
    for f in range(k):
        is_val = (fold_of == f)[inverse]
        train = np.flatnonzero(~is_val)
        if np.unique(labels[train]).size < 2:
            raise InputError(f"fold {f + 1} of {k} would train on a single class; use fewer "
                             "folds or add groups (wells, fields) of every class")
        folds.append((train, np.flatnonzero(is_val)))
    return [f for f in folds if f[1].size]


def split_dataset(data: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The split training uses for an :class:`~napari_attribution.core.data.dataset.ImageSet`:
    by ``data.groups``, with ``data.metadata["val_groups"]`` as fixed validation groups
    when given."""
    return grouped_split(data.labels, data.groups, val_fraction, seed,
                         val_groups=data.metadata.get("val_groups"),
                         class_names=data.class_names)
