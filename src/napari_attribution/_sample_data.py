"""npe2 sample-data contributions: generated images with known ground truth.

The cell sample is sized so that **Train** with its default settings learns it on a
laptop CPU (about a minute on 2 cores) and puts the weight on *Marker*, and PCIM maps
then sit on the nuclei of *nuclear* cells: the first thing a new user sees should work.
"""

from __future__ import annotations

from .core.data.synthetic import make_cell_phenotype, make_multi_snr
from .layer_style import stain_colormaps

CELL_IMAGES = 400  # enough images for the default 15 epochs to find the Marker channel
CELL_SIZE = 32  # px: small crops keep an epoch to a few seconds on a CPU


def _layers(data, kind: str) -> list[tuple]:
    out = []
    colours = stain_colormaps(list(data.channel_names))
    for c, name in enumerate(data.channel_names):
        out.append((
            data.images[:, c],
            {"name": name, "colormap": colours[c], "blending": "additive",
             "metadata": {"sample": kind, "source": f"sample:{kind}", "channel": name,
                          "labels": data.labels.tolist(), "class_names": data.class_names,
                          "ground_truth": {k: v for k, v in data.metadata.items()
                                           if k not in ("nuclei", "per_crop_keys")}}},
            "image",
        ))
    return out


def cell_phenotype_sample() -> list[tuple]:
    """A stack of labelled cell images; the Marker channel carries the phenotype
    (cytoplasmic vs nuclear) and the ground-truth evidence mask comes as a Labels layer."""
    data = make_cell_phenotype(n_images=CELL_IMAGES, size=CELL_SIZE, seed=0)
    layers = _layers(data, "cell_phenotype")
    layers.append((data.masks.astype("uint8"), {"name": "evidence mask (ground truth)",
                                               "opacity": 0.3, "visible": False}, "labels"))
    return layers


def multi_snr_sample() -> list[tuple]:
    """Shapes at six noise levels, channels shuffled; the least noisy channel matters most."""
    return _layers(make_multi_snr(n_images=64, size=32, seed=0), "multi_snr")
