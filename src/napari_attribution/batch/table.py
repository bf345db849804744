"""Tables from a batch store: one row per image and a per-well summary, as CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .store import BatchStore


def image_rows(store: BatchStore) -> list[dict[str, Any]]:
    """One row per finished image: ids, predicted class, class probabilities, the target
    of each method's map and, for per-channel maps, each channel's share of the map."""
    meta = store.meta
    classes = meta["class_names"]
    channels = meta["channel_names"]
    methods = store.methods
    done = store.done_mask()
    probs = store.probabilities()
    targets = store.targets()
    shares = store.channel_share()
    seconds = store.seconds()
    rows = []
    for i, rec in enumerate(store.records):
        if not done[i]:
            continue
        p = probs[i]
        k = int(np.argmax(p))
        row: dict[str, Any] = {"index": i, "image_id": rec.id, "well": rec.well,
                               "site": rec.site, "predicted": classes[k],
                               "predicted_index": k}
        row.update({f"p_{name}": round(float(v), 6) for name, v in zip(classes, p,
                                                                        strict=True)})
        for j, method in enumerate(methods):
            row[f"{method}_target"] = classes[int(targets[i, j])]
            if meta.get("per_channel"):
                row.update({f"{method}_share_{c}": round(float(v), 6)
                            for c, v in zip(channels, shares[i, j], strict=True)})
        row["seconds"] = round(float(seconds[i]), 4)
        rows.append(row)
    return rows


def well_rows(rows: Sequence[dict[str, Any]], class_names: Sequence[str]
              ) -> list[dict[str, Any]]:
    """Per well: image count, mean class probabilities, how many images each class won,
    and the mean of every per-channel share column."""
    wells: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        wells.setdefault(row["well"], []).append(row)
    share_cols = [k for k in (rows[0] if rows else {}) if "_share_" in k]
    out = []
    for well in sorted(wells):
        group = wells[well]
        summary: dict[str, Any] = {"well": well, "n_images": len(group)}
        for name in class_names:
            summary[f"mean_p_{name}"] = round(float(np.mean([r[f"p_{name}"] for r in group])), 6)
        for name in class_names:
            summary[f"n_{name}"] = sum(r["predicted"] == name for r in group)
        for col in share_cols:
            summary[f"mean_{col}"] = round(float(np.nanmean([r[col] for r in group])), 6)
        out.append(summary)
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``path`` atomically."""
    from ..io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=True, what="batch table") as tmp, \
            open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path
