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


class _TopHalf(torch.nn.Module):
    """Class 1's logit grows with the texture (mean neighbour difference) of the top half
    of channel 0: both deleting and imputing (ROAD) its pixels lower it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x[:, 0, : x.shape[2] // 2]
        s = 20 * ((top[:, :, 1:] - top[:, :, :-1]).abs().mean((1, 2)) - 0.2)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_constant_map_scores_like_a_random_order_not_raster_order():
    from napari_attribution.core.evaluation.metrics import FIDELITY_METRICS, tie_report

    model = _TopHalf()
    x = (np.random.default_rng(0).random((4, 1, 16, 16)) > 0.7).astype(np.float32)  # spots
    t = np.ones(4, int)
    const = np.zeros((4, 16, 16), np.float32)
    raster = np.broadcast_to(-np.arange(256, dtype=np.float32).reshape(16, 16),
                             (4, 16, 16)).copy()          # top rows first
    rng = np.random.default_rng(5)
    for name in ("deletion", "road_morf"):
        metric = FIDELITY_METRICS[name]
        c = metric.scores(model, x, const, t, seed=1).mean()
        r = metric.scores(model, x, raster, t, seed=1).mean()
        rand = np.mean([metric.scores(model, x, rng.random((4, 16, 16)), t, seed=1).mean()
                        for _ in range(4)])
        assert abs(c - rand) < 0.05, name
        assert abs(c - r) > 0.1, name
    # the tie-breaking is seeded: the same seed, the same score; another, another order
    d = FIDELITY_METRICS["deletion"]
    np.testing.assert_array_equal(d.scores(model, x, const, t, seed=3),
                                  d.scores(model, x, const, t, seed=3))
    assert tie_report(const, 3) == {"rule": "random", "seed": 3, "largest_tie_mean": 1.0,
                                    "largest_tie_max": 1.0}
    assert tie_report(raster, 0)["largest_tie_max"] == pytest.approx(1 / 256)


def test_ranks_keep_distinct_values_exactly_and_shuffle_only_ties():
    from napari_attribution.core.evaluation.metrics import _rank_positions

    # values 1e-9 apart are distinct: their order must not be jittered away
    m = np.array([[1.0, 1.0 + 1e-9, 0.5, 0.5, 0.5, 2.0]])
    for seed in range(20):
        pos = _rank_positions(m, seed=seed)[0]
        assert pos[5] == 0 and pos[1] == 1 and pos[0] == 2
        assert sorted(pos[2:5]) == [3, 4, 5]
    orders = {tuple(_rank_positions(m, seed=s)[0][2:5]) for s in range(20)}
    assert len(orders) > 1                                  # ties: a seeded random order


def test_spearman_matches_the_numpy_version_with_ties():
    from napari_attribution.core.evaluation.metrics import _spearman_numpy

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)            # many ties
    b = a + rng.integers(0, 3, 200)
    assert spearman(a, b) == pytest.approx(_spearman_numpy(a, b), abs=1e-12)
    assert spearman(np.ones(5), np.arange(5.0)) == 0.0    # constant: 0, not NaN


def test_randomize_model_reinitialises_dcmix_channel_mixing():
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig

    model = DCMIXClassifier(ModelConfig(n_channels=4, n_classes=2)).eval()
    with torch.no_grad():
        model.mixing.logits.copy_(torch.tensor([[6.0, 0.0, 0.0, 0.0]]))   # learned: ch 0
    assert float(model.mixing.weights().detach()[0, 0]) > 0.98
    rnd = randomize_model(model, seed=2)
    assert float(rnd.mixing.weights().detach()[0, 0]) < 0.9
    assert not torch.allclose(rnd.mixing.logits, model.mixing.logits)
    # every parameter changed, and the seed decides how
    for (name, p), q in zip(model.named_parameters(), rnd.parameters(), strict=True):
        if p.ndim > 1 or name.endswith("logits"):     # (normalisation layers: 1 and 0)
            assert not torch.allclose(p, q), name
    again = randomize_model(model, seed=2)
    torch.testing.assert_close(again.mixing.logits, rnd.mixing.logits)
    assert float(model.mixing.weights().detach()[0, 0]) > 0.98      # the original: untouched
