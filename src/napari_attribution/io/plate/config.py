"""How a plate is cut into crops: :class:`SamplingConfig`, one record shared by the CLI,
the API, the widgets and the provenance of a trained model.

A leaf module (it imports only the core's errors) so that :mod:`.crops`,
:mod:`.sampling`, :mod:`.layout` and :mod:`.bbbc013` all read the same defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ...core.runtime.errors import InputError

#: Default object budget of :func:`~.sampling.sample_plate`: every object is used up to
#: this many crops (a uniform random sample of all objects beyond it). 10,000 crops of 3
#: channels at 48 px hold 280 MB as float32; training on them takes minutes per epoch on
#: a CPU.
DEFAULT_MAX_OBJECTS = 10_000


@dataclass(frozen=True)
class SamplingConfig:
    """Every setting of :func:`~.sampling.sample_plate` that is not data.

    The data a run reads (label images, an object table, a progress callback) are
    arguments of the sampling functions, not settings. ``to_dict()`` is JSON-ready and
    ``from_dict`` reads it back (the round trip gives an equal config).
    """

    #: ``"nuclei"`` (centred on segmented nuclei), ``"grid"`` (tiles) or ``"random"``
    crops: str = "nuclei"
    #: side of a crop in downsampled pixels; None: ~6 median nucleus diameters
    crop_size: int | None = None
    #: at most this many crops per field of view (None: all; ignored with an object
    #: table or a label rule); ``"random"`` crops need it
    per_image: int | None = None
    #: only these wells (None: every well)
    wells: tuple[str, ...] | None = None
    #: only wells with a class in the plate map (else unlabelled wells get label 0)
    labelled_only: bool = True
    #: block-average factor; None: a nucleus ~8 px after downsampling (1 when only
    #: ``crop_size`` is given)
    downsample: int | None = None
    #: channel to segment nuclei on (name or index); None: the one named like a DNA stain
    nuclei_channel: str | int | None = None
    #: keep the nuclei masks of each crop (``ImageSet.masks``)
    masks: bool = True
    #: ``"per_field"``, ``"per_dataset"`` or ``"none"`` (raw intensities)
    normalization: str = "per_field"
    #: lower and upper percentile of the normalisation
    percentiles: tuple[float, float] = (1.0, 99.8)
    #: class order (None: the plate map's or the object table's)
    class_names: tuple[str, ...] | None = None
    #: seed of every random choice (random crops, the object budget, per-dataset fit)
    seed: int = 0
    #: filename regex of label image files in a folder (None: the plate's pattern)
    labels_pattern: str | None = None
    #: columns of an object table: ``"label=Phenotype,x=X"`` or a mapping
    objects_columns: str | Mapping[str, str] | None = None
    #: a marker rule such as ``"PH3>otsu"`` that labels each object (or a ``LabelRule``)
    label_rule: Any = None
    #: unit held out for validation: ``"auto"``, ``"well"``, ``"field"``, ``"half"``,
    #: ``"quadrant"``
    split_by: str = "auto"
    #: wells held out for validation (None: chosen by the split)
    val_wells: tuple[str, ...] | None = None
    #: object budget: at most this many crops in all (None: no limit)
    max_objects: int | None = DEFAULT_MAX_OBJECTS
    #: seconds of reading and cutting (None: no limit); fields are then read round-robin
    time_budget: float | None = None

    def __post_init__(self) -> None:
        for name in ("wells", "class_names", "val_wells"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                if isinstance(value, str):
                    raise InputError(f"{name} must be a list of names, not the string "
                                     f"{value!r}")
                object.__setattr__(self, name, tuple(value))
        if not isinstance(self.percentiles, tuple):
            object.__setattr__(self, "percentiles", tuple(self.percentiles))
        if isinstance(self.objects_columns, Mapping):
            object.__setattr__(self, "objects_columns", dict(self.objects_columns))
        if self.max_objects is not None and self.max_objects < 1:
            raise InputError(f"max_objects must be at least 1 (or None: no limit); got "
                             f"{self.max_objects}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InputError(f"time_budget must be a positive number of seconds; got "
                             f"{self.time_budget}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in fields(cls))

    def with_overrides(self, overrides: Mapping[str, Any]) -> SamplingConfig:
        """A copy with ``overrides`` applied; unknown keys raise :class:`InputError`
        naming them (and the known ones)."""
        check_keys(overrides, self.names(), "sampling option")
        return replace(self, **overrides) if overrides else self

    @classmethod
    def build(cls, config: SamplingConfig | str | None = None,
              overrides: Mapping[str, Any] | None = None,
              base: SamplingConfig | None = None) -> SamplingConfig:
        """``config`` (or ``base``, or the defaults) with ``overrides`` applied; a string
        ``config`` is a crop mode (``"grid"``), as the first argument of ``Plate.sample``
        has always been."""
        if isinstance(config, str):
            overrides = {"crops": config, **(overrides or {})}
            config = None
        if config is not None and not isinstance(config, SamplingConfig):
            raise InputError(f"expected a SamplingConfig, got {type(config).__name__}")
        return (config or base or cls()).with_overrides(overrides or {})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, strings, numbers): JSON-ready, for provenance."""
        out = asdict(self)
        for name in ("wells", "class_names", "val_wells", "percentiles"):
            if out[name] is not None:
                out[name] = list(out[name])
        if out["label_rule"] is not None:
            out["label_rule"] = str(out["label_rule"])
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplingConfig:
        """The config ``to_dict`` wrote (unknown keys raise :class:`InputError`)."""
        check_keys(values, cls.names(), "sampling option")
        return cls(**dict(values))


def check_keys(given: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    """Raise :class:`InputError` naming the keys of ``given`` not in ``known``."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InputError(f"unknown {what}(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(known)}")
