"""Cutting a plate into crops: settings resolved once, then one field of view at a time.

:func:`resolve_settings` fixes everything before any crop is cut (crop size and
downsampling, from the median nucleus size when not given; normalisation; where nuclei
labels come from) into a :class:`CropSettings` that is recorded in the data's metadata
and so in the model bundle. :func:`iter_plate_crops` yields :class:`FieldCrops`;
:func:`.sampling.sample_plate` gathers them into an ImageSet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.data.dataset import ImageSet
from ...core.data.normalization import PercentileNormalizer, canonical_mode
from ...core.data.segmentation import (
    choose_nuclei_channel,
    crop_geometry,
    median_diameter,
    nuclei_plausibility,
    object_means,
    object_stats,
    segment_nuclei,
)
from ...core.runtime.errors import InputError
from .config import SamplingConfig
from .labels import LabelsInput, LabelSource
from .objects import LabelRule
from .plate_map import WellInfo, normalise_well

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
    #: how the nuclei channel was chosen: "given", "named" (a DNA-stain name) or "fallback"
    nuclei_choice: str = "given"
    #: per channel, the built-in segmentation of the first fields (objects, median area)
    nuclei_survey: dict[str, dict[str, float]] = field(default_factory=dict)
    #: why the nuclei channel's objects do not look like nuclei (None: they do)
    nuclei_check: str | None = None
    normalizer: PercentileNormalizer | None = field(default=None, repr=False)
    _survey: Any = field(default=None, repr=False)

    def record(self, plate: Plate) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items()
             if k not in ("normalizer", "percentiles", "_survey")}
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
    #: crops this field could give before any cap (objects found, or grid tiles)
    n_found: int = 0
    #: areas (px, full resolution) of the nuclei segmented in this field
    nucleus_areas: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.corners)

    def subset(self, keep: np.ndarray) -> FieldCrops:
        """The same field with only the crops where ``keep`` (bool, one per crop)."""
        idx = np.flatnonzero(keep)
        return FieldCrops(
            self.fov, self.index, self.images[idx],
            None if self.masks is None else self.masks[idx],
            [self.corners[i] for i in idx], self.info, self.field_shape,
            None if self.object_labels is None else [self.object_labels[i] for i in idx],
            None if self.object_means is None else self.object_means[idx],
            self.normalization, self.n_found, self.nucleus_areas)


class _Survey:
    """Objects the built-in segmentation finds on every channel of the first fields (read
    anyway: for the crop geometry, or the first fields cropped), to check that the
    nuclei channel's objects look like nuclei (:func:`nuclei_plausibility`)."""

    def __init__(self, names: list[str], nuc_idx: int, source: LabelSource) -> None:
        self.names, self.nuc_idx, self.source = list(names), nuc_idx, source
        self.areas: dict[str, list[np.ndarray]] = {n: [] for n in self.names}
        self.n_fields = 0

    @property
    def wanted(self) -> bool:
        return self.n_fields < _GEOMETRY_FIELDS

    def add(self, pixels: np.ndarray, nuc_labels: np.ndarray) -> None:
        from ...core.data.segmentation import object_areas

        self.n_fields += 1
        self.areas[self.names[self.nuc_idx]].append(object_areas(nuc_labels))
        if self.source.builtin:
            for c, name in enumerate(self.names):
                if c != self.nuc_idx:
                    self.areas[name].append(object_areas(segment_nuclei(pixels[c])))

    def finish(self, s: CropSettings) -> None:
        nuc = self.names[self.nuc_idx]
        s.nuclei_survey = {n: object_stats(areas=a) for n, a in self.areas.items() if a}
        if self.source.builtin and len(s.nuclei_survey) > 1:
            s.nuclei_check = nuclei_plausibility(s.nuclei_survey, nuc)
        elif s.nuclei_survey[nuc]["objects"] == 0:
            s.nuclei_check = (f"the label images of the first fields hold no object "
                              f"({self.source.name})")


def resolve_settings(plate: Plate, fields: list[FieldOfView], config: SamplingConfig,
                     source: LabelSource | None = None) -> CropSettings:
    """Check the options and fill in what is derived (geometry, fitted normaliser)."""
    crops, crop_size, per_image, downsample = (config.crops, config.crop_size,
                                               config.per_image, config.downsample)
    nuclei_channel, masks, normalization = (config.nuclei_channel, config.masks,
                                            config.normalization)
    percentiles, seed = config.percentiles, config.seed
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
    nuc_idx, how = choose_nuclei_channel(plate.channel_names, nuclei_channel)
    nuc_name = plate.channel_names[nuc_idx]
    diameter, geometry = None, "given"
    if crop_size is not None and downsample is None:
        downsample = 1  # a crop size given alone is in full-resolution pixels
    survey = _Survey(plate.channel_names, nuc_idx, source)
    if crop_size is None:
        # the first fields, segmented once: crop geometry, and (below) whether the
        # nuclei channel's objects look like nuclei next to what the other channels give
        lab = []
        for f in fields[:_GEOMETRY_FIELDS]:
            px = plate.read_field(f)
            lab.append(source(f.well, f.site, px[nuc_idx]))
            survey.add(px, lab[-1])
        if lab:
            diameter = median_diameter(lab)
            crop_size, downsample = crop_geometry(diameter, crop_size, downsample)
            geometry = (f"from the median nucleus diameter {diameter:.1f} px in "
                        f"{len(lab)} field(s)")
    settings = CropSettings(crops, int(crop_size), int(downsample), per_image,
                            nuc_name, masks, mode,
                            tuple(percentiles), seed, source.name, diameter, geometry,
                            how)
    settings._survey = survey
    if survey.n_fields:
        survey.finish(settings)
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


#: What :func:`iter_plate_crops` starts from: 64 crops per field, every well.
ITER_DEFAULTS = SamplingConfig(per_image=64, labelled_only=False)
#: Settings that only gathering into an ImageSet uses (labels, budget, split).
_GATHER_ONLY = ("class_names", "objects_columns", "label_rule", "split_by", "val_wells",
                "max_objects", "time_budget")


def iter_plate_crops(plate: Plate, config: SamplingConfig | str | None = None, *,
                     labels: LabelsInput = None,
                     progress: Callable[[int, int, str], Any] | None = None,
                     **overrides: Any) -> Iterator[FieldCrops]:
    """Yield the crops of one field of view at a time; settings as :func:`sample_plate`
    (from :data:`ITER_DEFAULTS`: 64 crops per field, every well). The settings that
    only gathering uses (labels, object budget, split) are refused here, at the call."""
    c = SamplingConfig.build(config, overrides, base=ITER_DEFAULTS)
    unused = [k for k in _GATHER_ONLY if getattr(c, k) != getattr(ITER_DEFAULTS, k)]
    if unused:
        raise InputError(f"iter_crops does not use {', '.join(unused)}: they apply when "
                         "crops are gathered (Plate.sample)")
    return _iter_fields(plate, c, labels, progress)


def _iter_fields(plate: Plate, c: SamplingConfig, labels: LabelsInput,
                 progress: Callable[[int, int, str], Any] | None) -> Iterator[FieldCrops]:
    fields = select_fields(plate, c.wells, c.labelled_only)
    source = LabelSource(labels, c.labels_pattern or plate.pattern)
    s = resolve_settings(plate, fields, c, source)
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
        survey = s._survey
        if nuc_labels is not None and survey is not None and not s.nuclei_survey:
            survey.add(raw, nuc_labels)
            if not survey.wanted or i == len(fields) - 1:
                survey.finish(s)
        table = objects.get(i) if objects is not None else None
        centres, names, means, areas = None, None, None, None
        if table is not None:
            centres, names = table
            _check_inside(centres, full_shape, fov)
            if rule is not None:
                means = _means_at(raw, nuc_labels, centres, s.nucleus_diameter)
        elif rule is not None or (s.crops == "nuclei" and nuc_labels is not None):
            from ...core.data.segmentation import object_centres

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
        corners, pick, n_found = _crop_corners(s.crops, size, None if every else s.per_image,
                                               (h, w), centres, ds, rng)
        if nuc_labels is not None:
            counts = np.bincount(nuc_labels.ravel())
            areas = counts[1:][counts[1:] > 0]
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
                         s.normalization, n_found, areas)
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
                  ) -> tuple[list[tuple[int, int]], np.ndarray, int]:
    """Top-left corners (downsampled pixels), which centres (or tiles) they are, and how
    many there were before ``per_image`` capped them."""
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
        return ([(int(y), int(x)) for y, x in zip(ys, xs, strict=True)],
                np.arange(per_image), per_image)
    else:
        corners = []
    pick = np.arange(len(corners))
    n_found = len(corners)
    if per_image is not None and len(corners) > per_image:
        pick = np.sort(rng.choice(len(corners), per_image, replace=False))
        corners = [corners[i] for i in pick]
    return corners, pick, n_found


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
