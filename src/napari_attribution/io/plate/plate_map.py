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


#: the delimiters a CSV may use: the one that splits the header into most columns wins
CSV_DELIMITERS = (",", ";", "\t")


def csv_delimiter(header: str) -> str:
    """The delimiter of a CSV file from its header line: whichever of ``,``, ``;`` and
    tab splits it into most columns (``,`` when none does; quotes are respected)."""
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: counts[d])  # first wins a tie: ","
    return best if counts[best] > 1 else ","


def read_csv_rows(path: Path, what: str) -> list[dict[str, str]]:
    """The rows of a CSV file (BOM tolerated; ``,``, ``;`` or tab separated, see
    :func:`csv_delimiter`), or a clear error naming ``what`` it is. A row with more
    fields than the header is refused; missing trailing fields are empty."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = csv_delimiter(f.readline())
            f.seek(0)
            reader = csv.DictReader(f, delimiter=delimiter, restval="")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read {what} {path}: {err}") from None
    if not rows:
        raise InputError(f"{what} {path} has no rows")
    for i, r in enumerate(rows, start=2):
        if None in r:  # DictReader keeps surplus fields under the key None
            raise InputError(f"{what} {path}, line {i}: {len(r) - 1 + len(r[None])} fields "
                             f"but the header has {len(r) - 1} (columns separated by "
                             f"{_delimiter_name(delimiter)}; quote values that contain it)")
    return rows


def _delimiter_name(d: str) -> str:
    return {",": "commas", ";": "semicolons", "\t": "tabs"}[d]


def parse_number(text: str) -> float:
    """A number from a CSV cell; a decimal comma (``0,5``, as ``;``-separated files from
    many locales write it) is read as a decimal point."""
    text = text.strip()
    if "," in text and "." not in text and text.count(",") == 1:
        text = text.replace(",", ".")
    return float(text)


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
            control = int(parse_number(r[control_column])) if control_column in cols and \
                (r[control_column] or "").strip() else 0
            dose = parse_number(r[dose_column]) if dose_column in cols and \
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
