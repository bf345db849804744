"""The OME-NGFF 0.4 rules a batch store must follow, checked on the files themselves.

An independent second check beside ome-zarr-models' validators
(``napari_attribution.batch.ngff.validate_store``, which the store's metadata is built
with): plate rows/columns/wells, well images, multiscales axes (2-5, at most one
channel-or-custom axis, space axes last), datasets that exist with one scale per axis.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9]+$")


def _attrs(folder: Path) -> dict:
    return json.loads((folder / ".zattrs").read_text())


def check_image(folder: Path) -> list[int]:
    """Check one NGFF image group; returns the shape of its full-resolution array."""
    ms = _attrs(folder)["multiscales"]
    assert isinstance(ms, list) and ms, "multiscales must be a non-empty list"
    m = ms[0]
    assert m["version"] == "0.4"
    axes = m["axes"]
    assert 2 <= len(axes) <= 5, f"{len(axes)} axes"
    types = [a.get("type") for a in axes]
    assert len({a["name"] for a in axes}) == len(axes), "axis names must be unique"
    space = [t for t in types if t == "space"]
    assert 2 <= len(space) <= 3, "2 or 3 space axes"
    assert types[-len(space):] == space, "space axes come last"
    assert types.count("time") <= 1
    other = [t for t in types if t not in ("space", "time")]
    assert len(other) <= 1, f"at most one channel or custom axis; got {types}"
    if "time" in types:
        assert types.index("time") == 0, "time comes first"
    shape = None
    for ds in m["datasets"]:
        arr = folder / ds["path"]
        meta = json.loads((arr / ".zarray").read_text())
        assert len(meta["shape"]) == len(axes), "array rank must equal the axis count"
        (scale,) = [t for t in ds["coordinateTransformations"] if t["type"] == "scale"]
        assert len(scale["scale"]) == len(axes)
        assert all(v > 0 for v in scale["scale"])
        shape = shape or meta["shape"]
    return shape


def check_plate(root: Path) -> dict[str, list[int]]:
    """Check an NGFF HCS plate; returns {field path: array shape}."""
    plate = _attrs(root)["plate"]
    assert plate["version"] == "0.4"
    rows = [r["name"] for r in plate["rows"]]
    cols = [c["name"] for c in plate["columns"]]
    assert all(NAME.match(n) for n in rows + cols)
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    out = {}
    for well in plate["wells"]:
        row, col = well["path"].split("/")
        assert rows[well["rowIndex"]] == row and cols[well["columnIndex"]] == col
        images = _attrs(root / row / col)["well"]["images"]
        assert len(images) <= plate["field_count"]
        for image in images:
            assert NAME.match(image["path"])
            out[f"{row}/{col}/{image['path']}"] = check_image(root / row / col / image["path"])
    return out
