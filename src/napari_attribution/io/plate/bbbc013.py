"""BBBC013 (Broad Bioimage Benchmark Collection): a 96-well plate of U2OS cells with a
GFP-tagged FOXO1A fusion, channels GFP and DNA, controls in the plate map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...core.data.dataset import ImageSet
from ...core.runtime.errors import InputError
from .config import SamplingConfig
from .layout import Plate
from .plate_map import PlateMap, read_plate_map

BBBC013_PATTERN = r"Channel(?P<channel>\d+)-(?P<site>\d+)-(?P<row>[A-Z]+)-(?P<col>\d+)\.tif$"
BBBC013_CHANNELS = {"GFP": "1", "DNA": "2"}
BBBC013_CLASSES = ["cytoplasmic GFP", "nuclear GFP"]



def bbbc013_plate_map(root: str | Path) -> PlateMap:
    """BBBC013's ``1049_Metadata.csv``: controls -1 -> cytoplasmic, +1 -> nuclear GFP."""
    return read_plate_map(Path(root) / "1049_Metadata.csv", well_column=None,
                          row_column="Row", col_column="Column", class_column=None,
                          dose_column="SBS_Doses", control_column="SBS_Controls",
                          control_classes={-1: BBBC013_CLASSES[0], 1: BBBC013_CLASSES[1]})


def open_bbbc013(root: str | Path, channels: Sequence[str] = ("GFP", "DNA")) -> Plate:
    """The BBBC013 plate folder as a :class:`Plate` (channels by name: GFP, DNA)."""
    unknown = [c for c in channels if c not in BBBC013_CHANNELS]
    if unknown:
        raise InputError(f"BBBC013 has channels {list(BBBC013_CHANNELS)}; got {unknown}")
    return Plate.scan(root, BBBC013_PATTERN, {c: BBBC013_CHANNELS[c] for c in channels},
                      plate_map=bbbc013_plate_map(root))


#: What :func:`load_bbbc013` starts from: nuclei on the DNA channel, BBBC013's classes.
BBBC013_DEFAULTS = SamplingConfig(nuclei_channel="DNA", class_names=tuple(BBBC013_CLASSES))


def load_bbbc013(root: str | Path, config: SamplingConfig | None = None, *,
                 controls_only: bool = True, channels: Sequence[str] = ("GFP", "DNA"),
                 **overrides: Any) -> ImageSet:
    """Crops of the BBBC013 plate; labels 0 = cytoplasmic GFP (negative control),
    1 = nuclear GFP (positive control); groups = well.

    With ``controls_only=False`` the 72 dose-series wells come too, with label 0 and
    ``metadata["labelled"]`` False; ``metadata["well"|"dose"|"control"]`` are per-crop
    arrays for scoring by well. Nuclei are segmented on the DNA channel (read for
    segmentation even when not in ``channels``). Settings: ``config`` (default
    :data:`BBBC013_DEFAULTS`) and keyword overrides of its fields, as
    :meth:`Plate.sample` (``crop_size=48, downsample=2, per_image=24, seed=0`` ...):
    ``crop_size`` and ``downsample`` default to the median nucleus size (48 px at 2x);
    every object is used up to ``max_objects`` (``per_image`` caps each field).
    """
    c = SamplingConfig.build(config, {"labelled_only": controls_only, **overrides},
                             base=BBBC013_DEFAULTS)
    plate = open_bbbc013(root, channels)
    if "DNA" not in plate.channel_names and (c.crops == "nuclei" or c.masks
                                             or c.crop_size is None or c.downsample is None):
        both = open_bbbc013(root, [*plate.channel_names, "DNA"])
        data = load_from(both, c)
        out = data.select_channels(list(plate.channel_names))
        out.metadata = data.metadata
        return out
    return load_from(plate, c)


def load_from(plate: Plate, config: SamplingConfig) -> ImageSet:
    """Crops of a BBBC013 ``plate`` (the nuclei channel only when the plate has it)."""
    if config.nuclei_channel not in plate.channel_names:
        config = replace(config, nuclei_channel=None)
    return plate.sample(config)
