"""The BBBC013 plate through the plate reader (a few wells only, to stay fast)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import BBBC013, requires_bbbc013
from napari_attribution.core.runtime.errors import InputError

pytestmark = [requires_bbbc013, pytest.mark.realdata]

WELLS = ["A01", "B01", "A12", "B12", "A06", "E11"]  # 2 negative, 2 positive, 2 dose wells


@pytest.fixture(scope="module")
def plate():
    from napari_attribution.io.plate import open_bbbc013

    return open_bbbc013(BBBC013)


def test_plate_layout(plate):
    assert len(plate.fields) == 96 and len(plate.wells) == 96
    assert plate.channel_names == ["GFP", "DNA"]
    pm = plate.plate_map
    assert sum(w.control == -1 for w in pm.wells.values()) == 16
    assert sum(w.control == 1 for w in pm.wells.values()) == 8
    assert pm["A01"].label == "cytoplasmic GFP" and pm["A12"].label == "nuclear GFP"
    assert pm["A06"].label is None and pm["A06"].dose == 4.0
    px = plate.read_field(plate.fields[0])
    assert px.shape == (2, 640, 640) and px.dtype == np.float32


def test_load_controls(plate):
    from napari_attribution.io.plate import load_bbbc013

    data = load_bbbc013(BBBC013, wells=WELLS, crop_size=48, downsample=2, per_image=24)
    assert data.channel_names == ["GFP", "DNA"]
    assert data.class_names == ["cytoplasmic GFP", "nuclear GFP"]
    assert set(data.groups) == {"A01", "B01", "A12", "B12"}  # dose wells dropped
    assert len(data) == 4 * 24 and data.images.shape[1:] == (2, 48, 48)
    np.testing.assert_array_equal(data.labels, data.metadata["control"] == 1)
    # crops are centred on nuclei and nuclei cover a plausible share of each crop
    assert data.masks[:, 24, 24].mean() > 0.7  # vs ~0.15 for a random pixel
    assert 0.05 < data.masks.mean() < 0.5
    # the phenotype is in the data: GFP inside vs outside nuclei is higher for positives
    gfp = data.images[:, 0]
    ratio = np.array([g[m].mean() / max(g[~m].mean(), 1e-6)
                      for g, m in zip(gfp, data.masks, strict=True)])
    assert np.median(ratio[data.labels == 1]) > 1.5 * np.median(ratio[data.labels == 0])


def test_load_dose_series_metadata():
    from napari_attribution.io.plate import load_bbbc013, take

    data = load_bbbc013(BBBC013, controls_only=False, wells=WELLS, crop_size=48,
                        downsample=2, per_image=8, masks=False, crops="grid")
    assert set(data.groups) == set(WELLS) and data.masks is None
    md = data.metadata
    dose_wells = ~md["labelled"]
    assert set(md["well"][dose_wells]) == {"A06", "E11"}
    assert set(md["control"][dose_wells]) == {0}
    assert md["dose"][md["well"] == "E11"][0] == 9.0
    ctrl = take(data, np.flatnonzero(md["labelled"]))
    assert set(ctrl.metadata["well"]) == {"A01", "B01", "A12", "B12"}


def test_channel_subset_and_errors():
    from napari_attribution.io.plate import load_bbbc013

    gfp = load_bbbc013(BBBC013, wells=["A01", "A12"], channels=("GFP",), crop_size=32,
                       downsample=2, per_image=4)
    assert gfp.channel_names == ["GFP"] and gfp.masks is not None
    with pytest.raises(InputError, match="channels"):
        load_bbbc013(BBBC013, channels=("RFP",))
