"""Loading labelled training images from simple files (NPZ, or a CSV of TIFF paths)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..core.data.dataset import ImageSet
from ..core.runtime.errors import InputError


def load_npz(path: str | Path) -> ImageSet:
    """An ``.npz`` with ``images`` (N, C, H, W) and ``labels``; optional ``channel_names``,
    ``class_names``, ``groups``, per-crop ``plate``, ``well`` and ``site`` (counted by the
    study-design check) and ``normalization`` (what was already applied to the images:
    ``per_field``, ``per_crop`` or ``none``; stored in the bundle)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z or "labels" not in z:
                raise InputError(f"{path} must contain arrays 'images' and 'labels'; found "
                                 f"{sorted(z.files)}")
            def opt(k: str):
                return z[k].tolist() if k in z else None

            meta = {}
            if "normalization" in z:  # what was applied upstream: per_field, none ...
                from ..core.data.normalization import canonical_mode

                meta["normalization"] = {"mode": canonical_mode(str(z["normalization"]),
                                                                "field"),
                                         "declared_by": "npz key 'normalization'"}
            units = [k for k in ("plate", "well", "site") if k in z]
            for k in units:
                if z[k].shape != (z["labels"].shape[0],):
                    raise InputError(f"{path}: '{k}' must hold one value per image "
                                     f"({z['labels'].shape[0]}); got shape {z[k].shape}")
                meta[k] = z[k].astype(str)
            if units:
                meta["per_crop_keys"] = units
            return ImageSet(images=z["images"], labels=z["labels"],
                            channel_names=opt("channel_names") or [],
                            class_names=opt("class_names") or [],
                            groups=z["groups"] if "groups" in z else None, metadata=meta)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path} as .npz: {err}") from None


def load_table(path: str | Path, channel_names: list[str] | None = None) -> ImageSet:
    """A CSV with columns ``path``, ``label`` and optionally ``group``: one multichannel
    (C, H, W) TIFF per row, paths relative to the CSV. Labels may be names."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path} lists no images")
    missing = {"path", "label"} - set(rows[0])
    if missing:
        raise InputError(f"{path} lacks column(s) {sorted(missing)}; needs path,label[,group]")
    images = []
    for row in rows:
        p = (path.parent / row["path"]).resolve()
        try:
            img = np.asarray(tifffile.imread(p))
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read image {p}: {err}") from None
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3:
            raise InputError(f"{p} has shape {img.shape}; expected (C, H, W)")
        if images and img.shape != images[0].shape:
            raise InputError(f"{p} has shape {img.shape} but {rows[0]['path']} has "
                             f"{images[0].shape}; all images must match")
        images.append(img)
    names = sorted({r["label"] for r in rows}, key=lambda s: (not s.isdigit(), s))
    labels = np.array([names.index(r["label"]) for r in rows])
    groups = np.array([r.get("group") or str(i) for i, r in enumerate(rows)])
    return ImageSet(images=np.stack(images), labels=labels, channel_names=channel_names or [],
                    class_names=names, groups=groups)
