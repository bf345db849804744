"""npe2 writer: an attribution image layer -> OME-TIFF with its provenance.

The layer's ``metadata`` supplies the provenance (``metadata["provenance"]`` or,
for layers this package created, the whole ``metadata["attribution"]`` record), the
channel names and the pixel size (from ``scale``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .io.writers import write_attribution_tiff


def write_attribution_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer as an attribution OME-TIFF; returns the paths written."""
    md = dict(meta.get("metadata") or {})
    record = md.get("attribution") if isinstance(md.get("attribution"), dict) else {}
    provenance = dict(md.get("provenance") or record.get("provenance") or {})
    provenance.setdefault("layer_name", meta.get("name"))
    arr = np.asarray(data)
    names = record.get("channel_names") or md.get("channel_names")
    axes = record.get("axes") if record.get("axes") and len(record["axes"]) == arr.ndim \
        else None
    if names is not None:
        fits = arr.ndim >= 3 and len(names) == arr.shape[-3]
        if (axes is not None and "C" not in axes) or (axes is None and not fits):
            names = None
    scale = meta.get("scale")
    pixel_size = None
    if scale is not None and len(scale) >= 2 and tuple(scale[-2:]) != (1.0, 1.0):
        pixel_size = (float(scale[-2]), float(scale[-1]))
    written = write_attribution_tiff(path, arr, channel_names=names, provenance=provenance,
                                     pixel_size=pixel_size, axes=axes,
                                     name=str(meta.get("name") or "attribution"))
    return [str(written)]
