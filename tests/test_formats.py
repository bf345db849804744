"""More formats through bioio (optional): the adapter keeps the TIFF reader's rules."""

import numpy as np
import pytest
import tifffile

from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.readers import read_image

bioio = pytest.importorskip("bioio")
pytest.importorskip("bioio_tifffile")
from napari_attribution.io.formats import read_image_bioio  # noqa: E402


@pytest.fixture()
def ome(tmp_path):
    arr = np.random.default_rng(0).integers(0, 999, (2, 3, 20, 24)).astype(np.uint16)
    path = tmp_path / "zc.ome.tif"
    tifffile.imwrite(path, arr, ome=True, metadata={"axes": "ZCYX"})
    return path, arr


def test_bioio_reads_what_the_tiff_reader_reads(ome):
    path, arr = ome
    via_bioio = read_image_bioio(path)
    direct = read_image(path)
    assert via_bioio.n_channels == direct.n_channels == 3
    np.testing.assert_array_equal(via_bioio.data, direct.data)  # (C, Z, Y, X) both
    np.testing.assert_array_equal(via_bioio.as_chw("max"), arr.max(axis=0))
    lazy = read_image_bioio(path, lazy=True)
    assert type(lazy.raw).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(lazy.data), direct.data)


def test_bioio_refuses_to_guess_a_scene_and_checks_the_size(tmp_path, ome):
    path = tmp_path / "two_scenes.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(np.zeros((16, 16), np.uint16))
        w.write(np.ones((8, 8), np.uint16))
    with pytest.raises(InputError, match="2 scenes.*scene=N"):
        read_image_bioio(path)
    assert read_image_bioio(path, scene=1).raw.shape == (8, 8)
    with pytest.raises(InputError, match="more than the 1.0 KiB limit"):
        read_image_bioio(ome[0], max_bytes="1K")


def test_formats_without_their_plugin_say_what_to_install(tmp_path):
    fake = tmp_path / "scan.czi"
    fake.write_bytes(b"not really a CZI file")
    with pytest.raises(InputError, match="bioio-czi"):
        read_image(fake)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.nd2")


def test_napari_reader_offers_bioio_formats(tmp_path):
    from napari_attribution._reader import get_reader

    assert get_reader(str(tmp_path / "a.czi")) is not None
    assert get_reader([str(tmp_path / "a.czi"), str(tmp_path / "b.czi")]) is None
    assert get_reader(str(tmp_path / "a.png")) is None
