"""Whole-plate batch attribution on Dask distributed, resumable, with OME-Zarr output.

``run_batch(records, bundle, output, BatchConfig(...))`` is the verb (it plans the run
once, :meth:`BatchPlan.build`, and runs the plan on a :class:`ClusterOptions` cluster,
:func:`run_plan`); records come from
a plate dataset (:func:`records_from_plate` of an ``io.plate.Plate``); results are read
back with :func:`open_result`; :func:`validate_store` checks a store as an OME-NGFF plate.
Dask, zarr and ome-zarr-models are imported only when a run starts
(``pip install 'napari-attribution[batch]'``).
"""

from __future__ import annotations

from .ngff import validate_store
from .records import ImageRecord, read_record, records_from_plate
from .runner import (
    BatchConfig,
    BatchIncomplete,
    BatchPlan,
    BatchResult,
    ClusterOptions,
    run_batch,
    run_plan,
)
from .store import BatchStore


def open_result(path) -> BatchStore:
    """Open a batch result store for reading (maps, probabilities, tables)."""
    return BatchStore.open(path)


__all__ = ["BatchConfig", "BatchIncomplete", "BatchPlan", "BatchResult", "BatchStore",
           "ClusterOptions", "ImageRecord", "open_result", "read_record",
           "records_from_plate", "run_batch", "run_plan", "validate_store"]
