"""Model-free baselines: maps computed from the image alone, scored like the methods.

A fidelity score means little unless it beats what a map that never looks at the model
scores on the same images: bright structures are often the evidence, so the image
itself can do well on deletion and ROAD. Three such maps go beside the methods in every
table (``model_free`` in the outputs):

* ``image``: the image, summed over channels;
* ``image_excess``: the pixel's excess over its surroundings,
  ``max(x − G₅ * x, 0)`` summed over channels, mean one, square-rooted -- the image
  prior black-box PCIM's ``modulate="excess"`` multiplies its coarse field by;
* ``random``: uniform noise from a seeded generator (the floor).

A method *wins* a metric only where the paired bootstrap interval of its per-image
difference to every one of them lies on the better side of zero
(:func:`.comparison.verdict`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..attribution.pcim_blackbox import modulation
from ..runtime.errors import InputError

#: names of the model-free baselines, in table order
MODEL_FREE = ("image", "image_excess", "random")


def model_free_maps(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, H, W) map of the model-free baseline ``name`` for images (N, C, H, W)."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4:
        raise InputError(f"model-free maps need images (N, C, H, W); got shape {x.shape}")
    if name == "image":
        return x.sum(1)
    if name == "image_excess":
        t = torch.as_tensor(x)
        m = modulation(t, t, t, "excess", 0.5, 5.0)
        return m[:, 0].numpy().astype(np.float32)
    if name == "random":
        rng = np.random.default_rng(seed)
        return rng.random((x.shape[0], *x.shape[-2:])).astype(np.float32)
    raise InputError(f"unknown model-free baseline {name!r}; choose from {list(MODEL_FREE)}")
