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
