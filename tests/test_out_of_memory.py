"""A batch that runs out of memory is retried with fewer images, not lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attribution_models import small_cnn, spot_images
from napari_attribution.core.attribution.explain import explain
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.runtime.progress import run_generator


class Cramped(nn.Module):
    """``inner``, but any pass over more than ``limit`` images runs out of memory (as a
    small accelerator would); counts the images of every pass that failed."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.refused = inner, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            self.refused.append(int(x.shape[0]))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


@pytest.mark.parametrize(("method", "params", "limit"), [
    ("pcim", {}, 2), ("saliency", {}, 2),
    ("integrated_gradients", {"n_steps": 4}, 8),  # 4 steps x 2 images per pass
])
def test_out_of_memory_halves_the_batch_and_keeps_the_maps(method, params, limit):
    x, _ = spot_images(n=6, size=24, c=2)
    inner = small_cnn(c=2, n_classes=3).eval()
    ref = run_generator(explain(inner, x, 1, method=method, device="cpu", batch_size=2,
                                **params))
    cramped = Cramped(inner, limit=limit)
    res = run_generator(explain(cramped, x, 1, method=method, device="cpu", batch_size=8,
                                **params))
    assert cramped.refused and max(cramped.refused) > limit  # it ran out, and recovered
    np.testing.assert_allclose(res.maps, ref.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.probabilities, ref.probabilities, rtol=1e-6)
    assert res.params["batch_size"] == 2 and res.params["batch_size_asked"] == 8
    assert res.params["oom_retries"] >= 1


def test_out_of_memory_with_one_image_is_a_clear_error():
    x, _ = spot_images(n=2, size=24, c=2)
    cramped = Cramped(small_cnn(c=2, n_classes=3).eval(), limit=0)
    with pytest.raises(InputError, match="out of memory on cpu with a single image"):
        run_generator(explain(cramped, x, 1, method="saliency", device="cpu", batch_size=4))


def test_other_runtime_errors_are_not_retried():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    x, _ = spot_images(n=2, size=24, c=2)
    with pytest.raises(InputError, match="cannot run on images of shape"):
        run_generator(explain(Broken(), x, 1, method="saliency", device="cpu"))
