"""Where nuclei labels come from: the built-in Otsu segmentation or label images made
elsewhere (cellpose, stardist, a napari Labels layer), one per field of view."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...core.data.segmentation import check_labels_image, segment_nuclei
from ...core.runtime.errors import InputError
from ..image_formats import has_suffix
from .plate_map import normalise_well, site_key

#: Label images given per field: keyed by ``(well, site)`` or ``"A01_s1"`` (or ``"A01"``
#: for single-site wells), values arrays or files; or a folder of files; or a callable.
LabelsInput = Mapping[Any, Any] | str | Path | Callable[..., np.ndarray] | None


def read_label_file(path: str | Path) -> np.ndarray:
    """An integer label image from a TIFF or PNG file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label image not found: {path}")
    try:
        if has_suffix(path, "tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from skimage.io import imread

        return np.asarray(imread(path))
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file
        raise InputError(f"cannot read label image {path}: {err}") from None


class LabelSource:
    """Gives the nuclei label image (full resolution) of each field of view.

    ``labels=None``: Otsu segmentation of the nuclei channel (``diameter`` scales it).
    Otherwise label images from elsewhere, matched to fields (see :data:`LabelsInput`);
    a folder is matched with ``pattern`` (groups ``well`` or ``row``/``col``, ``site``).
    """

    def __init__(self, labels: LabelsInput = None, pattern: str | None = None,
                 diameter: float | None = None) -> None:
        self.diameter = diameter
        self._fn: Callable[..., np.ndarray] | None = None
        self._table: dict[tuple[str, str], Any] = {}
        if labels is None:
            self.name = "otsu"
        elif callable(labels):
            self.name, self._fn = "callable", labels
        elif isinstance(labels, Mapping):
            self.name = "label images given per field"
            for key, value in labels.items():
                self._table[_field_key(key)] = value
        else:
            folder = Path(labels)
            if not folder.is_dir():
                raise InputError(f"labels folder not found: {folder}")
            if not pattern:
                raise InputError("label images in a folder need a filename pattern with "
                                 "groups well (or row, col) and site")
            self.name = f"label images in {folder}"
            self._table = _scan_labels(folder, pattern)
            if not self._table:
                raise InputError(f"no file in {folder} matches the labels pattern {pattern!r}")

    @property
    def builtin(self) -> bool:
        return self.name == "otsu"

    def __call__(self, well: str, site: str, nuclei: np.ndarray) -> np.ndarray:
        """The label image of field (well, site); ``nuclei`` is its nuclei channel."""
        shape = nuclei.shape[-2:]
        if self.builtin:
            return segment_nuclei(nuclei, diameter=self.diameter)
        if self._fn is not None:
            out = self._fn(nuclei)
        else:
            key = (normalise_well(well), site_key(site))
            if key not in self._table:
                raise InputError(f"no label image for well {well} site {site} ({self.name})")
            out = self._table[key]
            if isinstance(out, (str, Path)):
                out = read_label_file(out)
        return check_labels_image(out, shape, f"label image of well {well} site {site}")


def _field_key(key: Any) -> tuple[str, str]:
    if isinstance(key, tuple) and len(key) == 2:
        return normalise_well(key[0]), site_key(key[1])
    m = re.match(r"^\s*([A-Za-z]+\d+)(?:[_ -]s?(\w+))?\s*$", str(key))
    if not m:
        raise InputError(f"label images must be keyed by (well, site) or 'A01_s1'; got {key!r}")
    return normalise_well(m.group(1)), site_key(m.group(2) or "1")


def _scan_labels(folder: Path, pattern: str) -> dict[tuple[str, str], Path]:
    try:
        rx = re.compile(pattern)
    except re.error as err:
        raise InputError(f"bad labels pattern {pattern!r}: {err}") from None
    if "well" not in rx.groupindex and not {"row", "col"} <= set(rx.groupindex):
        raise InputError(f"labels pattern {pattern!r} needs a group 'well' or 'row' and 'col'")
    out: dict[tuple[str, str], Path] = {}
    for p in sorted(folder.iterdir()):
        m = rx.search(p.name)
        if not m or not p.is_file():
            continue
        g = m.groupdict()
        well = normalise_well(g["well"]) if g.get("well") else normalise_well(g["row"], g["col"])
        key = (well, site_key(g.get("site") or "1"))
        if key in out:
            raise InputError(f"{p} and {out[key]} are both labels of well {key[0]} site "
                             f"{key[1]}; make the labels pattern tell them apart")
        out[key] = p
    return out
