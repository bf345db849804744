"""Plate crops as an ImageSet: labels from the plate map, an object table or a marker
rule, per-crop metadata, and groups for the held-out unit (:mod:`...core.splits`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.data.dataset import ImageSet
from ...core.runtime.errors import InputError
from ...core.study.findings import Finding, make, register_code
from ...core.study.splits import (
    SPLIT_NOT_BY_WELL,
    SPLIT_UNITS,
    choose_split_unit,
    spatial_groups,
)
from .config import DEFAULT_MAX_OBJECTS, SamplingConfig  # noqa: F401 - re-exported
from .crops import FieldCrops, LabelSource, _iter, resolve_settings, select_fields, take
from .objects import LabelRule, ObjectTable, parse_label_rule, read_objects
from .plate_map import normalise_well, site_key

if TYPE_CHECKING:
    from .labels import LabelsInput
    from .layout import FieldOfView, Plate


SEGMENTATION = register_code(
    "segmentation", "caution",
    "nuclei were segmented on a channel chosen as a fallback (no DNA-stain name), or the "
    "objects found there do not look like nuclei (many small objects, or none)")
SAMPLE_BUDGET = register_code(
    "sample-budget", "note",
    "not every segmented object was used: the object or time budget (or a per-field cap) "
    "kept a sample of them")


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
    config: SamplingConfig | str | None = None,
    *,
    labels: LabelsInput = None,
    objects: ObjectTable | str | Path | None = None,
    progress: Callable[[int, int, str], Any] | None = None,
    **overrides: Any,
) -> ImageSet:
    """Crops of ``plate`` as an ImageSet (labels, groups for the split, per-crop metadata).

    Settings come from ``config`` (a :class:`~.config.SamplingConfig`; default: its
    defaults; a string is a crop mode) with keyword ``overrides`` of its fields
    (``sample_plate(plate, crop_size=32, seed=1)``); an unknown keyword raises
    :class:`InputError` naming it. The data read beside the plate are arguments:
    ``labels`` (label images), ``objects`` (an object table) and ``progress``. The
    settings used are recorded as ``metadata["sampling"]["config"]``
    (``SamplingConfig.to_dict()``), and so in a trained model's provenance.

    Crops: ``"nuclei"`` (centred on nuclei), ``"grid"`` (tiles) or ``"random"``.
    Every object (crop) of every field is used up to a budget: ``max_objects`` crops in
    all (default :data:`DEFAULT_MAX_OBJECTS`; beyond it a uniform random sample of all
    objects, kept while reading so memory stays bounded) and ``time_budget`` seconds of
    reading and cutting (default none; fields are then read round-robin over wells, at
    least one per well, and those not reached in time are left out). ``per_image``
    additionally caps crops per field (default None = all; ignored with ``objects`` or
    ``label_rule``). What was used is in ``metadata["sampling"]`` (objects found and
    used, fields, wells, budget) and a ``sample-budget`` note in ``metadata["findings"]``
    says when objects were left out. ``crop_size`` is in downsampled pixels. Without
    ``crop_size`` it comes from the median nucleus diameter (crops ~6 diameters), and so
    does ``downsample`` unless given (a nucleus ~8 px after downsampling); a crop size
    given alone means ``downsample=1``. Both are recorded in ``metadata``.
    Nuclei: Otsu segmentation of ``nuclei_channel`` (default: the channel named like a
    DNA stain, :data:`~...core.data.segmentation.NUCLEAR_STAIN_NAMES`: DNA, Hoechst,
    DAPI, DRAQ5, SiR-DNA, H2B, nuclei ...; else the last channel, with a ``segmentation``
    caution), checked against what the other channels would give (a foci channel gives
    many small objects: ``segmentation`` caution); ``metadata["nuclei"]`` says which
    channel, how many objects and their median area. Or ``labels`` made elsewhere
    (cellpose, stardist, napari): a dict
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
    c = SamplingConfig.build(config, overrides)
    table = objects if isinstance(objects, ObjectTable) or objects is None else \
        read_objects(objects, c.objects_columns, need_label=c.label_rule is None)
    rule = c.label_rule if isinstance(c.label_rule, LabelRule) or c.label_rule is None \
        else parse_label_rule(c.label_rule, plate.channel_names)
    by_object = table is not None or rule is not None
    if table is not None and c.crops != "nuclei":
        raise InputError("an object table centres crops on its objects; use crops='nuclei'")
    fields = select_fields(plate, c.wells, c.labelled_only and not by_object)
    if c.time_budget is not None:
        fields = _round_robin(fields)
    per_field = _assign_objects(plate, fields, table) if table is not None else None
    if per_field is not None:
        fields = [f for i, f in enumerate(fields) if i in per_field]
        per_field = {k: per_field[i] for k, i in enumerate(sorted(per_field))}
    source = LabelSource(labels, c.labels_pattern or plate.pattern)
    s = resolve_settings(plate, fields, c, source)
    names = _class_names(c, rule, table, plate)
    kept, budget = _gather(_iter(plate, fields, s, source, per_field, rule, progress),
                           len(fields), len({f.well for f in fields}), c.max_objects,
                           c.time_budget, c.seed)
    imgs, msks, labels_out, means, meta = _collect(kept, rule, names)
    if not imgs:
        raise InputError(f"no crops found in {plate.root} (no nuclei segmented?)")
    metadata: dict[str, Any] = meta.arrays()
    metadata.update(s.record(plate))
    metadata["per_crop_keys"] = list(meta.keys)
    metadata["warnings"] = []
    findings = _sampling_findings(s, budget, metadata)
    metadata["sampling"]["config"] = c.to_dict()
    metadata["findings"] = findings
    # Until every face reads findings, cautions also go where warnings are read today.
    metadata["warnings"] += [f.message for f in findings if f.is_warning]
    y = np.asarray(labels_out, np.int64)
    if rule is not None:
        all_means = np.concatenate(means)[:, plate.channel_names.index(rule.channel)]
        y, thr = rule.apply(all_means)
        metadata.update(label_rule=str(rule), label_threshold=thr)
        metadata["object_mean"] = all_means
        metadata["per_crop_keys"].append("object_mean")
    if table is not None:
        metadata["objects"] = str(table.path) if table.path else "table"
    _check_classes(names, y, metadata, c.labelled_only or by_object)
    if len(names) < 2:
        names = names + [f"class{i}" for i in range(len(names), 2)]
    data = ImageSet(images=np.stack(imgs), labels=y, channel_names=list(plate.channel_names),
                    class_names=names, groups=metadata["well"].copy(),
                    masks=np.stack(msks) if msks else None, metadata=metadata)
    return assign_split(data, c.split_by, c.val_wells)


def _class_names(c: SamplingConfig, rule: LabelRule | None, table: ObjectTable | None,
                 plate: Plate) -> list[str]:
    """The rule's classes, else the given names, else the table's or the plate map's."""
    if rule is not None:
        return rule.class_names
    if c.class_names is not None:
        return list(c.class_names)
    if table is not None:
        return table.class_names
    pm = plate.plate_map
    return pm.class_names if pm is not None else []


def _collect(kept: list[FieldCrops], rule: LabelRule | None, names: list[str]
             ) -> tuple[list, list, list[int], list, _MetaLists]:
    """Images, masks, labels, object means and per-crop metadata of the kept fields."""
    imgs, msks, labels_out, means, meta = [], [], [], [], _MetaLists()
    for fc in kept:
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
    return imgs, msks, labels_out, means, meta


def sampling_summary(md: dict) -> str:
    """Which nuclei channel, and how many objects, fields and wells were used."""
    lines = []
    if md.get("nuclei"):
        lines.append(md["nuclei"]["summary"])
    s = md.get("sampling")
    if s:
        budget = [f"at most {s['max_objects']} objects" if s.get("max_objects") else
                  "no object budget"]
        if s.get("time_budget"):
            budget.append(f"{s['time_budget']:g} s")
        if s.get("per_image"):
            budget.append(f"{s['per_image']} per field")
        lines.append(f"used {s['objects_used']} of {s['objects_found']} objects from "
                     f"{s['fields_used']} field(s) in {s['wells_used']} well(s) "
                     f"({', '.join(budget)})")
    return "\n".join(lines)


def _round_robin(fields: list[FieldOfView]) -> list[FieldOfView]:
    """Fields ordered site 1 of every well, then site 2 ...: a time budget that stops
    early still leaves every well (and so every class) some fields."""
    by_well: dict[str, list[FieldOfView]] = {}
    for f in fields:
        by_well.setdefault(f.well, []).append(f)
    out: list[FieldOfView] = []
    for k in range(max(len(v) for v in by_well.values())):
        out += [v[k] for v in by_well.values() if k < len(v)]
    return out


def _gather(stream, n_fields: int, n_wells: int, max_objects: int | None,
            time_budget: float | None, seed: int) -> tuple[list[FieldCrops], dict[str, Any]]:
    """Read fields until done or out of time (but at least one field of every well: they
    come round-robin), keeping at most ``max_objects`` crops: each crop gets a random key
    and the smallest keys stay (a uniform sample of all crops, whatever the field order).
    Returns the kept fields and what the budget did."""
    rng = np.random.default_rng(seed + 7919)
    kept: list[FieldCrops] = []
    keys: list[np.ndarray] = []
    found = fields_read = 0
    areas: list[np.ndarray] = []
    wells_read: set[str] = set()
    t0 = time.perf_counter()
    stopped = False
    for fc in stream:
        fields_read += 1
        wells_read.add(fc.fov.well)
        found += fc.n_found
        if fc.nucleus_areas is not None:
            areas.append(fc.nucleus_areas)
        kept.append(fc)
        keys.append(rng.random(len(fc)))
        total = sum(len(f) for f in kept)
        if max_objects is not None and total > max_objects:
            thr = np.partition(np.concatenate(keys), max_objects - 1)[max_objects - 1]
            for j, f in enumerate(kept):
                keep = keys[j] <= thr
                if not keep.all():
                    kept[j], keys[j] = f.subset(keep), keys[j][keep]
        if (time_budget is not None and n_wells <= fields_read < n_fields
                and time.perf_counter() - t0 > time_budget):
            stopped = True
            break
    kept = [f for f in kept if len(f)]
    info = {"objects_found": int(found), "objects_used": int(sum(len(f) for f in kept)),
            "fields_read": fields_read, "fields_total": n_fields,
            "fields_used": len(kept), "wells_read": len(wells_read),
            "wells_used": len({f.fov.well for f in kept}),
            "max_objects": max_objects, "time_budget": time_budget,
            "stopped_by_time": stopped, "seconds": round(time.perf_counter() - t0, 2),
            "nucleus_areas": np.concatenate(areas) if areas else None}
    return kept, info


def _sampling_findings(s, budget: dict[str, Any], metadata: dict[str, Any]
                       ) -> list[Finding]:
    """Record what was sampled (``metadata["sampling"]``, ``metadata["nuclei"]``) and the
    ``segmentation`` / ``sample-budget`` findings."""
    areas = budget.pop("nucleus_areas")
    budget["per_image"] = s.per_image
    metadata["sampling"] = dict(budget)
    out: list[Finding] = []
    if areas is not None:
        med = float(np.median(areas)) if areas.size else 0.0
        how = {"given": "chosen by the user", "named": "named as a nuclear stain",
               "fallback": "no channel named as a nuclear stain: the last channel, a "
                           "guess"}[s.nuclei_choice]
        nuclei = {"channel": s.nuclei_channel, "choice": s.nuclei_choice,
                  "objects": int(areas.size), "median_area": round(med, 1),
                  "median_diameter": round(2 * float(np.sqrt(med / np.pi)), 1),
                  "segmentation": s.segmentation, "check": s.nuclei_check,
                  "survey": {k: {kk: round(float(vv), 2) for kk, vv in v.items()}
                             for k, v in s.nuclei_survey.items()}}
        nuclei["summary"] = (f"nuclei: {s.nuclei_channel} ({how}), {areas.size} objects in "
                             f"{budget['fields_read']} field(s), median area {med:.0f} px "
                             f"({nuclei['median_diameter']:.1f} px across)")
        metadata["nuclei"] = nuclei
        if s.nuclei_choice == "fallback":
            out.append(make(
                SEGMENTATION,
                "No channel is named like a nuclear stain (DNA, Hoechst, DAPI, DRAQ5, "
                f"SiR-DNA, H2B, nuclei ...): nuclei were segmented on {s.nuclei_channel}, "
                "the last channel, as a guess. If it is not the DNA stain, name the "
                "nuclear channel (--nuclei-channel, nuclei_channel=).", channel=s.nuclei_channel,
                choice="fallback", survey=nuclei["survey"]))
        if s.nuclei_check:
            out.append(make(
                SEGMENTATION,
                f"The objects segmented on {s.nuclei_channel} do not look like nuclei: "
                f"{s.nuclei_check}. Crops are centred on them and sized from them; check "
                "the channel names or choose the nuclear stain (--nuclei-channel, "
                "nuclei_channel=).", channel=s.nuclei_channel, choice=s.nuclei_choice,
                reason=s.nuclei_check, survey=nuclei["survey"]))
    found, used = budget["objects_found"], budget["objects_used"]
    if budget["stopped_by_time"]:
        out.append(make(
            SAMPLE_BUDGET,
            f"The time budget ({budget['time_budget']:g} s) stopped sampling after "
            f"{budget['fields_read']} of {budget['fields_total']} fields: {used} objects "
            f"used of {found} found in the fields read; raise it (--time-budget) to use "
            "every field.", **{k: budget[k] for k in ("objects_found", "objects_used",
                                                      "fields_read", "fields_total",
                                                      "time_budget")}))
    elif used < found:
        by = (f"the object budget ({budget['max_objects']}, a uniform random sample of all "
              "objects)" if budget["max_objects"] is not None and
              used >= budget["max_objects"] else f"the per-field cap ({s.per_image})")
        out.append(make(
            SAMPLE_BUDGET,
            f"{used} of {found} objects were used, cut by {by}; raise it (--max-objects, "
            "--per-image) to use them all.",
            objects_found=found, objects_used=used, max_objects=budget["max_objects"],
            per_image=s.per_image))
    return out


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


