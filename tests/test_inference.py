"""The training scale shared by Predict, Explain and the curves (core/models/inference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from attribution_models import small_cnn, spot_images
from napari_attribution.core.attribution.explain import explain
from napari_attribution.core.evaluation.tiled_curves import tile_curves
from napari_attribution.core.models.inference import (
    ModelScale,
    shrink,
    tile_probabilities,
    tiling_for,
)
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.runtime.progress import run_generator


def test_model_scale_from_provenance():
    s = ModelScale.from_provenance({"data": {"image_size": [64, 64], "downsample": 2}})
    assert (s.downsample, s.input_size) == (2, 64)
    assert s.factor_for(1) == 2 and s.factor_for(2) == 1
    with pytest.raises(InputError, match="shrunk 3x"):
        s.factor_for(3)
    assert ModelScale.from_provenance({}) == ModelScale(1, None)
    assert ModelScale.from_provenance({"data": {"image_size": [32, 48]}}).input_size is None
    assert "shrunk 2x, 64 px tiles" == s.describe()
    assert s.source == "image_size"           # an older bundle: inferred
    rec = ModelScale.from_provenance({"data": {"input_size": 48, "image_size": [48, 48]}})
    assert (rec.input_size, rec.source) == (48, "recorded")
    assert ModelScale.from_provenance({"data": {"input_size": "48"}}).source is None
    assert ModelScale.from_provenance({"data": {"input_size": None,
                                                "image_size": [40, 40]}}).input_size == 40


def test_shrink_is_a_block_mean():
    x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    y = shrink(x, 2)
    assert y.shape == (2, 2, 3)
    assert y[0, 0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))
    assert np.array_equal(shrink(x, 1), x)


def test_tiling_for():
    assert tiling_for((32, 32), 32) == ([(0, 0)], 0, 0)
    assert tiling_for((32, 32), None) == ([(0, 0)], 0, 0)
    grid, side, overlap = tiling_for((64, 64), 32)
    assert side == 32 and overlap == 8 and len(grid) == 9
    with pytest.raises(InputError, match="at least"):
        tiling_for((20, 64), 32)


@pytest.mark.parametrize("input_size", [None, 16])
def test_tile_probabilities_match_explain(input_size):
    model = small_cnn(c=2, n_classes=3)
    x, _ = spot_images(n=3, size=40)
    probs, n_tiles = run_generator(tile_probabilities(model, x, input_size))
    assert n_tiles == (1 if input_size is None else len(tiling_for((40, 40), 16)[0]))
    res = run_generator(explain(model, x, method="saliency", input_size=input_size,
                                device="cpu"))
    np.testing.assert_allclose(probs, res.probabilities, atol=1e-5)
    curves = run_generator(tile_curves(model, x, res.maps, res.targets, input_size,
                                       n_steps=5))
    assert set(curves) == {"deletion", "insertion"}
    assert curves["deletion"].shape == (3, 6)
    # curves start where the probabilities are: the same input
    start = np.take_along_axis(probs, res.targets[:, None], 1)[:, 0]
    np.testing.assert_allclose(curves["deletion"][:, 0], start, atol=1e-4)
