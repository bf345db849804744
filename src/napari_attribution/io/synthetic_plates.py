"""Write a synthetic trap plate (:mod:`napari_attribution.core.data.synthetic_plates`) as a
plate folder, the way microscopes and CellProfiler leave real ones: one 16-bit TIFF per
field and channel (``B02_s1_DNA.tif``), a plate map (``plate_map.csv``: well, class) and
an object table (``objects.csv``: well, site, x, y, label)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..core.data.synthetic_plates import TrapPlate, make_trap_plate

PATTERN = r"(?P<well>[A-P]\d+)_s(?P<site>\d+)_(?P<channel>[^_.]+)\.tif$"


@dataclass
class WrittenPlate:
    """Where a written plate lives and what the documented CLI needs to read it."""

    folder: Path
    pattern: str
    plate_map: Path | None
    objects: Path
    plate: TrapPlate


def write_trap_plate(folder: str | Path, kind: str, seed: int = 0,
                     rename: dict[str, str] | None = None, **kwargs) -> WrittenPlate:
    """Generate the trap ``kind`` and write it under ``folder`` (created); ``rename``
    gives channels other names on disk (``{"Hoechst": "w1"}``: a plate whose file names
    say nothing about the stains)."""
    plate = make_trap_plate(kind, seed=seed, **kwargs)
    if rename:
        plate.channel_names = [rename.get(c, c) for c in plate.channel_names]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for (well, site), img in plate.fields.items():
        for name, ch in zip(plate.channel_names, img, strict=True):
            data = np.clip(ch * 10000, 0, 65535).astype(np.uint16)
            tifffile.imwrite(folder / f"{well}_s{site}_{name.replace('-', '')}.tif", data)
    plate_map = None
    if plate.well_classes:
        plate_map = folder / "plate_map.csv"
        with open(plate_map, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["well", "class"])
            w.writerows(sorted(plate.well_classes.items()))
    objects = folder / "objects.csv"
    with open(objects, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["well", "site", "x", "y", "label"])
        w.writeheader()
        w.writerows(plate.objects)
    return WrittenPlate(folder, PATTERN, plate_map, objects, plate)
