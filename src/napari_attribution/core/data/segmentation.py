"""Nuclei segmentation and object geometry: the built-in Otsu segmentation, external label
images (cellpose, stardist, a napari Labels layer), object centres and crop geometry.

Everything here works on plain arrays (numpy, scipy, scikit-image); reading files is the
business of :mod:`napari_attribution.io`.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from ..runtime.errors import InputError

#: Crop geometry targets: a nucleus about this many pixels across after downsampling ...
TARGET_NUCLEUS_PX = 8.0
#: ... and crops about this many nucleus diameters wide (cell body around the nucleus).
CROP_DIAMETERS = 6.0


def segment_nuclei(channel: np.ndarray, sigma: float = 2.0, min_area: int = 40,
                   min_distance: int = 10, diameter: float | None = None) -> np.ndarray:
    """Label nuclei in one channel: Gaussian blur, Otsu threshold, watershed split.

    The defaults suit nuclei about 16 px across; ``diameter`` (pixels) scales all three
    parameters instead (``sigma = d/8``, ``min_area`` = a fifth of a disc, ``min_distance
    = 0.6 d``). Returns an int32 label image (0 = background).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    if diameter is not None:
        if not diameter > 2:
            raise InputError(f"nucleus diameter must be more than 2 px; got {diameter}")
        sigma = diameter / 8
        min_area = max(4, int(0.2 * math.pi * (diameter / 2) ** 2))
        min_distance = max(2, int(round(0.6 * diameter)))
    img = gaussian(np.asarray(channel, np.float32), sigma=sigma, preserve_range=True)
    if float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, np.int32)
    fg = img > threshold_otsu(img)
    fg = ndi.binary_fill_holes(fg)
    if "max_size" in inspect.signature(remove_small_objects).parameters:
        fg = remove_small_objects(fg, max_size=min_area - 1)
    else:  # older scikit-image
        fg = remove_small_objects(fg, min_size=min_area)
    dist = ndi.distance_transform_edt(fg)
    cc, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=cc, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def check_labels_image(labels: np.ndarray, shape: tuple[int, int], what: str = "labels"
                       ) -> np.ndarray:
    """An external label image (0 = background, one integer per object) as int32,
    checked against the field's (H, W)."""
    arr = np.asarray(labels)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D label image; got shape {arr.shape}")
    if tuple(arr.shape) != tuple(shape):
        raise InputError(f"{what} is {arr.shape[0]}x{arr.shape[1]} but the field of view is "
                         f"{shape[0]}x{shape[1]}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError(f"{what} must hold integer labels (0 = background); got "
                             f"{arr.dtype} values")
    if arr.min() < 0:
        raise InputError(f"{what} has negative labels; 0 is background, objects are 1, 2 ...")
    return arr.astype(np.int32)


def object_centres(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, centres): the label ids present and their (y, x) centroids, shape (n, 2)."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids, np.zeros((0, 2))
    centres = np.asarray(ndi.center_of_mass(labels > 0, labels, ids), float).reshape(-1, 2)
    return ids, centres


def object_means(image: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None
                 ) -> np.ndarray:
    """Mean of each channel of (C, H, W) ``image`` inside each object: shape (n, C)."""
    from scipy import ndimage as ndi

    if ids is None:
        ids = np.unique(labels)
        ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, image.shape[0]))
    return np.stack([np.asarray(ndi.mean(c, labels, ids), float) for c in image], axis=1)


def median_diameter(label_images: list[np.ndarray]) -> float:
    """Median equivalent diameter (px) of the objects in the given label images."""
    areas = []
    for lab in label_images:
        counts = np.bincount(np.asarray(lab).ravel())
        areas.append(counts[1:][counts[1:] > 0])
    all_areas = np.concatenate(areas) if areas else np.zeros(0)
    if all_areas.size == 0:
        raise InputError("no nuclei found to measure their size; give crop_size and "
                         "downsample, or check the nuclei channel")
    return float(2 * math.sqrt(float(np.median(all_areas)) / math.pi))


def crop_geometry(diameter: float, crop_size: int | None = None,
                  downsample: int | None = None) -> tuple[int, int]:
    """(crop_size, downsample) for nuclei ``diameter`` px across, filling what is not given.

    Downsampling brings a nucleus to about 8 px (``TARGET_NUCLEUS_PX``); the crop spans
    about 6 nucleus diameters (``CROP_DIAMETERS``: the cell around it), rounded to a
    multiple of 8 and at least 16 px. BBBC013 (nuclei ~16 px) gives 48 px at 2x.
    """
    if downsample is None:
        downsample = max(1, int(round(diameter / TARGET_NUCLEUS_PX)))
    if crop_size is None:
        crop_size = max(16, int(round(CROP_DIAMETERS * diameter / downsample / 8)) * 8)
    return int(crop_size), int(downsample)


# ---------------------------------------------------------------------------------------
# Which channel holds the nuclei, and does its segmentation look like nuclei?

#: Names biologists give a DNA / nuclear stain, matched case-insensitively as whole
#: words or word prefixes of a channel name ("Hoechst33342", "DAPI_405", "SiR-DNA",
#: "H2B-mCherry", "nuclei"). Order is preference: a dye name beats a generic word.
NUCLEAR_STAIN_NAMES: tuple[str, ...] = (
    "hoechst", "dapi", "draq5", "draq7", "sirdna", "sir-dna", "spydna", "nucblue",
    "nucspot", "nucred", "syto", "dna", "h2b", "nuclei", "nucleus", "nuclear", "nuc")


def _tokens(name: str) -> list[str]:
    """Lower-case words of a channel name: split at anything but letters and digits, also
    at lower-to-upper case changes ("Ch2Hoechst" -> ch2, hoechst), and the whole name."""
    import re

    words = [w for w in re.split(r"[^A-Za-z0-9]+", str(name)) if w]
    parts = [p for w in words for p in re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", w).split()]
    return [w.lower() for w in words + parts] + [str(name).lower()]


def nuclear_stain_rank(name: str) -> int | None:
    """Position in :data:`NUCLEAR_STAIN_NAMES` of the first name that a word of ``name``
    starts with (lower = more specific), or None when the name is no nuclear stain."""
    words = _tokens(name)
    for rank, stain in enumerate(NUCLEAR_STAIN_NAMES):
        key = stain.replace("-", "")
        if any(w.replace("-", "").startswith(key) for w in words):
            # "nuc" only as a whole word or "nucl..."-less prefixes like NucBlue above
            if stain == "nuc" and not any(w == "nuc" for w in words):
                continue
            return rank
    return None


def choose_nuclei_channel(channel_names: list[str], given: str | int | None = None
                          ) -> tuple[int, str]:
    """(index, how) of the channel to segment nuclei on.

    ``how`` is ``"given"`` (``given`` names or numbers it), ``"named"`` (a channel whose
    name is a DNA / nuclear stain, :data:`NUCLEAR_STAIN_NAMES`; the most specific wins,
    then the first) or ``"fallback"`` (no such name: the last channel, a guess).
    """
    names = [str(n) for n in channel_names]
    if given is not None:
        if isinstance(given, str) and not given.lstrip("-").isdigit():
            if given in names:
                return names.index(given), "given"
            lower = [n.lower() for n in names]
            if given.lower() in lower:
                return lower.index(given.lower()), "given"
            raise InputError(f"no channel {given!r}; the channels are {names}")
        k = int(given)
        if not 0 <= k < len(names):
            raise InputError(f"channel index {k} out of range for {len(names)} channels")
        return k, "given"
    ranks = [(r, i) for i, n in enumerate(names) if (r := nuclear_stain_rank(n)) is not None]
    if ranks:
        return min(ranks)[1], "named"
    return len(names) - 1, "fallback"


def object_areas(labels: np.ndarray) -> np.ndarray:
    """Area (px) of every object of a label image."""
    counts = np.bincount(np.asarray(labels).ravel())
    return counts[1:][counts[1:] > 0]


def object_stats(label_images: list[np.ndarray] | None = None,
                 areas: list[np.ndarray] | None = None) -> dict[str, float]:
    """Objects in the label images (or their :func:`object_areas`): count, objects per
    image, median area and median equivalent diameter (px)."""
    if areas is None:
        areas = [object_areas(lab) for lab in label_images or []]
    a = np.concatenate(areas) if areas else np.zeros(0)
    med = float(np.median(a)) if a.size else 0.0
    return {"objects": int(a.size), "per_field": a.size / max(1, len(areas)),
            "median_area": med, "median_diameter": 2 * math.sqrt(med / math.pi)}


#: A nuclei segmentation is "fragmented" when another channel's objects are at least
#: this many times larger in area ...
FRAGMENT_AREA_RATIO = 3.0
#: ... while the nuclei channel gives at least this many times more objects.
FRAGMENT_COUNT_RATIO = 1.5
#: Objects this many times smaller in area than those of a channel named like a nuclear
#: stain are not nuclei (foci or a nuclear-body marker merged into blobs) ...
SMALLER_THAN_NAMED = 1.5
#: ... nor are objects this many times fewer (a marker present in some cells only).
FEWER_THAN_NAMED = 1.3


def nuclei_plausibility(survey: dict[str, dict[str, float]], chosen: str) -> str | None:
    """Why segmenting on ``chosen`` does not look like nuclei, or None when it does.

    ``survey`` maps each channel to :func:`object_stats` of the built-in segmentation of
    the same fields. Nuclei come one per cell, so the channel is implausible when

    * it gives no object;
    * its name is no nuclear stain, and it gives many more, much smaller objects than
      another channel (at least ``FRAGMENT_COUNT_RATIO`` x the objects, each
      ``FRAGMENT_AREA_RATIO`` x smaller: foci, speckles, puncta), or a channel named
      like a nuclear stain gives objects at least ``SMALLER_THAN_NAMED`` x larger or
      ``FEWER_THAN_NAMED`` x more objects (a foci channel chosen instead of Hoechst).

    Counts and sizes alone cannot tell foci inside nuclei from nuclei inside (touching,
    merged) cell bodies, so a channel named like a nuclear stain is only doubted when
    it gives no object: on a dense field the cell-body channel gives fewer, larger
    objects, and that is no evidence against the DNA stain.
    """
    me = survey[chosen]
    if me["objects"] == 0:
        return f"no object was found on {chosen}"
    if nuclear_stain_rank(chosen) is not None:
        return None
    for other, st in survey.items():
        if other == chosen or st["objects"] == 0:
            continue
        if (st["median_area"] >= FRAGMENT_AREA_RATIO * me["median_area"]
                and me["objects"] >= FRAGMENT_COUNT_RATIO * st["objects"]):
            return (f"{chosen} gives {me['per_field']:.0f} objects per field of median "
                    f"area {me['median_area']:.0f} px, {other} gives "
                    f"{st['per_field']:.0f} of {st['median_area']:.0f} px: many small "
                    f"objects, as foci or speckles give, not one nucleus per cell")
    for other, st in survey.items():
        if other == chosen or nuclear_stain_rank(other) is None:
            continue
        if st["median_area"] >= SMALLER_THAN_NAMED * me["median_area"]:
            return (f"its objects (median area {me['median_area']:.0f} px) are "
                    f"{st['median_area'] / max(me['median_area'], 1):.1f}x smaller "
                    f"than those of {other} ({st['median_area']:.0f} px), whose name "
                    "is a nuclear stain")
        if st["objects"] >= FEWER_THAN_NAMED * me["objects"]:
            return (f"it gives {me['per_field']:.0f} objects per field, {other} (whose "
                    f"name is a nuclear stain) {st['per_field']:.0f}: a marker present "
                    "in some nuclei only")
    return None
