"""The image formats the package reads: one record per format, the one place where a
file suffix is listed.

:func:`~.readers.read_image`, the napari reader (``_reader.get_reader``), bioio's
plugins (:mod:`.formats`) and plate scanning all look suffixes up here. A leaf module:
it imports nothing of the package (reader functions are named as ``"module:function"``
and imported when used), so every reader may import it. ``napari.yaml`` is read by npe2
without importing Python, so it repeats the napari patterns; a test checks that it
agrees with :func:`napari_patterns`.

Adding a format: one :class:`ImageFormat` in :data:`FORMATS` (a reader function with
the signature of :func:`~.formats.read_image_bioio`), and its patterns in
``napari.yaml`` when napari should open it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

#: npe2 command of the image reader (one layer per channel)
IMAGE_READER = "napari-attribution.get_reader"
#: npe2 command of the batch result store reader
BATCH_READER = "napari-attribution.get_batch_reader"


@dataclass(frozen=True)
class ImageFormat:
    """One image format: its suffixes and what reads it."""

    #: short name (``"tiff"``, ``"czi"`` ...)
    name: str
    #: lower-case file suffixes with the dot
    suffixes: tuple[str, ...]
    #: ``"module:function"`` of the function that reads one file of it into ``ImageData``
    reader: str
    #: npe2 command that opens it in napari (None: napari is not offered it)
    napari_command: str | None = None
    #: the bioio plugin package that reads it (None: read without bioio)
    bioio_plugin: str | None = None
    #: a folder (OME-Zarr) rather than a file
    folder: bool = False

    def load_reader(self) -> Any:
        """The reader function, imported now."""
        module, _, name = self.reader.partition(":")
        return getattr(import_module(module), name)


_BIOIO = "napari_attribution.io.formats:read_image_bioio"

FORMATS: dict[str, ImageFormat] = {f.name: f for f in (
    ImageFormat("tiff", (".tif", ".tiff"), "napari_attribution.io.readers:read_image",
                IMAGE_READER),
    ImageFormat("czi", (".czi",), _BIOIO, IMAGE_READER, "bioio-czi"),
    ImageFormat("nd2", (".nd2",), _BIOIO, IMAGE_READER, "bioio-nd2"),
    ImageFormat("lif", (".lif",), _BIOIO, IMAGE_READER, "bioio-lif"),
    # OME-NGFF images are read with zarr (io.ngff) before suffixes are looked at; other
    # .zarr folders go through bioio. In napari a .zarr folder is a batch result store.
    ImageFormat("ome-zarr", (".zarr",), _BIOIO, BATCH_READER, "bioio-ome-zarr", folder=True),
)}


def suffixes(*names: str) -> tuple[str, ...]:
    """The suffixes of the formats ``names`` (all formats when none is given)."""
    chosen = [FORMATS[n] for n in names] if names else list(FORMATS.values())
    return tuple(s for f in chosen for s in f.suffixes)


def format_of(path: str | Path) -> ImageFormat | None:
    """The format a path's suffix names, or None."""
    suffix = Path(str(path)).suffix.lower()
    for f in FORMATS.values():
        if suffix in f.suffixes:
            return f
    return None


def has_suffix(path: str | Path, *names: str) -> bool:
    """True when ``path`` ends in a suffix of one of the formats ``names``."""
    return str(path).lower().endswith(suffixes(*names))


def bioio_formats() -> list[ImageFormat]:
    """The formats read through bioio."""
    return [f for f in FORMATS.values() if f.bioio_plugin is not None]


def napari_patterns(command: str) -> list[str]:
    """``filename_patterns`` of the npe2 reader ``command`` (as napari.yaml lists them)."""
    return [f"*{s}" for f in FORMATS.values() if f.napari_command == command
            for s in f.suffixes]
