"""How attribution maps look as napari layers (pure numpy: no napari or Qt import)."""

from __future__ import annotations

import re

import numpy as np

MAX_SAMPLES = 1_000_000


def heatmap_style(data: np.ndarray) -> dict:
    """Image-layer keywords for an attribution map over its image.

    Inferno, additive, 70 % opacity. A signed map (PCIM's log-weights, Integrated
    Gradients) is shown from zero up: the evidence *for* the target glows, pixels left
    alone or counting against it stay black and so add nothing over the image (a range
    from the 1st percentile would tint every cell). The top is the 99.5th percentile of
    the evidence, so a few extreme pixels do not darken the rest. At most a million
    values are looked at.
    """
    arr = np.asarray(data)
    flat = arr.reshape(-1)
    if flat.size > MAX_SAMPLES:
        flat = flat[:: flat.size // MAX_SAMPLES + 1]
    flat = flat[np.isfinite(flat)].astype(np.float64)
    lo, hi = 0.0, 1.0
    if flat.size:
        lo = 0.0 if flat.min() < 0 else float(np.percentile(flat, 1.0))
        above = flat[flat > lo]
        hi = float(np.percentile(above, 99.5)) if above.size else lo
    if hi <= lo:
        hi = lo + 1e-6
    return {"colormap": "inferno", "blending": "additive", "opacity": 0.7,
            "contrast_limits": (lo, hi)}


#: napari colormaps for common stains (looked up as words in the channel name)
STAIN_COLORMAPS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("dapi", "hoechst", "dna", "nuclei", "nucleus", "draq5"), "blue"),
    (("gfp", "fitc", "alexa488", "af488", "488"), "green"),
    (("nf-kb", "nfkb", "p65"), "green"),
    (("ph3", "phh3", "phospho-histone"), "magenta"),
    (("phalloidin", "actin"), "red"),
    (("mito", "tmrm", "mitotracker"), "yellow"),
    (("er", "concanavalin", "cona", "calnexin"), "cyan"),
    (("wga", "membrane", "golgi"), "magenta"),
    (("rfp", "mcherry", "tritc", "cy3", "568", "594"), "red"),
    (("cy5", "647"), "magenta"),
    (("brightfield", "bf", "phase", "dic"), "gray"),
)
#: distinct colours for the channels no stain name matches
COLOUR_CYCLE = ("green", "magenta", "cyan", "yellow", "red", "blue", "gray")


def stain_colormap(name: str, index: int = 0) -> str:
    """A colormap named by the stain a channel shows, else one from a distinct cycle."""
    import re

    words = [w for w in re.split(r"[^a-z0-9-]+", str(name).lower()) if w]
    joined = str(name).lower()
    for keys, cmap in STAIN_COLORMAPS:
        for key in keys:
            # short keys ("er", "bf", "488") must be whole words; longer ones may be inside
            if key in words or (len(key) > 3 and key in joined):
                return cmap
    return COLOUR_CYCLE[index % len(COLOUR_CYCLE)]


_CHANNEL_NUMBER = re.compile(r"(?i)(?:channel|ch|c|w)[ _-]?(\d+)")


def channel_number(name: str) -> int | None:
    """The number of a generically named channel (``Channel2`` -> 2, ``ch0`` -> 0,
    ``w1`` -> 1); None for other names."""
    m = _CHANNEL_NUMBER.fullmatch(str(name).strip())
    return int(m.group(1)) if m else None


def stain_colormaps(names: list[str]) -> list[str]:
    """Colormaps for the channels of one image: stains by name; a generic name with a
    number (``Channel2``) takes the cycle's colour for that number, so files opened one
    by one (one channel each) still differ; the rest from the cycle skipping colours
    already taken (two channels never share a colour while any is left)."""
    out: list[str | None] = []
    for name in names:
        cmap = stain_colormap(name, 0)
        matched = cmap != COLOUR_CYCLE[0] or stain_colormap(name, 1) == cmap
        if not matched and len(names) == 1 and channel_number(name) is not None:
            cmap, matched = COLOUR_CYCLE[channel_number(name) % len(COLOUR_CYCLE)], True
        out.append(cmap if matched else None)
    free = [c for c in COLOUR_CYCLE if c not in out]
    k = 0
    for i, cmap in enumerate(out):
        if cmap is None:
            out[i] = free[k % len(free)] if free else COLOUR_CYCLE[i % len(COLOUR_CYCLE)]
            k += 1
    return [str(c) for c in out]


#: methods whose maps are evidence from zero up even where they dip below it (PCIM's
#: log-weights): shown with the evidence colormap, never diverging
EVIDENCE_METHODS = ("pcim", "pcim_blackbox", "auto")


def is_signed_map(method: str, data: np.ndarray, contrast: object = None) -> bool:
    """Whether a map reads both ways and so needs a diverging colour scale around 0: a
    contrastive map ("A rather than B": red for A, blue for B), or a map of another
    method than PCIM with real negative values (Integrated Gradients, occlusion; at
    least 1 % of the largest magnitude). Saliency (absolute gradients), Grad-CAM, RISE
    and extremal masks are non-negative and keep the evidence colormap."""
    if contrast is not None:
        return True
    if method in EVIDENCE_METHODS:
        return False
    arr = np.asarray(data)
    flat = arr.reshape(-1)
    if flat.size > MAX_SAMPLES:
        flat = flat[:: flat.size // MAX_SAMPLES + 1]
    flat = flat[np.isfinite(flat)]
    if not flat.size:
        return False
    lo, hi = float(flat.min()), float(np.abs(flat).max())
    return lo < 0 and -lo >= 0.01 * hi


def symmetric_limits(maps: list[np.ndarray] | np.ndarray, top: float = 99.0
                     ) -> tuple[float, float]:
    """A colour range symmetric around 0 for signed maps: ``±`` the ``top`` percentile
    of the magnitudes (so 0, "no evidence either way", sits at the colormap's centre)."""
    arrs = maps if isinstance(maps, list) else [maps]
    flat = np.concatenate([np.abs(np.asarray(m, np.float64)).ravel() for m in arrs]) \
        if arrs else np.zeros(1)
    flat = flat[np.isfinite(flat) & (flat > 0)]
    if flat.size > MAX_SAMPLES:
        flat = flat[:: flat.size // MAX_SAMPLES + 1]
    m = float(np.percentile(flat, top)) if flat.size else 1.0
    m = max(m, 1e-6)
    return -m, m


def _pick(value: object, index: int | None) -> str | None:
    """``value`` as text, or its ``index``-th item when it holds one per image."""
    if value is None:
        return None
    if isinstance(value, (str, int, np.integer)):
        return str(value)
    try:
        seq = list(value)  # type: ignore[call-overload]
    except TypeError:
        return str(value)
    if index is None:
        uniq = sorted({str(v) for v in seq})
        return uniq[0] if len(uniq) == 1 else None
    return str(seq[index]) if 0 <= index < len(seq) else None


def well_field(metadata: dict, index: int | None = None) -> str:
    """Where an image comes from on the plate, short enough for a layer name: the well
    and site the plate loader recorded (per crop: ``index`` picks one; without it, the
    one well all images share), else the well/site part of the file name the reader
    kept (``image_id``, e.g. ``01-A-01``), else ``""``. ``"A01 s2"``."""
    md = metadata or {}
    well = _pick(md.get("well"), index)
    if well:
        site = _pick(md.get("site"), index)
        if site is None and "field" in md and isinstance(md.get("field_names"), dict):
            site = None  # a field index names a file, not a site: leave it out
        return f"{well} s{site}" if site not in (None, "") else well
    key = md.get("image_id")
    return str(key) if key else ""
