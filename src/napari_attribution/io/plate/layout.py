"""The plate itself: fields of view found in a folder by a filename pattern.

A :class:`Plate` is found by matching every file name in a folder against a regular
expression with named groups ``well`` (or ``row`` and ``col``), optionally ``site`` and
``channel``; without a ``channel`` group each file is one multichannel image. Cutting
crops is :mod:`.crops`' business (:meth:`Plate.sample`, :meth:`Plate.iter_crops`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.data.dataset import ImageSet
from ...core.runtime.errors import InputError
from ..image_formats import FORMATS, format_of
from .config import SamplingConfig
from .plate_map import PlateMap, class_key, normalise_well, read_plate_map

_UNSET: Any = object()  # an argument not given


@dataclass(frozen=True)
class FieldOfView:
    """One field of view: a well, a site and its file(s) (one per channel, or one)."""

    well: str
    site: str
    files: tuple[Path, ...]



@dataclass
class Plate:
    """A folder of images found by a filename pattern, with an optional plate map."""

    root: Path
    fields: list[FieldOfView]
    channel_names: list[str]
    plate_map: PlateMap | None = None
    pattern: str = ""
    multichannel_files: bool = False
    axes: str | None = None

    @classmethod
    def scan(
        cls,
        root: str | Path,
        pattern: str,
        channels: Mapping[str, str] | Sequence[str] | None = None,
        plate_map: PlateMap | str | Path | None = None,
        axes: str | None = None,
        channel_names: Sequence[str] | None = None,
    ) -> Plate:
        """Find the fields of view under ``root`` (files only at the top level).

        ``pattern`` is a regex searched in each file name with groups ``well`` or
        ``row`` + ``col``, optional ``site`` and ``channel``. ``channels`` maps channel
        name -> the ``channel`` group's value (``{"GFP": "1", "DNA": "2"}``) and picks
        and orders channels; a list uses the values as names; default: all found, sorted.
        For multichannel files (no ``channel`` group) ``channel_names`` names the channels
        and ``axes`` overrides the stored axes (e.g. ``"YXC"``).
        """
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"plate folder not found: {root}")
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise InputError(f"bad filename pattern {pattern!r}: {err}") from None
        groups = set(rx.groupindex)
        if "well" not in groups and not {"row", "col"} <= groups:
            raise InputError(f"filename pattern {pattern!r} needs a named group 'well' or "
                             "groups 'row' and 'col'")
        has_channel = "channel" in groups
        found: dict[tuple[str, str], dict[str, Path]] = {}
        for p in sorted(root.iterdir()):
            m = rx.search(p.name)
            if not m or not (p.is_file() or _is_image_folder(p)):
                continue
            g = m.groupdict()
            well = normalise_well(g["well"]) if g.get("well") else \
                normalise_well(g["row"], g["col"])
            site = g.get("site") or "1"
            key = g.get("channel") or "" if has_channel else ""
            slot = found.setdefault((well, site), {})
            if key in slot:
                raise InputError(f"{p} and {slot[key]} are both well {well}, site {site}"
                                 f"{', channel ' + key if key else ''}; make the filename "
                                 "pattern tell them apart")
            slot[key] = p
        if not found:
            raise InputError(f"no file in {root} matches the filename pattern {pattern!r}")

        if has_channel:
            all_keys = sorted({k for slot in found.values() for k in slot}, key=class_key)
            if channels is None:
                names, keys = list(all_keys), list(all_keys)
            elif isinstance(channels, Mapping):
                names, keys = [str(n) for n in channels], [str(v) for v in channels.values()]
            else:
                names, keys = [str(c) for c in channels], [str(c) for c in channels]
            unknown = [k for k in keys if k not in all_keys]
            if unknown:
                raise InputError(f"channel(s) {unknown} not found in {root}; file names give "
                                 f"channels {all_keys}")
            fields = []
            for (well, site), slot in sorted(found.items()):
                missing = [k for k in keys if k not in slot]
                if missing:
                    have = ", ".join(str(p.name) for p in slot.values())
                    raise InputError(f"well {well} site {site} has {len(slot)} channel "
                                     f"file(s) ({have}) but channel(s) {missing} are missing; "
                                     "every well needs the same channels")
                fields.append(FieldOfView(well, site, tuple(slot[k] for k in keys)))
            multi = False
        else:
            fields = [FieldOfView(w, s, (slot[""],)) for (w, s), slot in sorted(found.items())]
            counts = {}
            for f in fields:
                counts[f.files[0]] = probe_channels(f.files[0], axes)
            first = fields[0].files[0]
            for path, n in counts.items():
                if n != counts[first]:
                    raise InputError(f"{path} has {n} channel(s) but {first} has "
                                     f"{counts[first]}; every well needs the same channels")
            n_c = counts[first]
            if channel_names is not None and len(channel_names) != n_c:
                raise InputError(f"{len(channel_names)} channel names given; {first} has "
                                 f"{n_c} channels")
            names = list(channel_names) if channel_names is not None else \
                _stored_channel_names(first, axes, n_c)
            multi = True

        pm = plate_map if isinstance(plate_map, PlateMap) or plate_map is None else \
            read_plate_map(plate_map)
        plate = cls(root, fields, names, pm, pattern, multi, axes)
        if pm is not None:
            plate._check_plate_map()
        return plate

    def _check_plate_map(self) -> None:
        assert self.plate_map is not None
        have = {f.well for f in self.fields}
        absent = sorted(set(self.plate_map.wells) - have)
        if absent:
            shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise InputError(f"plate map {self.plate_map.path or ''} names {len(absent)} "
                             f"well(s) with no image in {self.root}: {shown}")

    @property
    def wells(self) -> list[str]:
        return sorted({f.well for f in self.fields})

    def read_field(self, fov: FieldOfView) -> np.ndarray:
        """(C, H, W) float32 pixels of one field of view (Z/T reduced by maximum)."""
        from ..readers import read_channel_files, read_image

        if self.multichannel_files:
            img = read_image(fov.files[0], axes=self.axes)
            arr = img.as_chw("max")
            if arr.shape[0] != len(self.channel_names):
                raise InputError(f"{fov.files[0]} has {arr.shape[0]} channel(s); the plate "
                                 f"has {len(self.channel_names)}")
        else:
            arr = read_channel_files(fov.files, self.channel_names).as_chw("max")
        return arr.astype(np.float32, copy=False)

    def iter_fields(self, wells: Sequence[str] | None = None
                    ) -> Iterator[tuple[FieldOfView, np.ndarray]]:
        """Yield (field, pixels) one at a time (only ``wells`` if given)."""
        keep = None if wells is None else {normalise_well(w) for w in wells}
        for fov in self.fields:
            if keep is None or fov.well in keep:
                yield fov, self.read_field(fov)

    def sample(self, config: SamplingConfig | str | None = None, crop_size: Any = _UNSET,
               per_image: Any = _UNSET, *, labels: Any = None, objects: Any = None,
               progress: Any = None, **overrides: Any) -> ImageSet:
        """Crops of the plate as an :class:`~napari_attribution.core.data.dataset.ImageSet`.

        ``config``: a :class:`~.config.SamplingConfig` (or a crop mode, ``"grid"``);
        keyword ``overrides`` of its fields (``crop_size`` and ``per_image`` may also
        follow the crop mode positionally, as before the config); ``labels``,
        ``objects``, ``progress`` as in
        :func:`~napari_attribution.io.plate.sampling.sample_plate`, which documents every
        option: crop mode, size and downsampling (from the median nucleus size when not
        given), every object up to a budget (``max_objects``, ``time_budget``;
        ``per_image`` caps each field), the nuclei channel (chosen by name when not
        given), per-field normalisation (default), label images, per-object labels
        (``objects`` table, ``label_rule``) and the held-out unit (``split_by``,
        ``val_wells``).
        """
        from .sampling import sample_plate

        return sample_plate(self, config, labels=labels, objects=objects, progress=progress,
                            **_positional(crop_size, per_image), **overrides)

    def iter_crops(self, config: SamplingConfig | str | None = None, crop_size: Any = _UNSET,
                   per_image: Any = _UNSET, *, labels: Any = None, progress: Any = None,
                   **overrides: Any) -> Iterator[Any]:
        """Yield the crops of one field of view at a time (:class:`.crops.FieldCrops`);
        same settings as :meth:`sample` (default: every well, 64 crops per field)."""
        from .crops import iter_plate_crops

        return iter_plate_crops(self, config, labels=labels, progress=progress,
                                **_positional(crop_size, per_image), **overrides)

    def _channel_index(self, channel: str | int | None) -> int:
        """Index of ``channel`` (a name, case-insensitive, or a number); None: the
        nuclei channel chosen by name (:func:`...core.data.segmentation.choose_nuclei_channel`:
        DNA, Hoechst, DAPI ..., else the last channel)."""
        from ...core.data.segmentation import choose_nuclei_channel

        return choose_nuclei_channel(self.channel_names, channel)[0]


def _positional(crop_size: Any, per_image: Any) -> dict[str, Any]:
    """``crop_size`` and ``per_image`` when given positionally (the order before
    :class:`SamplingConfig`: crop mode, crop size, crops per field)."""
    return {k: v for k, v in (("crop_size", crop_size), ("per_image", per_image))
            if v is not _UNSET}


def _is_image_folder(path: Path) -> bool:
    """An image stored as a folder (OME-Zarr), which plates accept beside files."""
    from ..ngff import is_ngff_image

    return format_of(path) is FORMATS["ome-zarr"] and is_ngff_image(path)


def probe_channels(path: Path, axes: str | None = None) -> int:
    """Number of channels of an image file, from its header only (TIFF), or from the
    metadata the reader entry point reads lazily (OME-Zarr, CZI/ND2/LIF via bioio)."""
    from ..readers import TIFF_SUFFIXES, _resolve_axes, read_image

    if not str(path).lower().endswith(TIFF_SUFFIXES):
        img = read_image(path, axes=axes, lazy=True)  # no pixel is read
        return img.n_channels
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, stored = tuple(series.shape), series.axes
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as err:
        raise InputError(f"cannot read {path} as TIFF: {err}") from None
    new_shape, ax = _resolve_axes(shape, stored, path, axes)
    return int(new_shape[ax.index("C")]) if "C" in ax else 1


def _stored_channel_names(path: Path, axes: str | None, n: int) -> list[str]:
    from ..readers import read_image

    names = read_image(path, axes=axes, lazy=True).channel_names
    return names if len(names) == n else [f"ch{i}" for i in range(n)]


