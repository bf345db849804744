"""Plate / folder datasets: images named by well, site and channel plus a plate map.

* :mod:`.config` — :class:`SamplingConfig`: every setting of the sampling, one record
  (CLI, API, widgets and the model's provenance share it).
* :mod:`.plate_map` — well names and the plate-map CSV (class, dose, control per well).
* :mod:`.layout` — :class:`Plate`: fields of view found in a folder by a filename pattern.
* :mod:`.crops` — cutting crops field by field (:meth:`Plate.iter_crops`):
  nuclei-centred, grid or random; geometry from the nucleus size; per-field normalisation.
* :mod:`.sampling` — crops as an ImageSet (:meth:`Plate.sample`): labels from the plate
  map, an object table or a marker rule; groups for the held-out unit.
* :mod:`.labels` — nuclei from the built-in Otsu segmentation or label images made
  elsewhere (cellpose, stardist, napari Labels).
* :mod:`.objects` — per-object labels: object tables (CellProfiler columns accepted)
  and marker rules such as ``"PH3>otsu"``.
* :mod:`.bbbc013` — the BBBC013 plate.

Per-crop facts (well, site, dose, control, position) are arrays in
``ImageSet.metadata`` aligned with the images; :func:`take` subsets an ImageSet keeping
them aligned. BBBC013 in one line::

    data = load_bbbc013("../shared/data/bbbc013")   # controls, 48 px crops at 2x on nuclei
"""

from ...core.data.segmentation import segment_nuclei
from .bbbc013 import (
    BBBC013_CHANNELS,
    BBBC013_CLASSES,
    BBBC013_DEFAULTS,
    BBBC013_PATTERN,
    bbbc013_plate_map,
    load_bbbc013,
    open_bbbc013,
)
from .config import DEFAULT_MAX_OBJECTS, SamplingConfig
from .crops import (
    CROP_MODES,
    NORMALIZATIONS,
    CropSettings,
    FieldCrops,
    block_mean,
    take,
)
from .labels import LabelSource, read_label_file
from .layout import FieldOfView, Plate, probe_channels
from .objects import LabelRule, ObjectTable, parse_column_map, parse_label_rule, read_objects
from .plate_map import PlateMap, WellInfo, normalise_well, read_plate_map
from .sampling import assign_split, sample_plate

__all__ = [
    "BBBC013_CHANNELS", "BBBC013_CLASSES", "BBBC013_DEFAULTS", "BBBC013_PATTERN",
    "CROP_MODES", "DEFAULT_MAX_OBJECTS", "NORMALIZATIONS", "CropSettings", "FieldCrops",
    "FieldOfView", "LabelRule", "LabelSource", "ObjectTable", "Plate", "PlateMap",
    "SamplingConfig", "WellInfo", "assign_split", "bbbc013_plate_map", "block_mean",
    "load_bbbc013", "normalise_well", "open_bbbc013", "parse_column_map",
    "parse_label_rule", "probe_channels", "read_label_file", "read_objects",
    "read_plate_map", "sample_plate", "segment_nuclei", "take",
]
