"""Small synthetic plates written to disk (tifffile) for the plate tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

PATTERN = r"(?P<well>[A-H]\d{2})_s(?P<site>\d)_(?P<channel>\w+)\.tif$"


def nuclei_positions(rng: np.random.Generator, n: int, size: int, radius: int,
                     margin: int = 4) -> np.ndarray:
    """``n`` non-touching nucleus centres (y, x) in a ``size`` x ``size`` field."""
    out: list[tuple[int, int]] = []
    lo, hi = radius + margin, size - radius - margin
    while len(out) < n:
        c = rng.integers(lo, hi, 2)
        if all((c[0] - y) ** 2 + (c[1] - x) ** 2 > (2 * radius + 3) ** 2 for y, x in out):
            out.append((int(c[0]), int(c[1])))
    return np.asarray(out)


def disc_labels(centres: np.ndarray, size: int, radius: int) -> np.ndarray:
    """A label image with one disc per centre (labels 1..n)."""
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return lab


def write_field(root: Path, well: str, site: int, channels: dict[str, np.ndarray]) -> None:
    for name, img in channels.items():
        tifffile.imwrite(root / f"{well}_s{site}_{name}.tif",
                         np.clip(img, 0, 65535).astype(np.uint16))


def nfkb_pair(root: Path, size: int = 96, n: int = 14, radius: int = 6, seed: int = 0,
              dna_gain: float = 2.2) -> Path:
    """A two-well NF-kB translocation pair: A01 stimulated (NF-kB in the nuclei), A02 not
    (NF-kB around them); the DNA stain is ``dna_gain`` x brighter in A01 (a batch effect).
    Channels ``DNA`` and ``NFKB``; plate map ``map.csv`` (classes TNF, ctrl)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for well, stim, gain in (("A01", True, dna_gain), ("A02", False, 1.0)):
        centres = nuclei_positions(rng, n, size, radius)
        lab = disc_labels(centres, size, radius)
        ring = np.zeros((size, size), bool)
        for cy, cx in centres:
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            ring |= (d2 > radius ** 2) & (d2 <= (2 * radius) ** 2)
        dna = rng.normal(100, 10, (size, size)) + gain * 800 * (lab > 0)
        where = (lab > 0) if stim else (ring & (lab == 0))
        nfkb = rng.normal(100, 10, (size, size)) + 600 * where
        write_field(root, well, 1, {"DNA": dna, "NFKB": nfkb})
    (root / "map.csv").write_text("well,class\nA01,TNF\nA02,ctrl\n")
    return root


def marker_plate(root: Path, n_fields: int = 4, n: int = 25, positives: int = 5,
                 size: int = 128, radius: int = 6, seed: int = 0) -> tuple[Path, dict]:
    """One well, ``n_fields`` sites of ``n`` nuclei each; ``positives`` nuclei in all are
    bright in channel ``PH3`` (a rare marker-defined class). Returns the folder and
    {(site, y, x): positive} for every nucleus."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = n_fields * n
    pos = set(rng.choice(total, positives, replace=False).tolist())
    truth: dict = {}
    k = 0
    for site in range(1, n_fields + 1):
        centres = nuclei_positions(rng, n, size, radius)
        lab = disc_labels(centres, size, radius)
        dna = rng.normal(100, 10, (size, size)) + 900 * (lab > 0)
        ph3 = rng.normal(100, 10, (size, size))
        body = rng.normal(100, 10, (size, size)) + 300 * (lab > 0)
        for j, (cy, cx) in enumerate(centres, start=1):
            bright = k in pos
            truth[(site, int(cy), int(cx))] = bright
            ph3[lab == j] += 1500 if bright else rng.uniform(0, 150)
            k += 1
        write_field(root, "B02", site, {"DNA": dna, "PH3": ph3, "BODY": body})
    return root, truth


def foci_plate(root: Path, wells: dict[str, str] | None = None, sites: int = 2,
               size: int = 128, n: int = 12, radius: int = 7, seed: int = 0,
               names: tuple[str, str] = ("Hoechst", "H2AX")) -> Path:
    """A DNA-damage plate whose DNA stain is called ``Hoechst`` (no channel "DNA"):
    nuclei of ``radius`` px (area ~ pi r^2) in ``names[0]``, and in ``names[1]`` 5-8
    bright foci per nucleus in damaged wells, 0-1 in controls. Default wells: two per
    class (B02, B04 damaged; B03, B05 control); plate map ``map.csv``."""
    wells = wells or {"B02": "damaged", "B03": "control", "B04": "damaged",
                      "B05": "control"}
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for well, cls in wells.items():
        for site in range(1, sites + 1):
            centres = nuclei_positions(rng, n, size, radius)
            lab = disc_labels(centres, size, radius)
            dna = rng.normal(100, 10, (size, size)) + 800 * (lab > 0)
            foci = rng.normal(100, 10, (size, size))
            for cy, cx in centres:
                k = rng.integers(5, 9) if cls == "damaged" else rng.integers(0, 2)
                for _ in range(k):
                    r, a = rng.uniform(0, radius - 2), rng.uniform(0, 2 * np.pi)
                    fy, fx = cy + r * np.sin(a), cx + r * np.cos(a)
                    foci += 1500 * np.exp(-((yy - fy) ** 2 + (xx - fx) ** 2) / (2 * 1.0))
            write_field(root, well, site, {names[0]: dna, names[1]: foci})
    (root / "map.csv").write_text("well,class\n" + "".join(
        f"{w},{c}\n" for w, c in wells.items()))
    return root
