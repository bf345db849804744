"""The format registry (io.image_formats): suffixes listed once, napari.yaml agrees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_attribution
from napari_attribution.io import formats, readers
from napari_attribution.io.image_formats import (
    BATCH_READER,
    FORMATS,
    IMAGE_READER,
    format_of,
    has_suffix,
    napari_patterns,
    suffixes,
)

yaml = pytest.importorskip("yaml")


def _manifest_patterns() -> dict[str, list[str]]:
    manifest = Path(napari_attribution.__file__).with_name("napari.yaml")
    readers_ = yaml.safe_load(manifest.read_text())["contributions"]["readers"]
    return {r["command"]: list(r["filename_patterns"]) for r in readers_}


def test_napari_yaml_patterns_match_the_registry():
    declared = _manifest_patterns()
    # every reader command of the manifest, and only those, is named by a format
    assert set(declared) == {f.napari_command for f in FORMATS.values() if f.napari_command}
    for command, patterns in declared.items():
        assert sorted(patterns) == sorted(napari_patterns(command)), command
    assert napari_patterns(IMAGE_READER) == ["*.tif", "*.tiff", "*.czi", "*.nd2", "*.lif"]
    assert napari_patterns(BATCH_READER) == ["*.zarr"]


def test_readers_take_their_suffixes_from_the_registry():
    assert readers.TIFF_SUFFIXES == FORMATS["tiff"].suffixes == suffixes("tiff")
    assert set(formats.BIOIO_SUFFIXES) == {".czi", ".nd2", ".lif", ".zarr"}
    assert formats.PLUGINS[".nd2"] == "bioio-nd2"
    assert len(set(suffixes())) == len(suffixes())  # no suffix belongs to two formats
    assert format_of("A01.OME.TIF").name == "tiff" and format_of("x.png") is None
    assert has_suffix("scan.CZI", "czi") and not has_suffix("scan.czi", "tiff")
    for f in FORMATS.values():  # every reader function exists
        assert callable(f.load_reader())


def test_napari_reader_offers_itself_by_registry(tmp_path):
    from napari_attribution._reader import get_reader, read_layers

    path = tmp_path / "img.TIFF"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint16))
    assert get_reader(str(path)) is read_layers
    assert get_reader(str(tmp_path / "img.png")) is None
    assert get_reader([str(path), str(tmp_path / "b.png")]) is None
