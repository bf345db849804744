"""Writing a per-object table (one row per cell) with its provenance.

CSV: the table, plus ``<file>.provenance.json`` beside it (a CSV has no place for
metadata that every reader skips). Parquet (when pyarrow is installed): the provenance
is in the file's schema metadata under ``napari_attribution``, and in the same sidecar.
Both are written atomically (``io.atomic``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.runtime.errors import InputError

FORMATS = (".csv", ".parquet")


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def sidecar(path: str | Path) -> Path:
    """Where the provenance of a table at ``path`` goes."""
    path = Path(path)
    return path.with_name(path.name + ".provenance.json")


def write_object_table(rows: Sequence[dict[str, Any]], provenance: dict[str, Any],
                       path: str | Path, overwrite: bool = True) -> list[Path]:
    """Write ``rows`` (dicts with the same keys) as CSV or Parquet (by the suffix) and the
    provenance beside them; returns the files written."""
    from .atomic import atomic_path, atomic_write_bytes

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"an object table is written as {' or '.join(FORMATS)}; got "
                         f"{path.name!r}")
    if not rows:
        raise InputError("the object table is empty: explain the objects of a field first")
    prov = json.dumps(provenance, indent=1, default=str)
    if suffix == ".parquet":
        if not parquet_available():
            raise InputError("writing Parquet needs pyarrow (pip install pyarrow); "
                             "save as .csv instead")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(rows))
        table = table.replace_schema_metadata({"napari_attribution": prov})
        with atomic_path(path, overwrite=overwrite, what="object table") as tmp:
            pq.write_table(table, tmp)
    else:
        with atomic_path(path, overwrite=overwrite, what="object table") as tmp, \
                open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    side = sidecar(path)
    atomic_write_bytes(side, prov.encode(), overwrite=True, what="table provenance")
    return [path, side]
