"""Study-design check, run before training: are there enough independent units per class?

Crops from one well share its stain, exposure, focus and position on the plate. When a
class lives in a single well (or plate), a classifier can separate the classes by those
well-level differences and a held-out part of the same well does not reveal it. This
module counts the independent units (plates, wells, fields, split groups) behind each
class and returns :class:`~.findings.Finding` records (codes below, documented in
docs/study_design.md) with what to do about each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.dataset import ImageSet
from .findings import Finding, make, register_code

# (metadata key, unit name): plate > well > field; a field is keyed by plate, well and site
UNIT_KEYS = ("plate", "well", "site")
IMBALANCE_RATIO = 3.0

CLASS_IS_WELL = register_code(
    "design-class-is-well", "alarm",
    "every class comes from a single well: class and well coincide")
CLASS_SINGLE_WELL = register_code(
    "design-class-single-well", "alarm",
    "some class (e.g. the only control well) comes from a single well of its own")
CLASS_IS_PLATE = register_code(
    "design-class-is-plate", "alarm", "each plate holds a single class")
SINGLE_WELL = register_code(
    "design-single-well", "caution",
    "all objects come from one well (classes inside it): the result is one well's")
SINGLE_GROUP = register_code(
    "design-few-units", "caution",
    "a class comes from a single hold-out group (no wells known)")
NO_GROUPS = register_code(
    "design-no-groups", "caution", "no groups given: crops of one field may sit on both "
    "sides of the split")
IMBALANCE = register_code(
    "class-imbalance", "note", "classes are unequal; training balances them, read "
    "balanced accuracy and the rare class's recall")
CLASS_EMPTY = register_code("class-empty", "caution", "a declared class has no images")
NOT_VALIDATED = register_code(
    "class-not-validated", "caution", "a class is missing from the validation split")


@dataclass
class StudyDesign:
    """Independent units per class and the warnings they give rise to."""

    class_names: list[str]
    images_per_class: dict[str, int]
    units_per_class: dict[str, dict[str, int]]  # unit kind -> class -> distinct units
    findings: list[Finding] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """Messages of the alarms and cautions (notes left out)."""
        return [f.message for f in self.findings if f.is_warning]

    @property
    def confounded(self) -> bool:
        """Whether some class is a single well or plate of its own (an alarm)."""
        return any(f.code in (CLASS_IS_WELL, CLASS_SINGLE_WELL, CLASS_IS_PLATE)
                   for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names),
                "images_per_class": dict(self.images_per_class),
                "units_per_class": {k: dict(v) for k, v in self.units_per_class.items()},
                "warnings": list(self.warnings),
                "findings": [f.as_dict() for f in self.findings]}


def _per_crop(data: ImageSet, key: str) -> np.ndarray | None:
    value = data.metadata.get(key)
    if value is None or isinstance(value, (str, bytes)) or np.ndim(value) != 1:
        return None
    arr = np.asarray(value)
    return arr.astype(str) if arr.shape[0] == len(data) else None


def unit_keys(data: ImageSet) -> dict[str, np.ndarray]:
    """Per-image keys of each independent unit found: ``plate``, ``well`` (per plate),
    ``field`` (plate, well, site) and ``group`` (the split groups)."""
    plate, well, site = (_per_crop(data, k) for k in UNIT_KEYS)
    units: dict[str, np.ndarray] = {}
    if plate is not None:
        units["plate"] = plate
    prefix = plate if plate is not None else np.full(len(data), "", dtype=object)
    if well is not None:
        units["well"] = np.char.add(np.char.add(prefix.astype(str), "/"), well)
        if site is not None:
            units["field"] = np.char.add(np.char.add(units["well"], "/"), site)
    if data.groups is not None:
        units["group"] = np.asarray(data.groups).astype(str)
    return units


def check_study_design(data: ImageSet, val_index: np.ndarray | None = None) -> StudyDesign:
    """Count independent units per class in ``data`` and report weak designs as findings.

    ``val_index`` (the validation images of a split) adds a finding for classes that
    are missing from validation.
    """
    names = list(data.class_names)
    labels = np.asarray(data.labels)
    present = [c for c in range(len(names)) if np.any(labels == c)]
    counts = {names[c]: int(np.sum(labels == c)) for c in present}
    units = unit_keys(data)
    per_class = {kind: {names[c]: int(np.unique(keys[labels == c]).size) for c in present}
                 for kind, keys in units.items()}
    found: list[Finding] = []

    for kind, label in (("well", "well"), ("plate", "plate")):
        if kind not in units or len(present) < 2:
            continue
        keys = units[kind]
        single = [names[c] for c in present if per_class[kind][names[c]] == 1]
        pure = all(np.unique(labels[keys == k]).size == 1 for k in np.unique(keys))
        # a class confined to one well that holds no other class: well effect = class
        confined = [names[c] for c in present if per_class[kind][names[c]] == 1
                    and np.unique(labels[np.isin(keys, keys[labels == c])]).size == 1]
        if kind == "well" and np.unique(keys).size == 1:
            found.append(make(
                SINGLE_WELL,
                f"All crops come from a single well ({keys[0].lstrip('/')}): the classes "
                "share its stain and exposure, but nothing shows that the result holds in "
                "another well or plate. Repeat on independent wells before generalising.",
                well=str(keys[0].lstrip('/')), n_objects=int(len(keys))))
        elif kind == "well" and single and len(confined) == len(present) and pure:
            found.append(make(
                CLASS_IS_WELL,
                f"Every class comes from a single {label} ({_examples(keys, labels, names)}): "
                f"class and {label} coincide, so anything that differs between these "
                f"{label}s (stain batch, exposure, focus, cell density, plate position) "
                "separates the classes as well as the biology does, and a held-out part of "
                f"the same {label} cannot tell the two apart. Image each class in at least "
                f"two, better three or more, {label}s, hold out whole {label}s"
                + (" (per-field normalisation is already on; it cannot undo this)."
                   if _per_field(data) else ", and normalise per field."),
                units_per_class=dict(per_class[kind])))
        elif kind == "well" and confined:
            found.append(make(
                CLASS_SINGLE_WELL,
                f"Class(es) {', '.join(confined)} come from a single well each: a well "
                "effect (stain, exposure, density) cannot be told apart from the phenotype "
                "for them, and no held-out well of that class exists. Add wells of these "
                "classes and hold out whole wells.", classes=confined,
                units_per_class=dict(per_class[kind])))
        elif kind == "plate" and pure and np.unique(keys).size >= 2:
            found.append(make(
                CLASS_IS_PLATE,
                "Each plate holds a single class: class and plate coincide, so plate "
                "effects (staining day, imaging session) are confounded with the classes. "
                "Put every class, including controls, on every plate.",
                units_per_class=dict(per_class[kind])))

    if "well" not in units and "field" not in units:
        key = "group"
        if key in units and len(present) >= 2:
            single = [names[c] for c in present if per_class[key][names[c]] == 1]
            if single:
                found.append(make(
                    SINGLE_GROUP,
                    f"Class(es) {', '.join(single)} come from a single group (the unit the "
                    "split holds out, e.g. a well or image): whatever that group shares "
                    "besides the phenotype can drive the result. Add independent groups.",
                    classes=single))
        elif key not in units and not str(data.metadata.get("kind", "")).startswith(
                ("cell_phenotype", "multi_snr", "trap")):
            found.append(make(
                NO_GROUPS,
                "No groups (wells, fields or images of origin) were given: crops of one "
                "field may sit on both sides of the train/validation split, which makes "
                "the held-out accuracy optimistic. Give a group per crop (e.g. the well)."))

    if len(present) >= 2:
        big, small = max(counts.values()), min(counts.values())
        if big >= IMBALANCE_RATIO * small:
            rare = min(counts, key=counts.get)
            majority = big / sum(counts.values())
            found.append(make(
                IMBALANCE,
                f"Classes are unequal ({', '.join(f'{k} {v}' for k, v in counts.items())}): "
                f"always answering the largest class already scores {majority:.2f} "
                "plain accuracy. Training weights the classes equally and the results are "
                f"reported as balanced accuracy and per-class recall; check the recall of "
                f"{rare}.", images_per_class=dict(counts)))
    if len(present) < len(names):
        missing = [n for i, n in enumerate(names) if i not in present]
        found.append(make(CLASS_EMPTY, f"Class(es) {', '.join(missing)} have no images.",
                          classes=missing))
    if val_index is not None:
        in_val = set(np.unique(labels[np.asarray(val_index)]).tolist())
        missing = [names[c] for c in present if c not in in_val]
        if missing:
            found.append(make(
                NOT_VALIDATED,
                f"Class(es) {', '.join(missing)} are not in the validation split (too few "
                "groups to hold one out): their accuracy is not measured at all.",
                classes=missing))
    return StudyDesign(class_names=names, images_per_class=counts,
                       units_per_class=per_class, findings=found)


def _per_field(data: ImageSet) -> bool:
    """Whether the images were normalised per field of view (declared in metadata)."""
    norm = data.metadata.get("normalization")
    mode = norm.get("mode") if isinstance(norm, dict) else norm
    return mode == "per_field"


def _examples(keys: np.ndarray, labels: np.ndarray, names: list[str]) -> str:
    parts = []
    for c in np.unique(labels):
        parts.append(f"{names[c]}: {np.unique(keys[labels == c])[0].lstrip('/')}")
    return "; ".join(parts[:4]) + ("; ..." if len(parts) > 4 else "")
