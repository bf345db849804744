"""Writing a per-object table with its provenance (io/object_table.py)."""

from __future__ import annotations

import csv
import json

import pytest

from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.object_table import parquet_available, sidecar, write_object_table

ROWS = [{"label": 1, "predicted": "on", "p_on": 0.9, "channel_GFP": 0.4},
        {"label": 7, "predicted": "off", "p_on": 0.2, "channel_GFP": -0.01}]


def test_csv_and_provenance_sidecar(tmp_path):
    files = write_object_table(ROWS, {"model": {"sha": "abc"}, "objects": 2},
                               tmp_path / "cells.csv")
    assert files == [tmp_path / "cells.csv", sidecar(tmp_path / "cells.csv")]
    with open(files[0]) as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["1", "7"] and rows[1]["predicted"] == "off"
    assert json.loads(files[1].read_text())["model"]["sha"] == "abc"
    assert files[1].name == "cells.csv.provenance.json"
    with pytest.raises(Exception, match="exists"):
        write_object_table(ROWS, {}, tmp_path / "cells.csv", overwrite=False)


def test_bad_tables_are_refused(tmp_path):
    with pytest.raises(InputError, match="csv or .parquet"):
        write_object_table(ROWS, {}, tmp_path / "cells.xlsx")
    with pytest.raises(InputError, match="empty"):
        write_object_table([], {}, tmp_path / "cells.csv")


@pytest.mark.skipif(parquet_available(), reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_what_to_do(tmp_path):
    with pytest.raises(InputError, match="pyarrow"):
        write_object_table(ROWS, {}, tmp_path / "cells.parquet")
    assert not (tmp_path / "cells.parquet").exists()


@pytest.mark.skipif(not parquet_available(), reason="pyarrow is not installed")
def test_parquet_carries_the_provenance(tmp_path):
    import pyarrow.parquet as pq

    write_object_table(ROWS, {"objects": 2}, tmp_path / "cells.parquet")
    table = pq.read_table(tmp_path / "cells.parquet")
    assert table.column("label").to_pylist() == [1, 7]
    meta = json.loads(table.schema.metadata[b"napari_attribution"])
    assert meta["objects"] == 2
