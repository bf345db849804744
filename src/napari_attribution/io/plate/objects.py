"""Per-object labels: a table of objects (well, site, x, y, label) and marker rules.

A table has one row per object: ``well`` and ``site`` (or ``file``, an image file name of
the field), ``x`` and ``y`` (the object's centre, full-resolution pixels, x = column) and
``label`` (its class). CellProfiler object tables work as they are: ``Metadata_Well``,
``Metadata_Site``, ``Location_Center_X``/``Y`` (also with an object prefix such as
``Nuclei_Location_Center_X``) are recognised; other names through a column mapping.

A label rule such as ``"PH3>otsu"`` labels each object by its mean intensity in one
channel: positive when it exceeds the Otsu threshold of all objects' means (or a number:
``"PH3>250"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.runtime.errors import InputError
from .plate_map import class_key, normalise_well, read_csv_rows, site_key

OBJECT_COLUMNS = ("well", "site", "file", "x", "y", "label")
#: Standard names looked for when a column is not mapped explicitly (first found wins).
AUTO_COLUMNS = {
    "well": ("well", "Metadata_Well", "Image_Metadata_Well"),
    "site": ("site", "Metadata_Site", "Metadata_Field", "Image_Metadata_Site", "field"),
    "file": ("file", "FileName", "Image_FileName"),
    "x": ("x", "Location_Center_X", "AreaShape_Center_X", "*Location_Center_X"),
    "y": ("y", "Location_Center_Y", "AreaShape_Center_Y", "*Location_Center_Y"),
    "label": ("label", "class", "Metadata_Class", "Metadata_Label"),
}


@dataclass
class ObjectTable:
    """Objects with a field key, a centre (full-resolution pixels) and a class name."""

    well: list[str | None]
    site: list[str | None]
    file: list[str | None]
    x: np.ndarray
    y: np.ndarray
    label: list[str]
    rows: list[int]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def class_names(self) -> list[str]:
        return sorted(set(self.label), key=class_key)


def parse_column_map(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"well=Metadata_Well,x=Location_Center_X"`` -> ``{"well": "Metadata_Well", ...}``."""
    if text is None:
        return {}
    items = dict(text) if isinstance(text, Mapping) else dict(
        (k.strip(), v.strip()) for k, v in (t.split("=", 1) for t in str(text).split(",")
                                            if "=" in t))
    if not isinstance(text, Mapping) and str(text).strip() and not items:
        raise InputError(f"column mapping {text!r} must look like well=COLUMN,x=COLUMN")
    bad = sorted(set(items) - set(OBJECT_COLUMNS))
    if bad:
        raise InputError(f"unknown object column(s) {bad} in the mapping; known: "
                         f"{', '.join(OBJECT_COLUMNS)}")
    return items


def _find(cols: list[str], key: str, mapping: dict[str, str]) -> str | None:
    if key in mapping:
        if mapping[key] not in cols:
            raise InputError(f"object table has no column {mapping[key]!r} (mapped to {key})")
        return mapping[key]
    lower = {c.lower(): c for c in cols}
    for name in AUTO_COLUMNS[key]:
        if name.startswith("*"):
            hits = [c for c in cols if c.endswith(name[1:])]
            if hits:
                return hits[0]
        elif name.lower() in lower:
            return lower[name.lower()]
    return None


def read_objects(path: str | Path, columns: str | Mapping[str, str] | None = None,
                 need_label: bool = True) -> ObjectTable:
    """Read an object table (CSV); ``columns`` maps our names to the table's
    (``{"well": "Metadata_Well"}`` or ``"well=Metadata_Well,..."``)."""
    path = Path(path)
    mapping = parse_column_map(columns)
    rows = read_csv_rows(path, "object table")
    cols = list(rows[0])
    found = {k: _find(cols, k, mapping) for k in OBJECT_COLUMNS}
    need = ["x", "y"] + (["label"] if need_label else [])
    missing = [k for k in need if found[k] is None]
    if found["file"] is None and found["well"] is None:
        missing.insert(0, "well (or file)")
    if missing:
        raise InputError(f"object table {path} lacks column(s) for {', '.join(missing)}; it "
                         f"has {cols[:12]}{' ...' if len(cols) > 12 else ''}. Map them, e.g. "
                         "--objects-columns well=Metadata_Well,x=Location_Center_X")
    well, site, file, xs, ys, labels, lines = [], [], [], [], [], [], []
    for i, r in enumerate(rows, start=2):
        try:
            w = normalise_well(r[found["well"]]) if found["well"] else None
            x, y = float(r[found["x"]]), float(r[found["y"]])
        except (InputError, ValueError, TypeError) as err:
            raise InputError(f"object table {path}, line {i}: {err}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"object table {path}, line {i}: x, y must be numbers")
        label = (r.get(found["label"]) or "").strip() if found["label"] else ""
        if need_label and not label:
            raise InputError(f"object table {path}, line {i}: empty label")
        well.append(w)
        site.append(site_key(r[found["site"]]) if found["site"] and
                    (r[found["site"]] or "").strip() else None)
        file.append(Path(r[found["file"]]).name if found["file"] and
                    (r[found["file"]] or "").strip() else None)
        xs.append(x)
        ys.append(y)
        labels.append(label)
        lines.append(i)
    return ObjectTable(well, site, file, np.asarray(xs), np.asarray(ys), labels, lines, path)


@dataclass(frozen=True)
class LabelRule:
    """``channel > threshold``: class 1 (``"<channel> positive"``) when an object's mean in
    ``channel`` is above ``threshold`` (``"otsu"``: of all objects' means), else 0."""

    channel: str
    op: str
    threshold: float | str

    @property
    def class_names(self) -> list[str]:
        return [f"{self.channel} negative", f"{self.channel} positive"]

    def __str__(self) -> str:
        return f"{self.channel}{self.op}{self.threshold}"

    def apply(self, means: np.ndarray) -> tuple[np.ndarray, float]:
        """(labels, threshold used) for the objects' means in the rule's channel."""
        means = np.asarray(means, float)
        if means.size < 2:
            raise InputError(f"label rule {self}: need at least two objects; found "
                             f"{means.size}")
        if self.threshold == "otsu":
            if np.ptp(means) == 0:
                raise InputError(f"label rule {self}: every object has the same mean")
            thr = otsu_exact(means)
        else:
            thr = float(self.threshold)
        labels = (means > thr) if self.op == ">" else (means < thr)
        return labels.astype(np.int64), thr


def otsu_exact(values: np.ndarray) -> float:
    """Otsu's threshold on the values themselves (no histogram): the cut between sorted
    values that maximises the between-class variance, placed mid-gap. Histogram-based
    Otsu puts the cut at the edge of the large class when one class is rare."""
    v = np.sort(np.asarray(values, float))
    n = v.size
    k = np.arange(1, n)  # sizes of the lower class
    csum = np.cumsum(v)[:-1]
    mu0, mu1 = csum / k, (v.sum() - csum) / (n - k)
    between = k * (n - k) * (mu0 - mu1) ** 2
    between[v[1:] == v[:-1]] = -1  # no cut between equal values
    i = int(np.argmax(between))
    return float((v[i] + v[i + 1]) / 2)


_RULE_RE = re.compile(r"^\s*(?P<ch>[^<>]+?)\s*(?P<op>[<>])\s*(?P<thr>otsu|[-+0-9.eE]+)\s*$")


def parse_label_rule(text: str, channel_names: list[str]) -> LabelRule:
    """``"PH3>otsu"``, ``"PH3 > 250"`` or ``"DNA<otsu"`` for a plate with those channels."""
    m = _RULE_RE.match(str(text))
    if not m:
        raise InputError(f"label rule {text!r} must look like CHANNEL>otsu or CHANNEL>NUMBER")
    ch = m.group("ch")
    if ch not in channel_names:
        raise InputError(f"label rule {text!r}: no channel {ch!r}; the plate has "
                         f"{channel_names}")
    thr = m.group("thr")
    try:
        threshold: float | str = "otsu" if thr == "otsu" else float(thr)
    except ValueError:
        raise InputError(f"label rule {text!r}: {thr!r} is not a number or 'otsu'") from None
    return LabelRule(ch, m.group("op"), threshold)
