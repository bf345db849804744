"""Known-answer traps: synthetic plates where the easy path gives a wrong answer.

Each generator is deterministic by ``seed`` and returns an :class:`ImageSet` with
groups and per-crop ``well``, ``site`` and ``plate`` metadata, like crops of a plate:

* :func:`make_batch_effect_trap`: one well per class; the informative channel is a
  marker that moves into the nucleus, and the uninformative DNA stain is 2.2x brighter
  in one well (a stain batch). Groups are well x field, so a split is possible but
  never holds out a well.
* :func:`make_rare_class_trap`: one crop per nucleus, labelled per object by a marker
  (mitosis-like: PH3 bright in a condensed nucleus) in 5 % of the cells.
* :func:`make_low_snr_trap`: the informative marker at low signal-to-noise, several
  wells per class.

``metadata["informative_channel"]`` holds the answer; ``metadata["kind"]`` starts with
``trap``.
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import ImageSet
from ..data.synthetic import make_cell_phenotype


def _plate_metadata(labels: np.ndarray, wells_per_class: int, sites: int,
                    rng: np.random.Generator, plate: str = "P1") -> dict:
    """Per-crop well and site keys: each class gets its own ``wells_per_class`` wells."""
    n = labels.size
    well = np.empty(n, dtype=object)
    site = np.empty(n, dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        w = rng.integers(0, wells_per_class, idx.size)
        well[idx] = [f"{chr(65 + int(c))}{k + 1:02d}" for k in w]
        site[idx] = [f"s{k + 1}" for k in rng.integers(0, sites, idx.size)]
    return {"well": well.astype(str), "site": site.astype(str),
            "plate": np.full(n, plate), "per_crop_keys": ["well", "site", "plate"]}


def make_batch_effect_trap(n_images: int = 320, size: int = 32, seed: int = 0,
                           brightness: float = 2.2, sites: int = 4) -> ImageSet:
    """Channels DNA and Marker; classes ``cytoplasmic`` (well A01) and ``nuclear``
    (well B01). Marker carries the phenotype; DNA is ``brightness`` x brighter in B01."""
    base = make_cell_phenotype(n_images=n_images, size=size, cells_per_image=2, seed=seed)
    data = base.select_channels(["DNA", "Marker"])
    rng = np.random.default_rng(seed + 1000)
    data.images = data.images.copy()
    data.images[data.labels == 1, 0] *= brightness
    meta = _plate_metadata(data.labels, 1, sites, rng)
    data.metadata = {**meta, "kind": "trap_batch_effect", "informative_channel": "Marker",
                     "confound": "DNA", "seed": seed}
    data.masks = base.masks
    data.groups = np.char.add(np.char.add(meta["well"], "/"), meta["site"])
    return data


def make_rare_class_trap(n_images: int = 600, size: int = 32, seed: int = 0,
                         rare_fraction: float = 0.05, sites: int = 8) -> ImageSet:
    """Channels DNA, PH3, Body; one nucleus-centred crop per cell. Class ``mitotic``
    (``rare_fraction`` of the cells): PH3 bright in a smaller, brighter nucleus; cell
    body independent of the class. Groups are fields."""
    rng = np.random.default_rng(seed)
    n_rare = max(2, int(round(rare_fraction * n_images)))
    labels = np.zeros(n_images, np.int64)
    labels[rng.choice(n_images, n_rare, replace=False)] = 1
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    images = np.zeros((n_images, 3, size, size), np.float32)
    nuclei = np.zeros((n_images, size, size), bool)
    for i in range(n_images):
        cy, cx = (size - 1) / 2 + rng.normal(0, 1.0, 2)
        mitotic = labels[i] == 1
        r0 = rng.uniform(0.12, 0.16) * size
        rn = r0 * (0.75 if mitotic else 1.0)
        ang = np.arctan2(yy - cy, xx - cx)
        d = np.hypot(yy - cy, xx - cx) / (1 + 0.1 * np.sin(2 * ang + rng.uniform(0, 6.3)))
        nuc = d < rn
        nuclei[i] = nuc
        dna = rng.uniform(0.6, 1.2) * (1.3 if mitotic else 1.0)
        images[i, 0][nuc] = dna
        # PH3: faint speckles in interphase, bright and filling the nucleus in mitosis
        images[i, 1][nuc] = (rng.uniform(0.8, 1.2) if mitotic else 0.0)
        images[i, 1] += 0.1 * (rng.random((size, size)) < 0.03)
        body = d < r0 * rng.uniform(2.0, 2.6)
        images[i, 2][body] = rng.uniform(0.3, 0.9)
        for _ in range(rng.integers(0, 3)):  # neighbours' bodies at the crop edge
            oy, ox = rng.uniform(0, size, 2)
            images[i, 2][np.hypot(yy - oy, xx - ox) < rng.uniform(3, 8)] += 0.4
    images += 0.08 * rng.standard_normal(images.shape, dtype=np.float32)
    site = np.array([f"s{k + 1}" for k in rng.integers(0, sites, n_images)])
    return ImageSet(
        images=images, labels=labels, channel_names=["DNA", "PH3", "Body"],
        class_names=["interphase", "mitotic"], groups=np.char.add("A01/", site),
        masks=nuclei & (labels[:, None, None] == 1),
        metadata={"well": np.full(n_images, "A01"), "site": site,
                  "plate": np.full(n_images, "P1"), "nuclei": nuclei,
                  "per_crop_keys": ["well", "site", "plate", "nuclei"],
                  "kind": "trap_rare_class", "informative_channel": "PH3", "seed": seed})


def make_low_snr_trap(n_images: int = 320, size: int = 32, seed: int = 0,
                      noise: float = 0.6, wells_per_class: int = 3) -> ImageSet:
    """The cell phenotype with extra Gaussian noise of std ``noise`` in the Marker
    channel only (its signal steps are ~0.5); wells_per_class wells per class, groups =
    wells."""
    data = make_cell_phenotype(n_images=n_images, size=size, cells_per_image=2, seed=seed)
    rng = np.random.default_rng(seed + 2000)
    data.images = data.images.copy()
    data.images[:, 1] += noise * rng.standard_normal(data.images[:, 1].shape,
                                                      dtype=np.float32)
    meta = _plate_metadata(data.labels, wells_per_class, 2, rng)
    data.metadata = {**meta, "nuclei": data.metadata["nuclei"],
                     "per_crop_keys": meta["per_crop_keys"] + ["nuclei"],
                     "kind": "trap_low_snr", "informative_channel": "Marker",
                     "noise": noise, "seed": seed}
    data.groups = meta["well"].copy()
    return data


TRAPS = {"batch_effect": make_batch_effect_trap, "rare_class": make_rare_class_trap,
         "low_snr": make_low_snr_trap}
