"""Synthetic image sets with known answers (also the plugin's sample data).

* :func:`make_multi_snr`: every channel carries the same class pattern at a known
  noise level (plus one pure-noise channel), channel order shuffled. The true channel
  ranking is by increasing noise.
* :func:`make_cell_phenotype`: cell-like images (nuclei, cytoplasm) where a marker
  sits in the cytoplasm (class ``cytoplasmic``) or moves into the nucleus (class
  ``nuclear``) in one channel only; the other channels are class-independent.
"""

from __future__ import annotations

import numpy as np

from .dataset import ImageSet

DEFAULT_SIGMAS: tuple[float | None, ...] = (0.5, 0.8, 1.2, 1.6, 2.5, None)


def _shape_patterns(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clean images in [0, 1] of four shape classes: disc, ring, bar, cross."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    labels = rng.integers(0, 4, n)
    out = np.zeros((n, size, size), np.float32)
    for i, lab in enumerate(labels):
        r = rng.uniform(0.22, 0.32) * size
        cy, cx = rng.uniform(0.38, 0.62, 2) * size
        d = np.hypot(yy - cy, xx - cx)
        if lab == 0:
            img = d < r
        elif lab == 1:
            img = (d < r) & (d > 0.55 * r)
        elif lab == 2:
            img = (np.abs(yy - cy) < 0.25 * r) & (np.abs(xx - cx) < 1.2 * r)
        else:
            img = ((np.abs(yy - cy) < 0.2 * r) | (np.abs(xx - cx) < 0.2 * r)) & (d < 1.1 * r)
        out[i] = img
    return out, labels


def make_multi_snr(
    n_images: int = 600,
    size: int = 32,
    sigmas: tuple[float | None, ...] = DEFAULT_SIGMAS,
    seed: int = 0,
    clean: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> ImageSet:
    """Channels = clean class signal + Gaussian noise of std ``sigma``; ``None`` = noise only.

    Pass ``clean`` (N, H, W in [0, 1]) and ``labels`` to use real images (e.g. MNIST
    digits) instead of the built-in shapes. The channel order is shuffled with ``seed``;
    ``metadata['sigma']`` and ``metadata['true_ranking']`` hold the answer.
    """
    rng = np.random.default_rng(seed)
    if clean is None:
        clean, labels = _shape_patterns(n_images, size, rng)
        class_names = class_names or ["disc", "ring", "bar", "cross"]
    clean = np.asarray(clean, np.float32)
    perm = rng.permutation(len(sigmas))
    sig = [sigmas[p] for p in perm]
    n, h, w = clean.shape
    images = np.empty((n, len(sig), h, w), np.float32)
    for c, s in enumerate(sig):
        noise = rng.standard_normal((n, h, w), dtype=np.float32)
        images[:, c] = noise if s is None else clean + s * noise
    names = [f"channel_{chr(65 + c)}" for c in range(len(sig))]
    noise_level = np.array([np.inf if s is None else s for s in sig])
    ranking = [names[i] for i in np.argsort(noise_level, kind="stable")]
    return ImageSet(
        images=images, labels=np.asarray(labels), channel_names=names,
        class_names=class_names or [str(i) for i in range(int(np.max(labels)) + 1)],
        metadata={"kind": "multi_snr", "sigma": [None if s is None else float(s) for s in sig],
                  "true_ranking": ranking, "seed": seed},
    )


CELL_CHANNELS = ["DNA", "Marker", "Membrane", "Distractor"]


def make_cell_phenotype(n_images: int = 240, size: int = 64, cells_per_image: int = 3,
                        seed: int = 0, noise: float = 0.08) -> ImageSet:
    """Cell-like images; only the ``Marker`` channel separates the two classes.

    Class 0 (``cytoplasmic``): marker bright in the cytoplasm; class 1 (``nuclear``):
    marker concentrated in the nucleus. ``masks`` holds, per image, where the evidence
    is (the marker's bright compartment); ``metadata['nuclei']`` the nuclei masks.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    labels = np.arange(n_images) % 2
    rng.shuffle(labels)
    images = np.zeros((n_images, 4, size, size), np.float32)
    nuclei = np.zeros((n_images, size, size), bool)
    cyto = np.zeros((n_images, size, size), bool)
    for i in range(n_images):
        for _ in range(cells_per_image):
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            rn = rng.uniform(0.07, 0.10) * size
            rc = rn * rng.uniform(1.8, 2.3)
            ang = np.arctan2(yy - cy, xx - cx)
            wobble = 1 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6.3))
            d = np.hypot(yy - cy, xx - cx) / wobble
            nuc = d < rn
            cell = (d < rc) & ~nuc & ~nuclei[i]
            nuclei[i] |= nuc
            cyto[i] |= cell
            bright = rng.uniform(0.6, 1.4)
            images[i, 0][nuc] += bright * rng.uniform(0.7, 1.0)
            hi, lo = 1.0 * bright, 0.25 * bright
            images[i, 1][nuc] += hi if labels[i] == 1 else lo
            images[i, 1][cell] += lo if labels[i] == 1 else hi * 0.7
            ring = (d > rc - 1.5) & (d < rc + 0.5)
            images[i, 2][ring] += rng.uniform(0.5, 1.0)
            images[i, 2][cell] += 0.15
        cyto[i] &= ~nuclei[i]
        for _ in range(rng.integers(2, 6)):
            cy, cx = rng.uniform(0, size, 2)
            images[i, 3] += rng.uniform(0.3, 1.0) * np.exp(
                -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2, 6) ** 2))
    images += noise * rng.standard_normal(images.shape, dtype=np.float32)
    masks = np.where(labels[:, None, None] == 1, nuclei, cyto)
    return ImageSet(
        images=images, labels=labels, channel_names=list(CELL_CHANNELS),
        class_names=["cytoplasmic", "nuclear"], masks=masks,
        metadata={"kind": "cell_phenotype", "informative_channel": "Marker",
                  "nuclei": nuclei, "seed": seed, "per_crop_keys": ["nuclei"]},
    )
