"""Cutting a plate into crops: settings resolved once, then one field of view at a time.

:func:`resolve_settings` fixes everything before any crop is cut (crop size and
downsampling, from the median nucleus size when not given; normalisation; where nuclei
labels come from) into a :class:`CropSettings` that is recorded in the data's metadata
and so in the model bundle. :func:`iter_plate_crops` yields :class:`FieldCrops`;
:func:`sample_plate` gathers them into an :class:`~napari_attribution.core.data.ImageSet`
with labels from the plate map, an object table or a marker rule, and groups for the
held-out unit (:mod:`napari_attribution.core.splits`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.data import ImageSet
from ...core.errors import InputError
from ...core.normalization import PercentileNormalizer, canonical_mode
from ...core.segmentation import crop_geometry, median_diameter, object_means
from ...core.splits import SPLIT_UNITS, choose_split_unit, spatial_groups
from .labels import LabelsInput, LabelSource
from .objects import LabelRule, ObjectTable, parse_label_rule, read_objects
from .plate_map import WellInfo, normalise_well, site_key

if TYPE_CHECKING:
    from .layout import FieldOfView, Plate

CROP_MODES = ("nuclei", "grid", "random")
#: Normalisations a plate applies to whole fields before cropping (``per_crop`` is
#: training's: sample raw, train with ``normalization="per_crop"``).
NORMALIZATIONS = ("per_field", "per_dataset", "none")
_GEOMETRY_FIELDS = 3  # fields segmented to measure the median nucleus size


@dataclass
class CropSettings:
    """How crops are cut; ``record()`` goes into ``ImageSet.metadata`` and the bundle."""

    crops: str
    crop_size: int
    downsample: int
    per_image: int | None
    nuclei_channel: str
    masks: bool
    normalization: str
    percentiles: tuple[float, float]
    seed: int
    segmentation: str
    nucleus_diameter: float | None = None
    geometry: str = "given"
    normalizer: PercentileNormalizer | None = field(default=None, repr=False)

    def record(self, plate: Plate) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("normalizer", "percentiles")}
        norm: dict[str, Any] = {"mode": self.normalization, "low": self.percentiles[0],
                                "high": self.percentiles[1],
                                "applied_to": "whole fields after downsampling, before "
                                              "cropping"}
        if self.normalizer is not None and self.normalizer.lo:
            norm.update(lo=self.normalizer.lo, hi=self.normalizer.hi)
        d.update(source=str(plate.root), pattern=plate.pattern, normalization=norm)
        if d["nucleus_diameter"] is not None:
            d["nucleus_diameter"] = round(float(d["nucleus_diameter"]), 2)
        return d


@dataclass
class FieldCrops:
    """The crops of one field of view; ``corners`` are (y, x) in full-resolution pixels.

    With objects (a table or a label rule) ``object_labels`` are their class names from
    a table and ``object_means`` their mean raw intensity per channel (for a label rule).
    ``normalization`` says what was applied to the field before cropping, so that
    ``ModelBundle.predict_proba(field_crops)`` does not normalise twice.
    """

    fov: FieldOfView
    index: int
    images: np.ndarray  # (n, C, h, w) float32
    masks: np.ndarray | None  # (n, h, w) bool nuclei masks
    corners: list[tuple[int, int]]
    info: WellInfo | None
    field_shape: tuple[int, int] = (0, 0)
    object_labels: list[str] | None = None
    object_means: np.ndarray | None = None
    normalization: str = "none"


def resolve_settings(plate: Plate, fields: list[FieldOfView], crops: str = "nuclei",
                     crop_size: int | None = None, per_image: int | None = 64,
                     downsample: int | None = None, nuclei_channel: str | int | None = None,
                     masks: bool = True, normalization: str = "per_field",
                     percentiles: tuple[float, float] = (1.0, 99.8), seed: int = 0,
                     source: LabelSource | None = None) -> CropSettings:
    """Check the options and fill in what is derived (geometry, fitted normaliser)."""
    if crops not in CROP_MODES:
        raise InputError(f"unknown crop mode {crops!r}; choose one of {CROP_MODES}")
    mode = canonical_mode(normalization, context="field")
    if mode not in NORMALIZATIONS:
        raise InputError(f"a plate normalises whole fields: choose one of {NORMALIZATIONS}; "
                         "for per_crop sample with 'none' and train with per_crop")
    if (crop_size is not None and crop_size < 4) or (downsample is not None and downsample < 1):
        raise InputError("crop_size must be at least 4 and downsample at least 1")
    if crops == "random" and not per_image:
        raise InputError("random crops need per_image (how many crops per field)")
    source = source or LabelSource()
    nuc_idx = plate._channel_index(nuclei_channel)
    diameter, geometry = None, "given"
    if crop_size is not None and downsample is None:
        downsample = 1  # a crop size given alone is in full-resolution pixels
    if crop_size is None:
        lab = [source(f.well, f.site, plate.read_field(f)[nuc_idx])
               for f in fields[:_GEOMETRY_FIELDS]]
        diameter = median_diameter(lab)
        crop_size, downsample = crop_geometry(diameter, crop_size, downsample)
        geometry = (f"from the median nucleus diameter {diameter:.1f} px in "
                    f"{len(lab)} field(s)")
    settings = CropSettings(crops, int(crop_size), int(downsample), per_image,
                            plate.channel_names[nuc_idx], masks, mode,
                            tuple(percentiles), seed, source.name, diameter, geometry)
    settings.normalizer = _fit_normalizer(plate, settings, fields)
    return settings


def _fit_normalizer(plate: Plate, s: CropSettings, fields: list[FieldOfView]
                    ) -> PercentileNormalizer | None:
    if s.normalization == "none":
        return None
    if s.normalization == "per_field":
        return PercentileNormalizer("per_field", *s.percentiles)
    rng = np.random.default_rng(s.seed)
    pick = rng.choice(len(fields), min(8, len(fields)), replace=False)
    pixels = []
    for j in sorted(pick):
        px = plate.read_field(fields[j])
        if s.downsample > 1:
            px = block_mean(px, s.downsample)
        flat = px.reshape(px.shape[0], -1)
        take_n = min(flat.shape[1], 250_000)
        pixels.append(flat[:, rng.choice(flat.shape[1], take_n, replace=False)])
    sample = np.concatenate(pixels, axis=1)[None, :, None, :]
    return PercentileNormalizer("per_dataset", *s.percentiles).fit(sample, seed=s.seed)


def select_fields(plate: Plate, wells: Sequence[str] | None, labelled_only: bool
                  ) -> list[FieldOfView]:
    """The fields to sample: only ``wells`` if given, only labelled wells if asked."""
    pm = plate.plate_map
    fields = plate.fields
    if wells is not None:
        keep = {normalise_well(w) for w in wells}
        fields = [f for f in fields if f.well in keep]
    if labelled_only:
        if pm is None:
            raise InputError("labelled crops need a plate map; pass plate_map= or "
                             "labelled_only=False")
        fields = [f for f in fields if f.well in pm.wells and pm.wells[f.well].label]
    if not fields:
        raise InputError(f"no fields of view left to sample in {plate.root} (check wells "
                         "and the plate map)")
    return fields


def iter_plate_crops(plate: Plate, crops: str = "nuclei", crop_size: int | None = None,
                     per_image: int | None = 64, wells: Sequence[str] | None = None,
                     labelled_only: bool = False, downsample: int | None = None,
                     nuclei_channel: str | int | None = None, masks: bool = True,
                     normalization: str = "per_field",
                     percentiles: tuple[float, float] = (1.0, 99.8), seed: int = 0,
                     labels: LabelsInput = None, labels_pattern: str | None = None,
                     progress: Callable[[int, int, str], Any] | None = None,
                     ) -> Iterator[FieldCrops]:
    """Yield the crops of one field of view at a time; see :func:`sample_plate`."""
    fields = select_fields(plate, wells, labelled_only)
    source = LabelSource(labels, labels_pattern or plate.pattern)
    s = resolve_settings(plate, fields, crops, crop_size, per_image, downsample,
                         nuclei_channel, masks, normalization, percentiles, seed, source)
    yield from _iter(plate, fields, s, source, None, None, progress)


def _iter(plate: Plate, fields: list[FieldOfView], s: CropSettings, source: LabelSource,
          objects: dict[int, tuple[np.ndarray, list[str]]] | None, rule: LabelRule | None,
          progress: Callable[[int, int, str], Any] | None) -> Iterator[FieldCrops]:
    pm = plate.plate_map
    rng = np.random.default_rng(s.seed)
    nuc_idx = plate.channel_names.index(s.nuclei_channel)
    size, ds = s.crop_size, s.downsample
    for i, fov in enumerate(fields):
        if progress is not None:
            progress(i, len(fields), f"reading well {fov.well} site {fov.site}")
        raw = plate.read_field(fov)
        full_shape = raw.shape[-2:]
        need_nuclei = s.crops == "nuclei" or s.masks or rule is not None
        nuc_labels = source(fov.well, fov.site, raw[nuc_idx]) if need_nuclei else None
        table = objects.get(i) if objects is not None else None
        centres, names, means = None, None, None
        if table is not None:
            centres, names = table
            _check_inside(centres, full_shape, fov)
            if rule is not None:
                means = _means_at(raw, nuc_labels, centres, s.nucleus_diameter)
        elif rule is not None or (s.crops == "nuclei" and nuc_labels is not None):
            from ...core.segmentation import object_centres

            ids, centres = object_centres(nuc_labels)
            if rule is not None:
                means = object_means(raw, nuc_labels, ids)
        field_px = block_mean(raw, ds) if ds > 1 else raw
        del raw
        if s.normalizer is not None:
            field_px = s.normalizer(field_px)
        nuc_mask = None
        if nuc_labels is not None and s.masks:
            nuc_mask = nuc_labels > 0
            if ds > 1:
                nuc_mask = block_mean(nuc_mask[None].astype(np.float32), ds)[0] >= 0.5
        h, w = field_px.shape[-2:]
        if size > min(h, w):
            raise InputError(f"crop size {size} is larger than the field of view "
                             f"{h}x{w} ({fov.files[0]})")
        every = table is not None or rule is not None
        corners, pick = _crop_corners(s.crops, size, None if every else s.per_image, (h, w),
                                      centres, ds, rng)
        if names is not None:
            names = [names[k] for k in pick]
        if means is not None:
            means = means[pick]
        images = np.empty((len(corners), field_px.shape[0], size, size), np.float32)
        crop_masks = np.empty((len(corners), size, size), bool) if nuc_mask is not None \
            else None
        for k, (y, x) in enumerate(corners):
            images[k] = field_px[:, y:y + size, x:x + size]
            if crop_masks is not None:
                crop_masks[k] = nuc_mask[y:y + size, x:x + size]
        info = pm.wells.get(fov.well) if pm is not None else None
        yield FieldCrops(fov, i, images, crop_masks, [(y * ds, x * ds) for y, x in corners],
                         info, (int(full_shape[0]), int(full_shape[1])), names, means,
                         s.normalization)
    if progress is not None:
        progress(len(fields), len(fields), "done")


def _check_inside(centres: np.ndarray, shape: tuple[int, ...], fov: FieldOfView) -> None:
    h, w = shape
    out = (centres[:, 0] < 0) | (centres[:, 0] >= h) | (centres[:, 1] < 0) | \
        (centres[:, 1] >= w)
    if out.any():
        y, x = centres[out][0]
        raise InputError(f"{int(out.sum())} object(s) lie outside their image: e.g. x={x:g}, "
                         f"y={y:g} in well {fov.well} site {fov.site} ({fov.files[0].name}), "
                         f"which is {w}x{h} pixels (x, y are the column and row at full "
                         "resolution)")


def _means_at(raw: np.ndarray, nuc_labels: np.ndarray | None, centres: np.ndarray,
              diameter: float | None) -> np.ndarray:
    """Mean per channel of the object at each (y, x): the labelled object under the point,
    else a disc of the median nucleus radius around it."""
    h, w = raw.shape[-2:]
    r = max(3.0, (diameter or 10.0) / 2)
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((len(centres), raw.shape[0]))
    for k, (cy, cx) in enumerate(centres):
        lab = int(nuc_labels[int(cy), int(cx)]) if nuc_labels is not None else 0
        mask = nuc_labels == lab if lab > 0 else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        out[k] = raw[:, mask].mean(axis=1)
    return out


def _crop_corners(mode: str, size: int, per_image: int | None, shape: tuple[int, int],
                  centres: np.ndarray | None, downsample: int, rng: np.random.Generator
                  ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Top-left corners (downsampled pixels) and, for centred crops, which centres."""
    h, w = shape
    if centres is not None:
        c = np.asarray(centres, float).reshape(-1, 2) / downsample
        corners = [(int(np.clip(round(cy) - size // 2, 0, h - size)),
                    int(np.clip(round(cx) - size // 2, 0, w - size))) for cy, cx in c]
    elif mode == "grid":
        corners = [(y, x) for y in range(0, h - size + 1, size)
                   for x in range(0, w - size + 1, size)]
    elif mode == "random":
        assert per_image is not None
        ys = rng.integers(0, h - size + 1, per_image)
        xs = rng.integers(0, w - size + 1, per_image)
        return [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)], np.arange(per_image)
    else:
        corners = []
    pick = np.arange(len(corners))
    if per_image is not None and len(corners) > per_image:
        pick = np.sort(rng.choice(len(corners), per_image, replace=False))
        corners = [corners[i] for i in pick]
    return corners, pick


class _MetaLists:
    keys = ("well", "site", "dose", "control", "labelled", "field", "y", "x", "field_h",
            "field_w")

    def __init__(self) -> None:
        self.lists: dict[str, list] = {k: [] for k in self.keys}

    def add_field(self, fc: FieldCrops, labelled: bool) -> None:
        info = fc.info
        for y, x in fc.corners:
            row = {"well": fc.fov.well, "site": fc.fov.site,
                   "dose": info.dose if info is not None else float("nan"),
                   "control": info.control if info is not None else 0,
                   "labelled": labelled, "field": fc.index, "y": y, "x": x,
                   "field_h": fc.field_shape[0], "field_w": fc.field_shape[1]}
            for k in self.keys:
                self.lists[k].append(row[k])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in self.lists.items()}
        out["dose"] = out["dose"].astype(float)
        out["control"] = out["control"].astype(np.int64)
        out["labelled"] = out["labelled"].astype(bool)
        return out


def sample_plate(
    plate: Plate,
    crops: str = "nuclei",
    crop_size: int | None = None,
    per_image: int | None = 64,
    wells: Sequence[str] | None = None,
    labelled_only: bool = True,
    downsample: int | None = None,
    nuclei_channel: str | int | None = None,
    masks: bool = True,
    normalization: str = "per_field",
    percentiles: tuple[float, float] = (1.0, 99.8),
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    progress: Callable[[int, int, str], Any] | None = None,
    labels: LabelsInput = None,
    labels_pattern: str | None = None,
    objects: ObjectTable | str | Path | None = None,
    objects_columns: str | Mapping[str, str] | None = None,
    label_rule: str | LabelRule | None = None,
    split_by: str = "auto",
    val_wells: Sequence[str] | None = None,
) -> ImageSet:
    """Crops of ``plate`` as an ImageSet (labels, groups for the split, per-crop metadata).

    Crops: ``"nuclei"`` (centred on nuclei), ``"grid"`` (tiles) or ``"random"``;
    ``per_image`` caps crops per field (None = all; every object is kept with
    ``objects`` or ``label_rule``). ``crop_size`` is in downsampled pixels. Without
    ``crop_size`` it comes from the median nucleus diameter (crops ~6 diameters), and so
    does ``downsample`` unless given (a nucleus ~8 px after downsampling); a crop size
    given alone means ``downsample=1``. Both are recorded in ``metadata``.
    Nuclei: Otsu segmentation of ``nuclei_channel`` (default ``DNA`` if present, else
    the last channel), or ``labels`` made elsewhere (cellpose, stardist, napari): a dict
    ``{(well, site) or "A01_s1": array or file}``, a folder of label files matched by
    ``labels_pattern`` (default: the plate's pattern), or a callable(nuclei) -> labels.
    ``normalization``: ``"per_field"`` (default: percentiles of each field per channel),
    ``"per_dataset"`` (fitted on up to 8 fields) or ``"none"`` (raw; training may then
    normalise per crop or per dataset); recorded as ``metadata["normalization"]``.

    Labels: the plate map's class per well (``labelled_only`` keeps labelled wells;
    otherwise unlabelled wells get label 0 and ``metadata["labelled"]`` False); or
    ``objects``, a table with one row per object (see :mod:`.objects`; columns mapped by
    ``objects_columns``), crops centred on them; or ``label_rule`` such as
    ``"PH3>otsu"`` on the segmented objects (or on the table's objects).

    ``split_by`` sets ``groups``, the unit held out for validation: ``"well"``,
    ``"field"``, ``"half"``, ``"quadrant"`` or ``"auto"`` (well when every class has two
    wells, else a spatial unit with a warning in ``metadata["warnings"]``).
    ``val_wells`` fixes the validation wells (``metadata["val_groups"]``).
    """
    table = objects if isinstance(objects, ObjectTable) or objects is None else \
        read_objects(objects, objects_columns, need_label=label_rule is None)
    rule = label_rule if isinstance(label_rule, LabelRule) or label_rule is None else \
        parse_label_rule(label_rule, plate.channel_names)
    pm = plate.plate_map
    by_object = table is not None or rule is not None
    if table is not None and crops != "nuclei":
        raise InputError("an object table centres crops on its objects; use crops='nuclei'")
    fields = select_fields(plate, wells, labelled_only and not by_object)
    per_field = _assign_objects(plate, fields, table) if table is not None else None
    if per_field is not None:
        fields = [f for i, f in enumerate(fields) if i in per_field]
        per_field = {k: per_field[i] for k, i in enumerate(sorted(per_field))}
    source = LabelSource(labels, labels_pattern or plate.pattern)
    s = resolve_settings(plate, fields, crops, crop_size, per_image, downsample,
                         nuclei_channel, masks, normalization, percentiles, seed, source)
    if rule is not None:
        names = rule.class_names
    elif table is not None:
        names = list(class_names) if class_names is not None else table.class_names
    else:
        names = list(class_names) if class_names is not None else \
            (pm.class_names if pm is not None else [])
    imgs, msks, labels_out, means, meta = [], [], [], [], _MetaLists()
    for fc in _iter(plate, fields, s, source, per_field, rule, progress):
        imgs.extend(fc.images)
        if fc.masks is not None:
            msks.extend(fc.masks)
        if fc.object_means is not None:
            means.append(fc.object_means)
        if rule is not None:
            labels_out += [0] * len(fc.corners)
            meta.add_field(fc, True)
            continue
        if fc.object_labels is not None:
            unknown = sorted(set(fc.object_labels) - set(names))
            if unknown:
                raise InputError(f"object table has class(es) {unknown}, not among the "
                                 f"class names {names}")
            labels_out += [names.index(n) for n in fc.object_labels]
            meta.add_field(fc, True)
            continue
        label_name = fc.info.label if fc.info is not None else None
        if label_name is not None and label_name not in names:
            raise InputError(f"well {fc.fov.well} has class {label_name!r}, not among "
                             f"the class names {names}")
        labels_out += [names.index(label_name) if label_name is not None else 0] \
            * len(fc.corners)
        meta.add_field(fc, label_name is not None)
    if not imgs:
        raise InputError(f"no crops found in {plate.root} (no nuclei segmented?)")
    metadata: dict[str, Any] = meta.arrays()
    metadata.update(s.record(plate))
    metadata["per_crop_keys"] = list(meta.keys)
    metadata["warnings"] = []
    y = np.asarray(labels_out, np.int64)
    if rule is not None:
        all_means = np.concatenate(means)[:, plate.channel_names.index(rule.channel)]
        y, thr = rule.apply(all_means)
        metadata.update(label_rule=str(rule), label_threshold=thr)
        metadata["object_mean"] = all_means
        metadata["per_crop_keys"].append("object_mean")
    if table is not None:
        metadata["objects"] = str(table.path) if table.path else "table"
    _check_classes(names, y, metadata, labelled_only or by_object)
    if len(names) < 2:
        names = names + [f"class{i}" for i in range(len(names), 2)]
    data = ImageSet(images=np.stack(imgs), labels=y, channel_names=list(plate.channel_names),
                    class_names=names, groups=metadata["well"].copy(),
                    masks=np.stack(msks) if msks else None, metadata=metadata)
    return assign_split(data, split_by, val_wells)


def _assign_objects(plate: Plate, fields: list[FieldOfView], table: ObjectTable
                    ) -> dict[int, tuple[np.ndarray, list[str]]]:
    """Objects per field index: centres (y, x) and class names; unknown fields are errors."""
    by_key = {(f.well, site_key(f.site)): i for i, f in enumerate(fields)}
    by_file = {p.name: i for i, f in enumerate(fields) for p in f.files}
    out: dict[int, tuple[list, list]] = {}
    bad: list[str] = []
    for k in range(len(table)):
        if table.file[k] is not None:
            i = by_file.get(table.file[k])
            where = f"file {table.file[k]}"
        else:
            site = table.site[k] or "1"
            i = by_key.get((table.well[k], site))
            where = f"well {table.well[k]} site {site}"
        if i is None:
            bad.append(f"line {table.rows[k]} ({where})")
            continue
        cen, lab = out.setdefault(i, ([], []))
        cen.append((table.y[k], table.x[k]))
        lab.append(table.label[k])
    if bad:
        raise InputError(f"{len(bad)} object(s) in {table.path or 'the object table'} are in "
                         f"fields of view that are not in {plate.root} (or not selected): "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    return {i: (np.asarray(c, float), lab) for i, (c, lab) in out.items()}


def _check_classes(names: list[str], y: np.ndarray, metadata: dict, labelled: bool) -> None:
    if not labelled:
        return
    counts = np.bincount(y, minlength=len(names))
    empty = [n for n, c in zip(names, counts, strict=False) if c == 0]
    if empty:
        raise InputError(f"class(es) {empty} have no crops: their wells have no images, "
                         "were left out, or no nuclei were found there")


def assign_split(data: ImageSet, split_by: str = "auto",
                 val_wells: Sequence[str] | None = None) -> ImageSet:
    """Set ``data.groups`` to the held-out unit (``metadata["split_by"]``); spatial units
    drop crops crossing the cut; ``auto`` warns when it cannot split by well."""
    md = data.metadata
    if split_by != "auto" and split_by not in SPLIT_UNITS:
        raise InputError(f"unknown split unit {split_by!r}; choose auto or one of "
                         f"{SPLIT_UNITS}")
    if val_wells:
        if split_by not in ("auto", "well"):
            raise InputError("validation wells hold out whole wells: use them with split "
                             f"by well, not {split_by!r}")
        wanted = [normalise_well(w) for w in val_wells]
        missing = sorted(set(wanted) - set(md["well"].tolist()))
        if missing:
            raise InputError(f"validation well(s) {missing} have no crops; wells with crops: "
                             f"{sorted(set(md['well'].tolist()))[:20]}")
        data.groups, md["split_by"], md["val_groups"] = md["well"].copy(), "well", wanted
        return data
    unit = split_by
    if unit == "auto":
        unit, warns = choose_split_unit(data.labels, md["well"], md["site"], data.class_names)
        md["warnings"] = list(md.get("warnings", [])) + warns
    crop_full = md["crop_size"] * md["downsample"]
    groups, keep = spatial_groups(unit, md["well"], md["site"], md["y"], md["x"], crop_full,
                                  np.stack([md["field_h"], md["field_w"]], 1))
    md["split_by"] = unit
    lost = [n for c, n in enumerate(data.class_names)
            if (data.labels == c).any() and not (keep & (data.labels == c)).any()]
    if lost:
        raise InputError(f"crops of {crop_full} px (full resolution) all cross the cut of "
                         f"the fields into {'halves' if unit == 'half' else 'quadrants'}, "
                         f"leaving no crops of {', '.join(lost)}; use smaller crops "
                         "(crop_size / --crop-size, or more downsampling) or split by field")
    if not keep.all():
        data = take(data, np.flatnonzero(keep))
        groups = groups[keep]
        data.metadata["dropped_crossing_crops"] = int((~keep).sum())
    data.groups = groups
    return data


def take(data: ImageSet, index: np.ndarray) -> ImageSet:
    """``data.subset(index)`` that also slices the per-crop metadata arrays."""
    index = np.asarray(index)
    out = data.subset(index)
    for k in data.metadata.get("per_crop_keys", []):
        out.metadata[k] = np.asarray(data.metadata[k])[index]
    return out


def block_mean(arr: np.ndarray, f: int) -> np.ndarray:
    """Average ``f`` x ``f`` blocks of the last two axes (edges that do not fit dropped)."""
    h, w = arr.shape[-2] // f * f, arr.shape[-1] // f * f
    a = arr[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // f, f, w // f, f).mean(axis=(-3, -1)).astype(
        np.float32)
