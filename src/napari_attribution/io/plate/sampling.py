"""Plate crops as an ImageSet: labels from the plate map, an object table or a marker
rule, per-crop metadata, and groups for the held-out unit (:mod:`...core.splits`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.data.dataset import ImageSet
from ...core.runtime.errors import InputError
from ...core.study.findings import make
from ...core.study.splits import (
    SPLIT_NOT_BY_WELL,
    SPLIT_UNITS,
    choose_split_unit,
    spatial_groups,
)
from .crops import FieldCrops, LabelSource, _iter, resolve_settings, select_fields, take
from .objects import LabelRule, ObjectTable, parse_label_rule, read_objects
from .plate_map import normalise_well, site_key

if TYPE_CHECKING:
    from .labels import LabelsInput
    from .layout import FieldOfView, Plate


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
        md["findings"] = list(md.get("findings", [])) + [
            make(SPLIT_NOT_BY_WELL, w, unit=unit) for w in warns]
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


