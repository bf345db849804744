"""npe2 sample-data contributions: generated images with known ground truth."""

from __future__ import annotations

from .core.synthetic import make_cell_phenotype, make_multi_snr

_COLORMAPS = ["blue", "green", "magenta", "gray", "cyan", "yellow"]


def _layers(data, n_show: int, kind: str) -> list[tuple]:
    imgs = data.images[:n_show]
    out = []
    for c, name in enumerate(data.channel_names):
        out.append((
            imgs[:, c],
            {"name": name, "colormap": _COLORMAPS[c % len(_COLORMAPS)], "blending": "additive",
             "metadata": {"sample": kind, "labels": data.labels[:n_show].tolist(),
                          "class_names": data.class_names,
                          "ground_truth": {k: v for k, v in data.metadata.items()
                                           if k != "nuclei"}}},
            "image",
        ))
    return out


def cell_phenotype_sample() -> list[tuple]:
    """A stack of cell-like images; the Marker channel carries the phenotype."""
    data = make_cell_phenotype(n_images=16, size=64, seed=0)
    layers = _layers(data, 16, "cell_phenotype")
    layers.append((data.masks.astype("uint8"), {"name": "evidence mask (ground truth)",
                                               "opacity": 0.3}, "labels"))
    return layers


def multi_snr_sample() -> list[tuple]:
    """Shapes at six noise levels, channels shuffled; the least noisy channel matters most."""
    return _layers(make_multi_snr(n_images=16, size=32, seed=0), 16, "multi_snr")
