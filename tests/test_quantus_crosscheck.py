"""Cross-check of two fidelity metrics against Quantus (an independent implementation).

Quantus is in the ``testing`` extra; the tests skip with the reason when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution_models import small_cnn
from napari_attribution.core.evaluation.metrics import perturbation_curves
from napari_attribution.core.evaluation.road import noisy_linear_impute

quantus = pytest.importorskip("quantus", reason="Quantus not installed (pip install quantus)")


def test_road_imputation_matches_quantus():
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    img = rng.random((3, 14, 17)).astype(np.float64)
    flat = rng.choice(14 * 17, size=90, replace=False)
    removed = np.zeros(14 * 17, bool)
    removed[flat] = True
    ours = noisy_linear_impute(img, removed.reshape(14, 17), noise=0.0)
    theirs = noisy_linear_imputation(img.copy(), np.sort(flat), noise=0.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_deletion_curve_matches_quantus_pixel_flipping():
    torch.manual_seed(0)
    model = torch.nn.Sequential(small_cnn(c=2, n_classes=3, seed=1), torch.nn.Identity()).eval()
    rng = np.random.default_rng(1)
    x = rng.random((4, 2, 8, 8)).astype(np.float32)
    maps = rng.random((4, 2, 8, 8)).astype(np.float32)       # no ties
    y = np.array([0, 1, 2, 1])
    ours = perturbation_curves(model, x, maps, y, "deletion", n_steps=16, substrate=0.0)
    metric = quantus.PixelFlipping(features_in_step=8, perturb_baseline=0.0, normalise=False,
                                   abs=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=maps,
                               device="cpu", softmax=True), np.float32)
    np.testing.assert_allclose(ours[:, 1:], theirs, atol=1e-5)
