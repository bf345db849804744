"""SamplingConfig: one record of the sampling settings (overrides checked, JSON round trip,
same crops as the keyword arguments gave before it existed)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from napari_attribution import SamplingConfig
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.io.plate import DEFAULT_MAX_OBJECTS, Plate, sample_plate
from plate_factory import PATTERN, nfkb_pair


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = nfkb_pair(tmp_path_factory.mktemp("cfg") / "p", size=256, n=30, seed=3)
    return Plate.scan(root, PATTERN, plate_map=root / "map.csv")


def _digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.round(images.astype(np.float64), 4).tobytes()).hexdigest()[:16]


# Crops of this plate as the keyword-argument sample_plate gave them before SamplingConfig
# (commit 7225633): shape, labels per class, crop geometry and a digest of the pixels.
BEFORE = [
    ({}, (44, 2, 40, 40), (20, 24), (40, 2), "d29e3cf56a7a1c26"),
    ({"crops": "grid", "crop_size": 32, "per_image": None, "seed": 5},
     (128, 2, 32, 32), (64, 64), (32, 1), "25683c79619077da"),
    ({"crops": "random", "crop_size": 20, "per_image": 3, "downsample": 2, "seed": 1},
     (5, 2, 20, 20), (3, 2), (20, 2), "03f36cb1e4fc1256"),
]


@pytest.mark.parametrize(("kw", "shape", "counts", "geometry", "digest"), BEFORE)
def test_crops_equal_those_sampled_before_the_config(plate, kw, shape, counts, geometry,
                                                     digest):
    for data in (plate.sample(**kw), sample_plate(plate, SamplingConfig(**kw))):
        md = data.metadata
        assert data.images.shape == shape
        assert tuple(np.bincount(data.labels)) == counts
        assert (md["crop_size"], md["downsample"]) == geometry
        assert _digest(data.images) == digest


def test_unknown_override_names_the_key(plate):
    with pytest.raises(InputError, match="'crop_sise'") as err:
        plate.sample(crop_sise=32)
    assert "crop_size" in str(err.value)  # the known names are listed
    with pytest.raises(InputError, match="'bogus', 'nope'"):
        SamplingConfig().with_overrides({"nope": 1, "bogus": 2})
    with pytest.raises(InputError, match="'size'"):
        plate.iter_crops(size=3)


def test_iter_crops_refuses_gathering_settings(plate):
    with pytest.raises(InputError, match="max_objects"):
        next(plate.iter_crops(max_objects=5))


def test_round_trip_through_json():
    cfg = SamplingConfig(crops="grid", crop_size=32, wells=["A01", "A02"],
                         val_wells=["A02"], percentiles=[2, 98], label_rule="PH3>otsu",
                         objects_columns={"label": "Phenotype"}, max_objects=None,
                         time_budget=1.5, nuclei_channel=1)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert SamplingConfig.from_dict(d) == cfg
    assert d["wells"] == ["A01", "A02"] and d["percentiles"] == [2, 98]
    assert SamplingConfig.from_dict(SamplingConfig().to_dict()) == SamplingConfig()
    assert SamplingConfig().max_objects == DEFAULT_MAX_OBJECTS
    with pytest.raises(InputError, match="'extra'"):
        SamplingConfig.from_dict({**d, "extra": 1})
    with pytest.raises(InputError, match="list of names"):
        SamplingConfig(wells="A01")
    with pytest.raises(InputError, match="max_objects must be at least 1"):
        SamplingConfig(max_objects=0)
    with pytest.raises(InputError, match="time_budget must be a positive"):
        SamplingConfig().with_overrides({"time_budget": 0})


def test_overrides_apply_on_a_given_config_and_a_mode_string():
    base = SamplingConfig(crop_size=24, seed=4)
    assert SamplingConfig.build(base, {"seed": 9}) == SamplingConfig(crop_size=24, seed=9)
    assert SamplingConfig.build("grid", {"crop_size": 8}) == \
        SamplingConfig(crops="grid", crop_size=8)
    assert base.with_overrides({}) is base


def test_settings_are_recorded_for_provenance(plate):
    data = plate.sample(crops="grid", crop_size=32, per_image=None, seed=5)
    recorded = data.metadata["sampling"]["config"]
    assert SamplingConfig.from_dict(recorded) == SamplingConfig(
        crops="grid", crop_size=32, per_image=None, seed=5)
    json.dumps(recorded)  # JSON-ready, as the bundle stores it


def test_the_old_positional_order_still_works(plate):
    """crop mode, crop size, crops per field: as before the config (docs/bbbc013.md)."""
    old = plate.sample("random", 20, 3, downsample=2, seed=1)
    assert _digest(old.images) == BEFORE[2][4]
    first = next(plate.iter_crops("grid", 32, 2, downsample=1))
    assert len(first) == 2 and first.images.shape[-1] == 32
    with pytest.raises(TypeError, match="crop_size"):
        plate.sample("grid", 32, crop_size=16)  # given twice: Python's own error
