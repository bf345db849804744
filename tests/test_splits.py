"""Train/validation splits: held-out units, stratification, mixed groups, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.study.splits import (
    choose_split_unit,
    grouped_split,
    spatial_groups,
)


def test_single_class_groups_split_per_class():
    labels = np.repeat([0, 1], 40)
    groups = np.repeat(np.arange(16), 5)
    tr, va = grouped_split(labels, groups, 0.25, seed=3)
    assert set(groups[tr]).isdisjoint(groups[va])
    assert np.bincount(labels[va]).tolist() == [10, 10]  # 2 of 8 groups per class


def test_mixed_groups_put_every_class_on_both_sides():
    """Per-object labels: each field holds both classes, the rare one in a few fields."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 30)
    labels = np.zeros(300, np.int64)
    labels[rng.choice(np.flatnonzero(groups < 3), 6, replace=False)] = 1  # rare, 3 fields
    for seed in range(20):
        tr, va = grouped_split(labels, groups, 0.2, seed=seed)
        assert set(groups[tr]).isdisjoint(groups[va])
        assert set(labels[va]) == {0, 1} and set(labels[tr]) == {0, 1}
        assert 0.1 <= len(va) / 300 <= 0.4


def test_a_class_in_one_group_cannot_be_validated():
    labels = np.array([0] * 10 + [1] * 10)
    groups = np.array(["A01"] * 10 + ["B01"] * 5 + ["B02"] * 5)
    with pytest.raises(InputError, match=r"leaves class\(es\) neg out of validation.*"
                                         r"A01.*--split-by"):
        grouped_split(labels, groups, 0.3, class_names=["neg", "pos"])
    with pytest.raises(InputError, match="at least two groups"):
        grouped_split(labels, np.zeros(20), 0.3)


def test_fixed_validation_groups():
    labels = np.array([0, 0, 1, 1, 0, 1])
    groups = np.array(["A01", "A01", "B01", "B01", "A02", "B02"])
    tr, va = grouped_split(labels, groups, val_groups=["A02", "B02"])
    assert va.tolist() == [4, 5] and tr.tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError, match="not in the data"):
        grouped_split(labels, groups, val_groups=["H12"])
    with pytest.raises(InputError, match="out of validation.*holding every class"):
        grouped_split(labels, groups, val_groups=["A01", "A02"])


def test_spatial_groups_drop_crops_that_cross_the_cut():
    well = np.array(["A01"] * 4)
    site = np.array(["1"] * 4)
    x = np.array([0, 40, 50, 100])  # field 200 wide, crops 60 px
    y = np.array([0, 0, 120, 150])
    shape = np.array([[200, 200]] * 4)
    g, keep = spatial_groups("half", well, site, y, x, 60, shape)
    assert keep.tolist() == [True, True, False, True]  # 50 + 60 > 100 > 50
    assert g[keep].tolist() == ["A01_s1_L", "A01_s1_L", "A01_s1_R"]
    g, keep = spatial_groups("quadrant", well, site, y, x, 60, shape)
    assert keep.tolist() == [True, True, False, True]
    assert g[keep].tolist() == ["A01_s1_TL", "A01_s1_TL", "A01_s1_BR"]
    g, keep = spatial_groups("field", well, site, y, x, 60, shape)
    assert keep.all() and set(g) == {"A01_s1"}
    with pytest.raises(InputError, match="split unit"):
        spatial_groups("plate", well, site, y, x, 60, shape)


def test_default_unit_depends_on_wells_per_class():
    labels = np.array([0, 0, 1, 1])
    assert choose_split_unit(labels, np.array(["A1", "A2", "B1", "B2"]), np.ones(4), "ab") \
        == ("well", [])
    unit, warns = choose_split_unit(labels, np.array(["A1", "A1", "B1", "B2"]),
                                    np.array([1, 2, 1, 1]), ["neg", "pos"])
    assert unit == "field" and "neg (1 well: A1)" in warns[0]
    unit, warns = choose_split_unit(labels, np.array(["A1", "A1", "B1", "B1"]), np.ones(4),
                                    ["neg", "pos"])
    assert unit == "half" and "not by well" in warns[0] and "pos (1 well" in warns[0]
