"""The images a batch run works through: one record per field of view of a plate.

Records are made from an :class:`~napari_attribution.io.plate.Plate`
(:func:`records_from_plate`); each is small and picklable so that a Dask task carries
only the records it processes, and is read on the worker exactly as the plate reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError


@dataclass(frozen=True)
class ImageRecord:
    """One field of view: id, well, site, its file(s) and how to read them.

    ``paths`` holds one file per channel, or one multichannel file when
    ``multichannel``; ``info`` carries the plate map's facts about the well
    (label, dose, control) into the tables.
    """

    id: str
    well: str
    site: str
    paths: tuple[str, ...]
    channel_names: tuple[str, ...] = ()
    multichannel: bool = False
    axes: str | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "well": self.well, "site": self.site,
                "paths": list(self.paths), "channel_names": list(self.channel_names),
                "multichannel": self.multichannel, "axes": self.axes, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(str(d["id"]), str(d["well"]), str(d["site"]), tuple(d["paths"]),
                   tuple(d.get("channel_names", ())), bool(d.get("multichannel", False)),
                   d.get("axes"), dict(d.get("info") or {}))


def records_from_ngff_plate(path: str | Path) -> list[ImageRecord]:
    """One record per field of an OME-Zarr (NGFF 0.4) HCS plate: id ``<well>_f<field>``,
    channels from the first field's omero labels; each field is read as one
    multichannel image (lazily when large)."""
    from ..io.ngff import read_ngff_plate

    return [ImageRecord(id=f"{f.well}_f{f.field}", well=f.well, site=f.field,
                        paths=(str(f.path),), channel_names=f.channel_names,
                        multichannel=True)
            for f in read_ngff_plate(path)]


def records_from_plate(plate: Any) -> list[ImageRecord]:
    """One record per field of view of a :class:`~napari_attribution.io.plate.Plate`."""
    fields = getattr(plate, "fields", None)
    if fields is None:
        raise InputError(f"expected a plate dataset (io.plate.Plate); got "
                         f"{type(plate).__name__}")
    pm = getattr(plate, "plate_map", None)
    out = []
    for fov in fields:
        info: dict[str, Any] = {}
        if pm is not None and fov.well in pm:
            w = pm[fov.well]
            info = {"label": w.label, "dose": None if w.dose != w.dose else float(w.dose),
                    "control": int(w.control)}
        out.append(ImageRecord(
            id=f"{fov.well}_s{fov.site}", well=fov.well, site=str(fov.site),
            paths=tuple(str(p) for p in fov.files),
            channel_names=tuple(plate.channel_names),
            multichannel=bool(plate.multichannel_files), axes=plate.axes, info=info))
    return out


def read_record(record: ImageRecord, downsample: int = 1) -> np.ndarray:
    """(C, H, W) float32 pixels of one record, read as its plate reads them, block-averaged
    by ``downsample`` (as :meth:`Plate.sample` does for training crops)."""
    from ..io.plate import FieldOfView, Plate, block_mean

    fov = FieldOfView(record.well, record.site, tuple(Path(p) for p in record.paths))
    plate = Plate(Path(record.paths[0]).parent, [fov], list(record.channel_names), None,
                  "", record.multichannel, record.axes)
    try:
        img = plate.read_field(fov)
    except InputError as err:
        raise InputError(f"image {record.id}: {err}") from None
    except FileNotFoundError as err:
        raise InputError(f"image {record.id}: file not found: {err.filename}") from None
    if downsample == 1:
        return img
    if min(img.shape[1:]) < downsample:
        raise InputError(f"image {record.id} is {img.shape[1]}x{img.shape[2]} pixels, "
                         f"smaller than the downsampling factor {downsample}")
    return block_mean(img, downsample)


def open_record(record: ImageRecord) -> Any:
    """(C, H, W) raw pixels of one record as the plate reads them, without reading them
    all: a Dask array read chunk by chunk for images over the readers' lazy threshold
    (``io.image_data.LAZY_ABOVE_BYTES``), else a NumPy array. Z/T are reduced by maximum."""
    from ..io.readers import read_image

    try:
        if record.multichannel:
            arr = read_image(record.paths[0], axes=record.axes, lazy=True).as_chw("max")
        else:
            planes = []
            for p in record.paths:
                img = read_image(p, lazy=True)
                if img.n_channels != 1:
                    raise InputError(f"{p} holds {img.n_channels} channels; one file per "
                                     "channel expects single-channel images")
                planes.append(img.as_chw("max")[0])
            if any(q.shape != planes[0].shape for q in planes):
                raise InputError(f"the channel files have different shapes "
                                 f"{[tuple(q.shape) for q in planes]}")
            if all(isinstance(q, np.ndarray) for q in planes):
                arr = np.stack(planes)
            else:
                import dask.array as da

                arr = da.stack([da.asarray(q) for q in planes])
    except InputError as err:
        raise InputError(f"image {record.id}: {err}") from None
    if record.channel_names and arr.shape[0] != len(record.channel_names):
        raise InputError(f"image {record.id}: {record.paths[0]} has {arr.shape[0]} "
                         f"channel(s); the plate has {len(record.channel_names)}")
    return arr


def record_shape(record: ImageRecord, downsample: int = 1) -> tuple[int, int, int]:
    """(C, H, W) of a record after ``downsample``, without reading a large image."""
    c, h, w = (int(n) for n in open_record(record).shape)
    if min(h, w) < downsample:
        raise InputError(f"image {record.id} is {h}x{w} pixels, smaller than the "
                         f"downsampling factor {downsample}")
    return c, h // downsample, w // downsample


def check_records(records: Sequence[ImageRecord], n_channels: int | None = None,
                  fill_missing: bool | None = None) -> None:
    """Raise :class:`InputError` for an empty list, duplicate ids, missing files, OME-Zarr
    images with chunks missing on disk (all listed in one error; with ``fill_missing``
    or ``NAPARI_ATTRIBUTION_ALLOW_MISSING_CHUNKS=1`` one warning instead, see
    ``io.ngff.report_holes``) or a channel count other than the model's (listing the
    first few offenders)."""
    if not records:
        raise InputError("no images to process (empty plate or no file matched the pattern)")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"image ids must be unique; repeated: {dup[:5]}")
    # an OME-Zarr image is a folder
    missing = [p for r in records for p in r.paths if not Path(p).exists()]
    if missing:
        raise InputError(f"{len(missing)} image file(s) are missing, e.g. "
                         f"{', '.join(missing[:5])}")
    from ..io.ngff import image_holes, is_ngff_image, report_holes

    holes = []  # OME-Zarr images with chunks missing: refused before any work
    for r in records:
        for path in r.paths:
            if is_ngff_image(path):
                n_missing, expected = image_holes(path)
                if n_missing:
                    holes.append((f"{r.id} ({path})", n_missing, expected))
    report_holes("image(s)", holes, fill_missing)
    if n_channels is not None:
        bad = [r.id for r in records
               if r.channel_names and len(r.channel_names) != n_channels]
        if bad:
            raise InputError(f"{len(bad)} image(s) do not have {n_channels} channels (the "
                             f"model's), e.g. {bad[:5]}: the plate has channels "
                             f"{list(records[0].channel_names)}")
