"""Baselines: shapes, per-channel maps and the channel-level checks."""

from __future__ import annotations

import numpy as np
import pytest

from attribution_models import SpotModel, small_cnn, spot_images
from napari_attribution.core.attribution.baselines import channel_ablation, channel_permutation
from napari_attribution.core.attribution.explain import explain
from napari_attribution.core.evaluation.metrics import pointing_game, relevance_mass
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.runtime.progress import run_generator

FAST = {"integrated_gradients": {"n_steps": 8}, "rise": {"n_masks": 64, "chunk": 32},
        "extremal_mask": {"steps": 5}, "occlusion": {}, "saliency": {}, "gradcam": {}}


@pytest.mark.parametrize("method", sorted(FAST))
def test_baseline_shapes(method, recwarn):
    x = np.random.default_rng(0).normal(size=(2, 2, 16, 16)).astype(np.float32)
    res = run_generator(explain(small_cnn(), x, [0, 2], method=method, device="cpu",
                                **FAST[method]))
    # no library warning reaches the user (Captum's "did not already require gradients")
    assert not [w for w in recwarn if "captum" in str(w.filename)], method
    assert res.maps.shape == (2, 16, 16) and np.isfinite(res.maps).all()
    assert res.method == method and res.targets.tolist() == [0, 2]
    if method != "gradcam":
        pc = run_generator(explain(small_cnn(), x, 1, method=method, per_channel=True,
                                   device="cpu", **FAST[method]))
        assert pc.maps.shape == (2, 2, 16, 16)


def test_baselines_find_the_spot():
    x, masks = spot_images()
    for method in ("integrated_gradients", "occlusion", "extremal_mask"):
        params = {} if method == "extremal_mask" else FAST[method]
        res = run_generator(explain(SpotModel(), x, 1, method=method, device="cpu", **params))
        if method == "extremal_mask":
            # Its area prior (20 % of the image) caps the mass on a 4 % spot; it must
            # still put clearly more than the spot's share there.
            assert relevance_mass(res.maps, masks).mean() > 2 * masks.mean()
        else:
            assert pointing_game(res.maps, masks).mean() == 1.0, method
            assert relevance_mass(res.maps, masks).mean() > 0.3, method


def test_gradcam_refuses_per_channel_and_unknown_params():
    x = np.zeros((1, 2, 16, 16), np.float32)
    with pytest.raises(InputError, match="per-channel"):
        run_generator(explain(small_cnn(), x, method="gradcam", per_channel=True, device="cpu"))
    with pytest.raises(InputError, match="unknown saliency parameter"):
        run_generator(explain(small_cnn(), x, method="saliency", steps=3, device="cpu"))


def test_channel_ablation_and_permutation():
    x, _ = spot_images(n=16, seed=3)
    x[8:, 0] = np.random.default_rng(1).uniform(0, 0.3, x[8:, 0].shape)
    y = np.array([1] * 8 + [0] * 8)
    model = SpotModel()
    abl = channel_ablation(model, x, y)
    perm = channel_permutation(model, x, y, n_repeats=2)
    assert abl.shape == perm.shape == (2,)
    assert abl[0] > abl[1] and abl[1] == 0
    assert perm[0] >= perm[1] and perm[1] == 0
