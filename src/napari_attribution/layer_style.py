"""How attribution maps look as napari layers (pure numpy: no napari or Qt import)."""

from __future__ import annotations

import numpy as np

MAX_SAMPLES = 1_000_000


def heatmap_style(data: np.ndarray) -> dict:
    """Image-layer keywords for an attribution map over its image.

    Inferno, additive, 70 % opacity. A signed map (PCIM's log-weights, Integrated
    Gradients) is shown from zero up: the evidence *for* the target glows, pixels left
    alone or counting against it stay black and so add nothing over the image (a range
    from the 1st percentile would tint every cell). The top is the 99.5th percentile of
    the evidence, so a few extreme pixels do not darken the rest. At most a million
    values are looked at.
    """
    arr = np.asarray(data)
    flat = arr.reshape(-1)
    if flat.size > MAX_SAMPLES:
        flat = flat[:: flat.size // MAX_SAMPLES + 1]
    flat = flat[np.isfinite(flat)].astype(np.float64)
    lo, hi = 0.0, 1.0
    if flat.size:
        lo = 0.0 if flat.min() < 0 else float(np.percentile(flat, 1.0))
        above = flat[flat > lo]
        hi = float(np.percentile(above, 99.5)) if above.size else lo
    if hi <= lo:
        hi = lo + 1e-6
    return {"colormap": "inferno", "blending": "additive", "opacity": 0.7,
            "contrast_limits": (lo, hi)}
