"""Synthetic plates with traps: whole fields of view, wells, per-object truth.

The known-answer sets of :mod:`.synthetic` are crops with balanced classes and no plate
structure: a study-design mistake cannot show on them. These plates reproduce the traps
that mislead on real screens (see docs/study_design.md), at field level, so that the
whole documented path — plate folder, plate map or object table, segmentation, crops,
hold-out split, training, checks — is exercised:

* ``confounded_pair``: one well per class (e.g. TNF-stimulated vs unstimulated, NF-kB
  moves into the nucleus), and the DNA stain 2.2x brighter in one well: a batch effect
  in an uninformative channel that separates the wells on its own;
* ``rare_mitotic``: one well, channels DNA / PH3 / cell body; 5 % of the cells are
  mitotic (PH3 bright, condensed DNA), labelled per object;
* ``low_snr``: four wells per class, the informative marker at low signal-to-noise;
* ``dna_damage``: two wells per class, the DNA stain named ``Hoechst`` (no channel is
  called DNA) and ``H2AX`` foci (5-8 per nucleus when damaged, 0-1 in controls): a
  plate the old "DNA, else the last channel" rule segmented on the foci.

:func:`make_trap_plate` returns the fields and the truth; ``io.synthetic_plates`` writes
them as a plate folder (one TIFF per field and channel), plate map and object table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..runtime.errors import InputError

TRAPS = ("confounded_pair", "rare_mitotic", "low_snr", "dna_damage")


@dataclass
class TrapPlate:
    """Fields ``{(well, site): (C, H, W) float32}``, the truth and how to read them."""

    kind: str
    channel_names: list[str]
    class_names: list[str]
    fields: dict[tuple[str, int], np.ndarray]
    objects: list[dict]                       # well, site, x, y, label (class name)
    well_classes: dict[str, str] = field(default_factory=dict)   # empty: per-object labels
    informative_channel: str = ""
    confound_channel: str | None = None
    seed: int = 0


def _render_cells(rng: np.random.Generator, size: int, n_cells: int, radius: float
                  ) -> tuple[list[tuple[float, float, float]], np.ndarray, np.ndarray]:
    """Cells with non-overlapping nuclei: (centre y, centre x, nucleus radius) per cell,
    and nuclei and cytoplasm label images (label k = cell k, 1-based)."""
    nuclei = np.zeros((size, size), np.int32)
    cyto = np.zeros((size, size), np.int32)
    cells: list[tuple[float, float, float]] = []
    placed = np.zeros((n_cells, 3))
    tries = 0
    while len(cells) < n_cells and tries < 50 * n_cells:
        tries += 1
        rn = radius * rng.uniform(0.8, 1.2)
        cy, cx = rng.uniform(2.5 * rn, size - 2.5 * rn, 2)
        p = placed[:len(cells)]
        if (np.hypot(p[:, 0] - cy, p[:, 1] - cx) < 1.4 * (rn + p[:, 2])).any():
            continue
        placed[len(cells)] = (cy, cx, rn)
        # Work in the cell's bounding box only (fields hold hundreds of cells).
        r_out = int(np.ceil(2.3 * rn))
        y0, y1 = max(0, int(cy) - r_out), min(size, int(cy) + r_out + 1)
        x0, x1 = max(0, int(cx) - r_out), min(size, int(cx) + r_out + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ang = np.arctan2(yy - cy, xx - cx)
        d = np.hypot(yy - cy, xx - cx) / (1 + 0.1 * np.sin(3 * ang + rng.uniform(0, 6.3)))
        k = len(cells) + 1
        nb, cb = nuclei[y0:y1, x0:x1], cyto[y0:y1, x0:x1]
        nb[(d < rn) & (nb == 0)] = k
        cb[(d >= rn) & (d < 2.0 * rn) & (cb == 0) & (nb == 0)] = k
        cells.append((float(cy), float(cx), float(rn)))
    cyto[nuclei > 0] = 0
    return cells, nuclei, cyto


def _pixels_by_label(labels: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index arrays (ys, xs) of every label 1..n (entry 0 unused), in one pass."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(n + 2))
    w = labels.shape[1]
    out = []
    for k in range(n + 1):
        idx = order[bounds[k]:bounds[k + 1]]
        out.append((idx // w, idx % w))
    return out


def _add_spot(img: np.ndarray, y: int, x: int, amplitude: float, sigma: float = 1.0
              ) -> None:
    """Add a Gaussian spot (a DNA-damage focus) at (y, x) in place."""
    r = int(3 * sigma) + 1
    y0, y1 = max(0, y - r), min(img.shape[0], y + r + 1)
    x0, x1 = max(0, x - r), min(img.shape[1], x + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    img[y0:y1, x0:x1] += amplitude * np.exp(-((yy - y) ** 2 + (xx - x) ** 2)
                                            / (2 * sigma ** 2))


def make_trap_plate(kind: str, seed: int = 0, size: int = 256, cells_per_field: int = 60,
                    nucleus_radius: float = 8.0, sites: int = 2) -> TrapPlate:
    """One of :data:`TRAPS` as fields with per-object truth (deterministic by ``seed``)."""
    if kind not in TRAPS:
        raise InputError(f"unknown trap {kind!r}; choose one of {list(TRAPS)}")
    rng = np.random.default_rng(seed)
    if kind == "confounded_pair":
        wells = {"B02": "stimulated", "B03": "unstimulated"}
        channels, informative, confound = ["NF-kB", "DNA"], "NF-kB", "DNA"
        classes = ["unstimulated", "stimulated"]
    elif kind == "rare_mitotic":
        wells = {"C05": ""}
        channels, informative, confound = ["DNA", "PH3", "CellBody"], "PH3", None
        classes = ["interphase", "mitotic"]
    elif kind == "dna_damage":
        wells = {"E02": "damaged", "E03": "control", "E04": "damaged", "E05": "control"}
        channels, informative, confound = ["Hoechst", "H2AX"], "H2AX", None
        classes = ["control", "damaged"]
    else:
        wells = {f"D{c:02d}": ("treated" if c % 2 else "control") for c in range(2, 10)}
        channels, informative, confound = ["DNA", "Marker", "Actin"], "Marker", None
        classes = ["control", "treated"]
    fields: dict[tuple[str, int], np.ndarray] = {}
    objects: list[dict] = []
    for w_i, (well, well_class) in enumerate(wells.items()):
        dna_gain = 2.2 if (kind == "confounded_pair" and w_i == 0) else 1.0
        # The mitotic trap is one large field (~270 nuclei, like the real case).
        n_sites = 1 if kind == "rare_mitotic" else sites
        side = 2 * size if kind == "rare_mitotic" else size
        n_cells = cells_per_field * (5 if kind == "rare_mitotic" else 1)
        for site in range(1, n_sites + 1):
            img = np.zeros((len(channels), side, side), np.float32)
            cells, nuclei, cyto = _render_cells(rng, side, n_cells, nucleus_radius)
            nuc_px = _pixels_by_label(nuclei, len(cells))
            cyt_px = _pixels_by_label(cyto, len(cells))
            for k, (cy, cx, _) in enumerate(cells, start=1):
                nuc, cyt = nuc_px[k], cyt_px[k]
                if kind == "dna_damage":
                    label = well_class
                    img[0][nuc] += rng.uniform(0.6, 1.0)
                    n_foci = rng.integers(5, 9) if label == "damaged" else rng.integers(0, 2)
                    for j in rng.choice(len(nuc[0]), min(n_foci, len(nuc[0])), replace=False):
                        _add_spot(img[1], nuc[0][j], nuc[1][j], rng.uniform(1.0, 1.6))
                elif kind == "rare_mitotic":
                    mitotic = rng.random() < 0.05
                    label = classes[int(mitotic)]
                    img[0][nuc] += rng.uniform(0.6, 1.0) * (1.8 if mitotic else 1.0)
                    img[1][nuc] += rng.uniform(0.8, 1.2) if mitotic else rng.uniform(0.0, 0.12)
                    body = rng.uniform(0.4, 0.8)
                    img[2][nuc] += body
                    img[2][cyt] += body
                else:
                    label = well_class
                    positive = label == classes[1]
                    m = rng.uniform(0.7, 1.3)
                    mi = channels.index(informative)
                    img[mi][nuc] += m * (0.9 if positive else 0.3)
                    img[mi][cyt] += m * (0.35 if positive else 0.7)
                    di = channels.index("DNA")
                    img[di][nuc] += dna_gain * rng.uniform(0.6, 1.0)
                    if "Actin" in channels:
                        img[channels.index("Actin")][cyt] += rng.uniform(0.3, 0.7)
                objects.append({"well": well, "site": site, "x": round(cx, 1),
                                "y": round(cy, 1), "label": label})
            noise = np.full(len(channels), 0.06, np.float32)
            if kind == "low_snr":
                noise[channels.index(informative)] = 0.45
            img += noise[:, None, None] * rng.standard_normal(img.shape, dtype=np.float32)
            img += 0.1                                    # camera offset
            fields[(well, site)] = np.clip(img, 0, None)
    return TrapPlate(kind=kind, channel_names=channels, class_names=classes, fields=fields,
                     objects=objects,
                     well_classes={w: c for w, c in wells.items() if c},
                     informative_channel=informative, confound_channel=confound, seed=seed)
