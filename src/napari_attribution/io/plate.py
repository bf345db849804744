"""Plate / folder datasets: images named by well, site and channel plus a plate-map CSV.

A :class:`Plate` is found by matching every file name in a folder against a regular
expression with named groups ``well`` (or ``row`` and ``col``), optionally ``site`` and
``channel``; without a ``channel`` group each file is one multichannel image. The plate
map (:class:`PlateMap`) gives each well a class, a dose and a control flag.

:meth:`Plate.sample` turns the plate into an :class:`~napari_attribution.core.data.ImageSet`
of crops: random crops, a grid of tiles or crops centred on nuclei segmented on a chosen
channel. Fields of view are read one at a time, cropped and dropped, so a plate never
sits in memory as a whole. Per-crop facts (well, site, dose, control, position) are
arrays in ``ImageSet.metadata`` aligned with the images; :func:`take` subsets an
ImageSet keeping them aligned. ``groups`` is the well, so
:func:`~napari_attribution.core.splits.grouped_split` splits by well.

BBBC013 in one line::

    data = load_bbbc013("../shared/data/bbbc013")   # controls, 96 px crops on nuclei
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.data import ImageSet
from ..core.errors import InputError
from ..core.normalization import PercentileNormalizer

CROP_MODES = ("nuclei", "grid", "random")
NORMALIZATIONS = ("none", "per_image", "per_plate")
BBBC013_PATTERN = r"Channel(?P<channel>\d+)-(?P<site>\d+)-(?P<row>[A-Z]+)-(?P<col>\d+)\.tif$"
BBBC013_CHANNELS = {"GFP": "1", "DNA": "2"}
BBBC013_CLASSES = ["cytoplasmic GFP", "nuclear GFP"]
_WELL_RE = re.compile(r"^\s*([A-Za-z]+)[-_ ]?0*(\d+)\s*$")


def normalise_well(well: str, col: str | int | None = None) -> str:
    """``'a1'``, ``'A01'``, ``('A', '1')`` -> ``'A01'``."""
    text = f"{well}{int(col):02d}" if col is not None and str(col).strip().isdigit() \
        else str(well)
    m = _WELL_RE.match(text)
    if not m:
        raise InputError(f"{text!r} is not a well name like A01")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


# ----------------------------------------------------------------------------- plate map


@dataclass(frozen=True)
class WellInfo:
    """What the plate map says about one well (``label`` None = no class)."""

    well: str
    label: str | None = None
    dose: float = float("nan")
    control: int = 0


@dataclass
class PlateMap:
    """Well -> class, dose and control, read from a CSV."""

    wells: dict[str, WellInfo]
    path: Path | None = None

    @property
    def class_names(self) -> list[str]:
        """Class labels present, numbers in numeric order, then names alphabetically."""
        labels = {w.label for w in self.wells.values() if w.label is not None}
        return sorted(labels, key=_class_key)

    def __getitem__(self, well: str) -> WellInfo:
        return self.wells[normalise_well(well)]

    def __contains__(self, well: str) -> bool:
        return normalise_well(well) in self.wells


def _class_key(s: str) -> tuple:
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


def read_plate_map(
    path: str | Path,
    well_column: str | None = "well",
    row_column: str | None = None,
    col_column: str | None = None,
    class_column: str | None = "class",
    dose_column: str | None = "dose",
    control_column: str | None = "control",
    control_classes: Mapping[int, str] | None = None,
) -> PlateMap:
    """Read a plate-map CSV: one row per well.

    The well is ``well_column`` (``A01``, ``A1``) or ``row_column`` + ``col_column``.
    ``class_column``, ``dose_column`` and ``control_column`` are optional (missing
    columns are simply absent); an empty class cell leaves the well unlabelled.
    ``control_classes`` (e.g. ``{-1: "negative", 1: "positive"}``) derives the class from
    the control flag for wells without a class.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"plate map not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read plate map {path}: {err}") from None
    if not rows:
        raise InputError(f"plate map {path} has no rows")
    cols = set(rows[0])
    use_rc = row_column is not None and col_column is not None
    needed = {row_column, col_column} if use_rc else {well_column}
    if not needed <= cols:
        raise InputError(f"plate map {path} lacks column(s) {sorted(needed - cols)}; it has "
                         f"{sorted(cols)}")
    wells: dict[str, WellInfo] = {}
    for i, r in enumerate(rows, start=2):
        try:
            well = normalise_well(r[row_column], r[col_column]) if use_rc \
                else normalise_well(r[well_column])
            control = int(float(r[control_column])) if control_column in cols and \
                (r[control_column] or "").strip() else 0
            dose = float(r[dose_column]) if dose_column in cols and \
                (r[dose_column] or "").strip() else float("nan")
        except (InputError, ValueError) as err:
            raise InputError(f"plate map {path}, line {i}: {err}") from None
        label = (r.get(class_column) or "").strip() if class_column in cols else ""
        if not label and control_classes is not None:
            label = control_classes.get(control, "")
        if well in wells:
            raise InputError(f"plate map {path} lists well {well} twice (line {i})")
        wells[well] = WellInfo(well, label or None, dose, control)
    return PlateMap(wells, path)


# ----------------------------------------------------------------------------- the plate


@dataclass(frozen=True)
class FieldOfView:
    """One field of view: a well, a site and its file(s) (one per channel, or one)."""

    well: str
    site: str
    files: tuple[Path, ...]


@dataclass
class FieldCrops:
    """The crops of one field of view; ``corners`` are (y, x) in full-resolution pixels."""

    fov: FieldOfView
    index: int
    images: np.ndarray  # (n, C, h, w) float32
    masks: np.ndarray | None  # (n, h, w) bool nuclei masks
    corners: list[tuple[int, int]]
    info: WellInfo | None


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
    _last_settings: dict = field(default_factory=dict, repr=False)

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
            if not m or not p.is_file():
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
            all_keys = sorted({k for slot in found.values() for k in slot}, key=_class_key)
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
        from .readers import read_channel_files, read_image

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

    def sample(
        self,
        crops: str = "nuclei",
        crop_size: int = 96,
        per_image: int | None = 64,
        wells: Sequence[str] | None = None,
        labelled_only: bool = True,
        downsample: int = 1,
        nuclei_channel: str | int | None = None,
        masks: bool = True,
        normalization: str = "none",
        percentiles: tuple[float, float] = (1.0, 99.8),
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        progress: Callable[[int, int, str], Any] | None = None,
    ) -> ImageSet:
        """Crops of the plate as an :class:`ImageSet`; see the module docstring.

        ``crops``: ``"nuclei"`` (centred on segmented nuclei), ``"grid"`` (non-overlapping
        tiles) or ``"random"``; ``per_image`` caps crops per field (None = all nuclei / all
        tiles; required for random). ``labelled_only`` keeps wells with a class in the plate
        map; otherwise unlabelled wells get label 0 and ``metadata["labelled"]`` False.
        ``downsample`` shrinks fields by block averaging first (``crop_size`` is in
        downsampled pixels). ``nuclei_channel`` (name or index; default ``"DNA"`` if
        present, else the last channel) is segmented for ``"nuclei"`` and for ``masks``.
        ``normalization``: ``"none"`` (raw intensities; training fits its own), ``"per_image"``
        (percentiles of each field) or ``"per_plate"`` (percentiles fitted on up to 8
        fields); it is recorded in ``metadata["normalization"]``.
        """
        pm = self.plate_map
        names = list(class_names) if class_names is not None else \
            (pm.class_names if pm is not None else [])
        imgs, msks, labels, meta = [], [], [], _MetaLists()
        gen = self.iter_crops(crops, crop_size, per_image, wells, labelled_only, downsample,
                              nuclei_channel, masks, normalization, percentiles, seed, progress)
        for fc in gen:
            label_name = fc.info.label if fc.info is not None else None
            if label_name is not None and label_name not in names:
                raise InputError(f"well {fc.fov.well} has class {label_name!r}, not among "
                                 f"the class names {names}")
            imgs.extend(fc.images)
            if fc.masks is not None:
                msks.extend(fc.masks)
            for y, x in fc.corners:
                labels.append(names.index(label_name) if label_name is not None else 0)
                meta.add(fc.fov, fc.info, y, x, fc.index, label_name is not None)
        if not imgs:
            raise InputError(f"no crops found in {self.root} (no nuclei segmented?)")
        metadata = meta.arrays()
        metadata.update(self._last_settings)
        metadata["per_crop_keys"] = list(meta.keys)
        if len(names) < 2:
            names = names + [f"class{i}" for i in range(len(names), 2)]
        return ImageSet(images=np.stack(imgs), labels=np.asarray(labels, np.int64),
                        channel_names=list(self.channel_names), class_names=names,
                        groups=metadata["well"].copy(),
                        masks=np.stack(msks) if msks else None, metadata=metadata)

    def iter_crops(
        self,
        crops: str = "nuclei",
        crop_size: int = 96,
        per_image: int | None = 64,
        wells: Sequence[str] | None = None,
        labelled_only: bool = False,
        downsample: int = 1,
        nuclei_channel: str | int | None = None,
        masks: bool = True,
        normalization: str = "none",
        percentiles: tuple[float, float] = (1.0, 99.8),
        seed: int = 0,
        progress: Callable[[int, int, str], Any] | None = None,
    ) -> Iterator[FieldCrops]:
        """Yield the crops of one field of view at a time (:class:`FieldCrops`).

        Same options as :meth:`sample`; use it to score a whole plate (also wells without
        a class) without building one large array.
        """
        if crops not in CROP_MODES:
            raise InputError(f"unknown crop mode {crops!r}; choose one of {CROP_MODES}")
        if normalization not in NORMALIZATIONS:
            raise InputError(f"unknown normalisation {normalization!r}; choose one of "
                             f"{NORMALIZATIONS}")
        if crop_size < 4 or downsample < 1:
            raise InputError("crop_size must be at least 4 and downsample at least 1")
        if crops == "random" and not per_image:
            raise InputError("random crops need per_image (how many crops per field)")
        pm = self.plate_map
        fields = self.fields
        if wells is not None:
            keep = {normalise_well(w) for w in wells}
            fields = [f for f in fields if f.well in keep]
        if labelled_only:
            if pm is None:
                raise InputError("labelled crops need a plate map; pass plate_map= or "
                                 "labelled_only=False")
            fields = [f for f in fields if f.well in pm.wells and pm.wells[f.well].label]
        if not fields:
            raise InputError(f"no fields of view left to sample in {self.root} (check wells "
                             "and the plate map)")
        nuc_idx = self._channel_index(nuclei_channel)
        rng = np.random.default_rng(seed)
        normalizer = self._fit_normalizer(normalization, percentiles, fields, downsample,
                                          seed)
        self._last_settings = {
            "source": str(self.root), "pattern": self.pattern, "crops": crops,
            "crop_size": crop_size, "downsample": downsample, "seed": seed,
            "normalization": {"mode": normalization, "low": percentiles[0],
                              "high": percentiles[1],
                              **({"lo": normalizer.lo, "hi": normalizer.hi}
                                 if normalizer is not None and normalizer.lo else {}),
                              "applied_to": "whole fields before cropping"},
            "nuclei_channel": self.channel_names[nuc_idx],
        }
        for i, fov in enumerate(fields):
            if progress is not None:
                progress(i, len(fields), f"reading well {fov.well} site {fov.site}")
            field_px = self.read_field(fov)
            need_nuclei = crops == "nuclei" or masks
            nuc_labels = segment_nuclei(field_px[nuc_idx]) if need_nuclei else None
            if downsample > 1:
                field_px = block_mean(field_px, downsample)
            if normalizer is not None:
                field_px = normalizer(field_px)
            nuc_mask = None
            if nuc_labels is not None:
                nuc_mask = nuc_labels > 0
                if downsample > 1:
                    nuc_mask = block_mean(nuc_mask[None].astype(np.float32),
                                           downsample)[0] >= 0.5
            h, w = field_px.shape[-2:]
            if crop_size > min(h, w):
                raise InputError(f"crop size {crop_size} is larger than the field of view "
                                 f"{h}x{w} ({fov.files[0]})")
            corners = _crop_corners(crops, crop_size, per_image, (h, w), nuc_labels,
                                    downsample, rng)
            c = field_px.shape[0]
            images = np.empty((len(corners), c, crop_size, crop_size), np.float32)
            crop_masks = np.empty((len(corners), crop_size, crop_size), bool) \
                if masks and nuc_mask is not None else None
            for k, (y, x) in enumerate(corners):
                images[k] = field_px[:, y:y + crop_size, x:x + crop_size]
                if crop_masks is not None:
                    crop_masks[k] = nuc_mask[y:y + crop_size, x:x + crop_size]
            info = pm.wells.get(fov.well) if pm is not None else None
            del field_px, nuc_labels, nuc_mask
            yield FieldCrops(fov, i, images, crop_masks,
                             [(y * downsample, x * downsample) for y, x in corners], info)
        if progress is not None:
            progress(len(fields), len(fields), "done")

    def _channel_index(self, channel: str | int | None) -> int:
        if channel is None:
            return self.channel_names.index("DNA") if "DNA" in self.channel_names \
                else len(self.channel_names) - 1
        if isinstance(channel, str):
            if channel not in self.channel_names:
                raise InputError(f"no channel {channel!r}; the plate has "
                                 f"{self.channel_names}")
            return self.channel_names.index(channel)
        if not 0 <= int(channel) < len(self.channel_names):
            raise InputError(f"channel index {channel} out of range for "
                             f"{len(self.channel_names)} channels")
        return int(channel)

    def _fit_normalizer(self, mode: str, percentiles: tuple[float, float],
                        fields: list[FieldOfView], downsample: int, seed: int
                        ) -> PercentileNormalizer | None:
        if mode == "none":
            return None
        if mode == "per_image":
            return PercentileNormalizer("per_image", *percentiles)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(fields), min(8, len(fields)), replace=False)
        pixels = []
        for j in sorted(pick):
            px = self.read_field(fields[j])
            if downsample > 1:
                px = block_mean(px, downsample)
            flat = px.reshape(px.shape[0], -1)
            take_n = min(flat.shape[1], 250_000)
            pixels.append(flat[:, rng.choice(flat.shape[1], take_n, replace=False)])
        sample = np.concatenate(pixels, axis=1)[None, :, None, :]
        return PercentileNormalizer("per_dataset", *percentiles).fit(sample, seed=seed)


class _MetaLists:
    keys = ("well", "site", "dose", "control", "labelled", "field", "y", "x")

    def __init__(self) -> None:
        self.lists: dict[str, list] = {k: [] for k in self.keys}

    def add(self, fov: FieldOfView, info: WellInfo | None, y: int, x: int, field_i: int,
            labelled: bool) -> None:
        row = {"well": fov.well, "site": fov.site,
               "dose": info.dose if info is not None else float("nan"),
               "control": info.control if info is not None else 0,
               "labelled": labelled, "field": field_i, "y": y, "x": x}
        for k in self.keys:
            self.lists[k].append(row[k])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in self.lists.items()}
        out["dose"] = out["dose"].astype(float)
        out["control"] = out["control"].astype(np.int64)
        out["labelled"] = out["labelled"].astype(bool)
        return out


def take(data: ImageSet, index: np.ndarray) -> ImageSet:
    """``data.subset(index)`` that also slices the per-crop metadata arrays."""
    index = np.asarray(index)
    out = data.subset(index)
    for k in data.metadata.get("per_crop_keys", []):
        out.metadata[k] = np.asarray(data.metadata[k])[index]
    return out


# ----------------------------------------------------------------------------- helpers


def probe_channels(path: Path, axes: str | None = None) -> int:
    """Number of channels of an image file, from its header only."""
    import tifffile

    from .readers import _resolve_axes

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, stored = tuple(series.shape), series.axes
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as err:
        raise InputError(f"cannot read {path} as TIFF: {err}") from None
    new_shape, ax = _resolve_axes(shape, stored, path, axes)
    return int(new_shape[ax.index("C")]) if "C" in ax else 1


def _stored_channel_names(path: Path, axes: str | None, n: int) -> list[str]:
    from .readers import read_image

    names = read_image(path, axes=axes).channel_names
    return names if len(names) == n else [f"ch{i}" for i in range(n)]


def block_mean(arr: np.ndarray, f: int) -> np.ndarray:
    """Average ``f`` x ``f`` blocks of the last two axes (edges that do not fit dropped)."""
    h, w = arr.shape[-2] // f * f, arr.shape[-1] // f * f
    a = arr[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // f, f, w // f, f).mean(axis=(-3, -1)).astype(
        np.float32)


def segment_nuclei(channel: np.ndarray, sigma: float = 2.0, min_area: int = 40,
                   min_distance: int = 10) -> np.ndarray:
    """Label nuclei in one channel: Gaussian blur, Otsu threshold, watershed split.

    Returns an int32 label image (0 = background).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    img = gaussian(np.asarray(channel, np.float32), sigma=sigma, preserve_range=True)
    if float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, np.int32)
    fg = img > threshold_otsu(img)
    fg = ndi.binary_fill_holes(fg)
    fg = remove_small_objects(fg, max_size=min_area - 1) if _skimage_max_size() else \
        remove_small_objects(fg, min_size=min_area)
    dist = ndi.distance_transform_edt(fg)
    cc, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=cc, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def _skimage_max_size() -> bool:
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


def _crop_corners(mode: str, size: int, per_image: int | None, shape: tuple[int, int],
                  nuc_labels: np.ndarray | None, downsample: int,
                  rng: np.random.Generator) -> list[tuple[int, int]]:
    h, w = shape
    if mode == "grid":
        corners = [(y, x) for y in range(0, h - size + 1, size)
                   for x in range(0, w - size + 1, size)]
    elif mode == "random":
        assert per_image is not None
        ys = rng.integers(0, h - size + 1, per_image)
        xs = rng.integers(0, w - size + 1, per_image)
        return [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)]
    else:
        from scipy import ndimage as ndi

        assert nuc_labels is not None
        n = int(nuc_labels.max())
        if n == 0:
            return []
        centres = np.asarray(ndi.center_of_mass(nuc_labels > 0, nuc_labels,
                                                np.arange(1, n + 1))) / downsample
        corners = [(int(np.clip(round(cy) - size // 2, 0, h - size)),
                    int(np.clip(round(cx) - size // 2, 0, w - size))) for cy, cx in centres]
    if per_image is not None and len(corners) > per_image:
        pick = np.sort(rng.choice(len(corners), per_image, replace=False))
        corners = [corners[i] for i in pick]
    return corners


# ----------------------------------------------------------------------------- BBBC013


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
    crop_size: int = 96,
    crops: str = "nuclei",
    per_image: int | None = 64,
    downsample: int = 1,
    channels: Sequence[str] = ("GFP", "DNA"),
    seed: int = 0,
    wells: Sequence[str] | None = None,
    normalization: str = "none",
    masks: bool = True,
) -> ImageSet:
    """Crops of the BBBC013 plate; labels 0 = cytoplasmic GFP (negative control),
    1 = nuclear GFP (positive control); groups = well.

    With ``controls_only=False`` the 72 dose-series wells come too, with label 0 and
    ``metadata["labelled"]`` False; ``metadata["well"|"dose"|"control"]`` are per-crop
    arrays for scoring by well. Nuclei are segmented on the DNA channel (needed in
    ``channels`` for ``crops="nuclei"`` or ``masks``).
    """
    plate = open_bbbc013(root, channels)
    nuc = "DNA" if "DNA" in plate.channel_names else None
    if nuc is None and (crops == "nuclei" or masks):
        return _load_with_external_nuclei(plate, controls_only, crop_size, crops,
                                          per_image, downsample, seed, wells, normalization,
                                          masks)
    return plate.sample(crops=crops, crop_size=crop_size, per_image=per_image, wells=wells,
                        labelled_only=controls_only, downsample=downsample,
                        nuclei_channel=nuc, masks=masks, normalization=normalization,
                        class_names=BBBC013_CLASSES, seed=seed)


def _load_with_external_nuclei(plate: Plate, controls_only: bool,
                               crop_size: int, crops: str, per_image: int | None,
                               downsample: int, seed: int, wells, normalization: str,
                               masks: bool) -> ImageSet:
    """Sample with the DNA channel for nuclei, then keep only the requested channels."""
    both = Plate.scan(plate.root, plate.pattern,
                      {**{c: BBBC013_CHANNELS[c] for c in plate.channel_names},
                       "DNA": BBBC013_CHANNELS["DNA"]}, plate_map=plate.plate_map)
    data = both.sample(crops=crops, crop_size=crop_size, per_image=per_image, wells=wells,
                       labelled_only=controls_only, downsample=downsample,
                       nuclei_channel="DNA", masks=masks, normalization=normalization,
                       class_names=BBBC013_CLASSES, seed=seed)
    out = data.select_channels(list(plate.channel_names))
    out.metadata = data.metadata
    return out
