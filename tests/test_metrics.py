"""Attribution metrics on hand-made maps and a model whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution_models import SpotModel, small_cnn, spot_images
from napari_attribution.core.evaluation.metrics import (
    _auc,
    deletion_auc,
    insertion_auc,
    pointing_game,
    randomize_model,
    relevance_mass,
    sanity_spearman,
    spearman,
    topk_channel_accuracy,
)
from napari_attribution.core.runtime.errors import InputError


def test_auc_normalised_trapezoid():
    assert _auc(np.full((1, 11), 0.7))[0] == pytest.approx(0.7)
    assert _auc(np.linspace(0, 1, 21)[None])[0] == pytest.approx(0.5)


def test_deletion_and_insertion_rank_good_maps_above_bad():
    x, masks = spot_images(n=4)
    model = SpotModel()
    good = masks.astype(np.float32) + 0.01 * np.random.default_rng(0).random(masks.shape)
    bad = -good
    t = np.ones(4, int)
    d_good, d_bad = deletion_auc(model, x, good, t), deletion_auc(model, x, bad, t)
    i_good, i_bad = insertion_auc(model, x, good, t), insertion_auc(model, x, bad, t)
    assert (d_good < d_bad - 0.2).all() and (i_good > i_bad + 0.2).all()
    assert ((0 <= d_good) & (d_good <= 1)).all()
    # Per-channel maps move single pixel-channels: evidence only in channel 0.
    pc = np.stack([good, np.zeros_like(good)], 1)
    assert (deletion_auc(model, x, pc, t) < d_bad).all()
    with pytest.raises(InputError, match="do not fit"):
        deletion_auc(model, x, good[:, :5], t)


def test_pointing_game_and_relevance_mass():
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 3, 3] = 5.0
    maps[0, 7, 7] = 1.0
    maps[1, 6, 6] = 5.0
    maps[1, 2, 2] = -3.0
    np.testing.assert_array_equal(pointing_game(maps, masks), [1.0, 0.0])
    np.testing.assert_allclose(relevance_mass(maps, masks), [5 / 6, 0.0])
    assert pointing_game(maps, masks, tolerance=3)[1] == 1.0
    assert np.isnan(relevance_mass(np.zeros((1, 8, 8)), masks[:1]))[0]


def test_spearman_and_randomisation():
    a = np.arange(10.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    model = small_cnn()
    rnd = randomize_model(model, seed=1)
    w0, w1 = model[0].weight, rnd[0].weight
    assert w0.shape == w1.shape and not torch.allclose(w0, w1)
    maps = np.random.default_rng(0).random((3, 6, 6))
    np.testing.assert_allclose(sanity_spearman(maps, maps), 1.0, rtol=1e-6)


def test_topk_channel_accuracy():
    x, _ = spot_images(n=8)
    x[4:, 0] = 0.1  # no spot: class 0
    y = np.array([1] * 4 + [0] * 4)
    model = SpotModel()
    assert topk_channel_accuracy(model, x, y, [0, 1], 1) == 1.0
    assert topk_channel_accuracy(model, x, y, [1, 0], 1) == 0.5
    with pytest.raises(InputError, match="permutation"):
        topk_channel_accuracy(model, x, y, [0, 0], 1)
