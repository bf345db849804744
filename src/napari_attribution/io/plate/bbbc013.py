"""BBBC013 (Broad Bioimage Benchmark Collection): a 96-well plate of U2OS cells with a
GFP-tagged FOXO1A fusion, channels GFP and DNA, controls in the plate map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...core.data.dataset import ImageSet
from ...core.runtime.errors import InputError
from .layout import Plate
from .plate_map import PlateMap, read_plate_map
from .sampling import DEFAULT_MAX_OBJECTS

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


def load_bbbc013(
    root: str | Path,
    controls_only: bool = True,
    crop_size: int | None = None,
    crops: str = "nuclei",
    per_image: int | None = None,
    downsample: int | None = None,
    channels: Sequence[str] = ("GFP", "DNA"),
    seed: int = 0,
    wells: Sequence[str] | None = None,
    normalization: str = "per_field",
    masks: bool = True,
    split_by: str = "auto",
    nuclei_channel: str | None = "DNA",
    max_objects: int | None = DEFAULT_MAX_OBJECTS,
) -> ImageSet:
    """Crops of the BBBC013 plate; labels 0 = cytoplasmic GFP (negative control),
    1 = nuclear GFP (positive control); groups = well.

    With ``controls_only=False`` the 72 dose-series wells come too, with label 0 and
    ``metadata["labelled"]`` False; ``metadata["well"|"dose"|"control"]`` are per-crop
    arrays for scoring by well. Nuclei are segmented on the DNA channel (read for
    segmentation even when not in ``channels``). ``crop_size`` and ``downsample`` default
    to the median nucleus size (48 px at 2x); every object is used up to ``max_objects``
    (``per_image`` caps each field); other options as :meth:`Plate.sample`.
    """
    plate = open_bbbc013(root, channels)
    if "DNA" not in plate.channel_names and (crops == "nuclei" or masks
                                             or crop_size is None or downsample is None):
        both = open_bbbc013(root, [*plate.channel_names, "DNA"])
        data = load_from(both, controls_only, crop_size, crops, per_image, downsample, seed,
                         wells, normalization, masks, split_by, nuclei_channel, max_objects)
        out = data.select_channels(list(plate.channel_names))
        out.metadata = data.metadata
        return out
    return load_from(plate, controls_only, crop_size, crops, per_image, downsample, seed,
                     wells, normalization, masks, split_by, nuclei_channel, max_objects)


def load_from(plate: Plate, controls_only: bool, crop_size: int | None, crops: str,
              per_image: int | None, downsample: int | None, seed: int, wells,
              normalization: str, masks: bool, split_by: str,
              nuclei_channel: str | None = "DNA",
              max_objects: int | None = DEFAULT_MAX_OBJECTS) -> ImageSet:
    nuc = nuclei_channel if nuclei_channel in plate.channel_names else None
    return plate.sample(crops=crops, crop_size=crop_size, per_image=per_image, wells=wells,
                        labelled_only=controls_only, downsample=downsample,
                        nuclei_channel=nuc, masks=masks, normalization=normalization,
                        class_names=BBBC013_CLASSES, seed=seed, split_by=split_by,
                        max_objects=max_objects)
