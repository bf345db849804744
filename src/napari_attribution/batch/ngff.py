"""OME-NGFF 0.4 metadata of the batch result store, built and checked with ome-zarr-models.

Every ``plate``, ``well``, ``multiscales`` and ``omero`` attribute the store writes is a
validated ome-zarr-models (pydantic) model dumped to JSON, never a hand-written dict; a
missing library is an :class:`InputError` naming the extra to install, so a store is
never written with unchecked metadata. :func:`validate_store` opens a written store as an
NGFF HCS plate (every well, every field image and its array) with the same models and
adds the one 0.4 axis rule the models leave out (at most one channel-or-custom axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.runtime.errors import InputError

NGFF_VERSION = "0.4"
#: placeholder display window of a map channel until the run completes (then the
#: window comes from the maps, see :func:`map_window`)
DEFAULT_WINDOW = (0.0, 1.0)
_INSTALL = "pip install 'napari-attribution[batch]'"


def require_models() -> Any:
    """Import ``ome_zarr_models.v04`` or raise an :class:`InputError` saying how to
    install it (the store's NGFF metadata is only ever written through it)."""
    try:
        import ome_zarr_models.v04.hcs
        import ome_zarr_models.v04.image
        import ome_zarr_models.v04.well  # noqa: F401
    except ImportError:
        raise InputError("batch result stores write their OME-Zarr (NGFF) metadata with "
                         f"ome-zarr-models, which is not installed: {_INSTALL}") from None
    return ome_zarr_models.v04


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


def _row_key(name: str) -> tuple[int, str]:
    return (len(name), name)


def plate_attrs(paths: Sequence[str], name: str) -> dict[str, Any]:
    """``{"plate": ...}`` for the ``row/column/field`` image paths in ``paths``."""
    require_models()
    from ome_zarr_models.v04.hcs import HCSAttrs
    from ome_zarr_models.v04.plate import Column, Plate, Row, WellInPlate

    wells = list(dict.fromkeys(p.rsplit("/", 1)[0] for p in paths))
    rows = sorted({w.split("/")[0] for w in wells}, key=_row_key)
    cols = sorted({w.split("/")[1] for w in wells}, key=int)
    per_well: dict[str, int] = {}
    for p in paths:
        w = p.rsplit("/", 1)[0]
        per_well[w] = per_well.get(w, 0) + 1
    plate = Plate(version=NGFF_VERSION, name=name, rows=[Row(name=r) for r in rows],
                  columns=[Column(name=c) for c in cols],
                  wells=[WellInPlate(path=w, rowIndex=rows.index(w.split("/")[0]),
                                     columnIndex=cols.index(w.split("/")[1]))
                         for w in wells],
                  field_count=max(per_well.values()))
    return _dump(HCSAttrs(plate=plate))


def well_attrs(fields: Sequence[str]) -> dict[str, Any]:
    """``{"well": ...}`` listing the field images ``fields`` (their names in the well)."""
    require_models()
    from ome_zarr_models.v04.well import WellAttrs
    from ome_zarr_models.v04.well_types import WellImage, WellMeta

    return _dump(WellAttrs(well=WellMeta(images=[WellImage(path=f) for f in fields],
                                         version=NGFF_VERSION)))


def map_axes() -> list[dict[str, str]]:
    """NGFF axes of a field's map array: every map plane (method, or method x channel for
    per-channel maps) on the one channel axis, then y, x (0.4 allows one channel axis)."""
    return [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
            {"name": "x", "type": "space"}]


def image_attrs(labels: Sequence[str], pixel: float = 1.0,
                windows: Sequence[tuple[float, float]] | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``multiscales`` + ``omero`` of one field image of maps (``labels``: one per plane).

    ``pixel`` is the size of a map pixel in pixels of the plate's images (the
    downsampling factor, the NGFF scale of y and x); ``windows`` the display range of
    each plane; ``extra`` further attributes (our own block) kept beside them.
    """
    require_models()
    from ome_zarr_models.v04.axes import Axis
    from ome_zarr_models.v04.image import ImageAttrs
    from ome_zarr_models.v04.multiscales import Dataset, Multiscale
    from ome_zarr_models.v04.omero import Channel, Omero, Window

    axes = [Axis(**a) for a in map_axes()]
    scale = [float(pixel) if a.type == "space" else 1.0 for a in axes]
    # no multiscale name: viewers put it before every channel label
    ms = Multiscale(version=NGFF_VERSION, axes=axes, type="none",
                    datasets=[Dataset.build(path="0", scale=scale, translation=None)])
    windows = list(windows) if windows is not None else [DEFAULT_WINDOW] * len(labels)
    channels = [Channel(label=lab, active=True, color="FFFFFF",
                        window=Window(min=float(lo), max=float(hi), start=float(lo),
                                      end=float(hi)))
                for lab, (lo, hi) in zip(labels, windows, strict=True)]
    return _dump(ImageAttrs(multiscales=[ms], omero=Omero(channels=channels),
                            **(extra or {})))


def map_window(plane: Any) -> tuple[float, float]:
    """Display range of one map plane: the contrast the plugin's heat-map style uses."""
    from ..layer_style import heatmap_style

    lo, hi = heatmap_style(plane)["contrast_limits"]
    return float(lo), float(hi)


def _axis_rule(axes: Sequence[Any], where: str) -> None:
    types = [a.type for a in axes]
    other = [t for t in types if t not in ("space", "time")]
    if len(other) > 1:
        raise InputError(f"{where}: NGFF 0.4 allows one channel-or-custom axis, got axis "
                         f"types {types}")


def validate_store(path: str | Path) -> Any:
    """Open the Zarr group at ``path`` as an NGFF 0.4 HCS plate and validate it (plate,
    every listed well, every field image with its array) with ome-zarr-models; returns
    the ``HCS`` model, or raises :class:`InputError` saying what is wrong."""
    require_models()
    import zarr
    from ome_zarr_models.v04.hcs import HCS

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=2)
        hcs = HCS.from_zarr(group)
    except Exception as exc:  # pydantic ValidationError, missing groups/arrays, bad JSON
        raise InputError(f"{path} is not a valid OME-NGFF 0.4 plate: {exc}") from None
    n_wells = 0
    try:
        for well in hcs.well_groups:
            n_wells += 1
            for i, image in enumerate(well.images):  # KeyError: a listed image is missing
                for ms in image.attributes.multiscales:
                    _axis_rule(ms.axes, f"{path} well {n_wells} field {i}")
    except (KeyError, RuntimeError) as exc:
        raise InputError(f"{path} is not a valid OME-NGFF 0.4 plate: a well lists an image "
                         f"that is not there ({exc})") from None
    if n_wells != hcs.n_wells:
        raise InputError(f"{path}: the plate lists {hcs.n_wells} wells but only {n_wells} "
                         "well groups exist")
    return hcs
