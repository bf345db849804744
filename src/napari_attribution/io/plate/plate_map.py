"""Plate maps: well names and the CSV that gives each well a class, a dose and a control."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...core.runtime.errors import InputError

_WELL_RE = re.compile(r"^\s*([A-Za-z]+)[-_ ]?0*(\d+)\s*$")


def normalise_well(well: str, col: str | int | None = None) -> str:
    """``'a1'``, ``'A01'``, ``('A', '1')`` -> ``'A01'``."""
    text = f"{well}{int(col):02d}" if col is not None and str(col).strip().isdigit() \
        else str(well)
    m = _WELL_RE.match(text)
    if not m:
        raise InputError(f"{text!r} is not a well name like A01")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def site_key(site: object) -> str:
    """Site names compared as numbers when they are numbers (``'01'`` = ``'1'``)."""
    text = str(site).strip()
    return str(int(text)) if text.isdigit() else text


def class_key(s: str) -> tuple:
    """Sort key: numbers in numeric order, then names alphabetically."""
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


@dataclass(frozen=True)
class WellInfo:
    """What the plate map says about one well (``label`` None = no class)."""

    well: str
    label: str | None = None
    dose: float = float("nan")
    control: int = 0


@dataclass
class PlateMap:
    """Well -> class, dose and control, read from a CSV."""

    wells: dict[str, WellInfo]
    path: Path | None = None

    @property
    def class_names(self) -> list[str]:
        """Class labels present, numbers in numeric order, then names alphabetically."""
        labels = {w.label for w in self.wells.values() if w.label is not None}
        return sorted(labels, key=class_key)

    def __getitem__(self, well: str) -> WellInfo:
        return self.wells[normalise_well(well)]

    def __contains__(self, well: str) -> bool:
        return normalise_well(well) in self.wells


def read_csv_rows(path: Path, what: str) -> list[dict[str, str]]:
    """The rows of a CSV file (BOM tolerated), or a clear error naming ``what`` it is."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read {what} {path}: {err}") from None
    if not rows:
        raise InputError(f"{what} {path} has no rows")
    return rows


def read_plate_map(
    path: str | Path,
    well_column: str | None = "well",
    row_column: str | None = None,
    col_column: str | None = None,
    class_column: str | None = "class",
    dose_column: str | None = "dose",
    control_column: str | None = "control",
    control_classes: Mapping[int, str] | None = None,
) -> PlateMap:
    """Read a plate-map CSV: one row per well.

    The well is ``well_column`` (``A01``, ``A1``) or ``row_column`` + ``col_column``.
    ``class_column``, ``dose_column`` and ``control_column`` are optional (missing
    columns are simply absent); an empty class cell leaves the well unlabelled.
    ``control_classes`` (e.g. ``{-1: "negative", 1: "positive"}``) derives the class from
    the control flag for wells without a class.
    """
    path = Path(path)
    rows = read_csv_rows(path, "plate map")
    cols = set(rows[0])
    use_rc = row_column is not None and col_column is not None
    needed = {row_column, col_column} if use_rc else {well_column}
    if not needed <= cols:
        raise InputError(f"plate map {path} lacks column(s) {sorted(needed - cols)}; it has "
                         f"{sorted(cols)}")
    wells: dict[str, WellInfo] = {}
    for i, r in enumerate(rows, start=2):
        try:
            well = normalise_well(r[row_column], r[col_column]) if use_rc \
                else normalise_well(r[well_column])
            control = int(float(r[control_column])) if control_column in cols and \
                (r[control_column] or "").strip() else 0
            dose = float(r[dose_column]) if dose_column in cols and \
                (r[dose_column] or "").strip() else float("nan")
        except (InputError, ValueError, OverflowError) as err:
            raise InputError(f"plate map {path}, line {i}: {err}") from None
        label = (r.get(class_column) or "").strip() if class_column in cols else ""
        if not label and control_classes is not None:
            label = control_classes.get(control, "")
        if well in wells:
            raise InputError(f"plate map {path} lists well {well} twice (line {i})")
        wells[well] = WellInfo(well, label or None, dose, control)
    return PlateMap(wells, path)
