"""The scripting API: the verbs a scientist calls from a notebook."""

from __future__ import annotations

import numpy as np
import pytest

import napari_attribution as na
from napari_attribution.core.runtime.errors import InputError


@pytest.fixture(scope="module")
def api_result():
    data = na.sample_cells(n_images=160, size=32, seed=1)
    events = []
    result = na.train(data, epochs=8, batch_size=32, device="cpu", width=16,
                      progress=events.append)
    return data, result, events


def test_lazy_exports_are_listed_and_importable():
    assert {"train", "explain", "channel_importance", "load_bundle"} <= set(dir(na))
    assert na.TrainConfig().epochs == 15
    with pytest.raises(AttributeError):
        na.not_a_verb  # noqa: B018


def test_train_reports_progress_and_finds_the_marker(api_result):
    data, result, events = api_result
    assert events and events[-1].step == events[-1].total
    assert result.train_config.epochs == 8 and result.train_config.width == 16
    imp = result.importance
    assert imp.ranking()[0] == data.metadata["informative_channel"]
    assert imp.as_dict()["Marker"] > 0.5
    # 16 held-out crops per class: one split, no cross-validation, no warning; the
    # Marker phenotype is a note, and the channel verdict names Marker
    assert result.train_config.cv == 1 and result.cross_validation is None
    assert result.warnings == [] and result.verdict.tops["weight"] == "Marker"
    assert {f.severity for f in result.findings} <= {"note"}
    assert result.validation["support"] == {"cytoplasmic": 16, "nuclear": 16}


def test_unknown_training_option_is_named():
    with pytest.raises(InputError, match="epoch_count"):
        na.train(na.sample_cells(n_images=20, size=24), epoch_count=3)


def test_bundle_round_trip_and_importance_from_data(api_result, tmp_path):
    data, result, _ = api_result
    path = na.save_bundle(tmp_path / "m.safetensors", result)
    stored = na.channel_importance(path)
    np.testing.assert_allclose(stored.overall, result.importance.overall, atol=1e-6)
    fresh = na.channel_importance(path, data)
    # the check by ablation agrees with the weights: removing the marker hurts most
    drop = dict(zip(fresh.channel_names, fresh.ablation_accuracy_drop, strict=True))
    assert max(drop, key=drop.get) == "Marker" and drop["Marker"] > 0.2
    with pytest.raises(Exception, match="channel"):
        na.channel_importance(path, data.select_channels([0, 1]))


def test_explain_with_class_name_and_raw_images(api_result, tmp_path):
    data, result, _ = api_result
    path = na.save_bundle(tmp_path / "m.safetensors", result)
    nuclear = np.flatnonzero(data.labels == 1)[:6]
    res = na.explain(path, data.images[nuclear], targets="nuclear", device="cpu")
    assert res.maps.shape == (6, 32, 32)
    assert (res.targets == 1).all()
    # evidence sits where the marker is: on the nuclei of the nuclear class
    nuclei = data.metadata["nuclei"][nuclear].astype(bool)
    pos = np.clip(res.maps, 0, None)
    mass = (pos * nuclei).sum() / pos.sum()
    assert mass > 2 * nuclei.mean()
    one = na.explain(result, data.images[nuclear[0]], method="saliency", device="cpu")
    assert one.maps.shape == (1, 32, 32)
    with pytest.raises(InputError, match="unknown target class .mitotic."):
        na.explain(path, data.images[:2], targets="mitotic")


def _field(data, n: int = 3) -> np.ndarray:
    """A bigger field: ``n`` x ``n`` of the set's images side by side (C, n*S, n*S)."""
    rows = [np.concatenate(list(data.images[r * n:(r + 1) * n]), -1) for r in range(n)]
    return np.concatenate(rows, -2)


def test_crop_trained_bundle_explains_a_field_in_tiles_of_its_training_size(api_result,
                                                                             tmp_path):
    data, result, _ = api_result
    path = na.save_bundle(tmp_path / "m.safetensors", result)
    bundle = na.load_bundle(path)
    assert bundle.provenance["data"]["input_size"] == 32 and bundle.input_size == 32
    field = _field(data)                                            # (4, 96, 96)
    res = na.explain(path, field, device="cpu", steps=2)
    assert res.maps.shape == (1, 96, 96)
    assert res.params["input_size"] == 32 and res.params["tiling"] is not None
    assert res.model["input_size"] == 32
    assert not [f for f in res.all_findings() if f.code == "field-scale"]
    # an old bundle (no input_size recorded): the training images' size is used
    old = na.load_bundle(path)
    del old.provenance["data"]["input_size"]
    assert na.explain(old, field, device="cpu", steps=2).params["input_size"] == 32
    # nothing recorded at all: one pass, and a field-scale caution says so
    del old.provenance["data"]["image_size"]
    res = na.explain(old, field, device="cpu", steps=2)
    assert res.params["input_size"] is None
    codes = [f.code for f in res.all_findings()]
    assert "field-scale" in codes
    assert "field-scale" in [f["code"] for f in res.provenance()["findings"]]
    # images of the training size are explained whole, with no finding
    crops = na.explain(path, data.images[:3], device="cpu", steps=2)
    assert crops.params["input_size"] is None and crops.all_findings() == []


def test_explain_an_imageset_of_prepared_crops(api_result, tmp_path):
    from napari_attribution.io.plate import take

    data, result, _ = api_result
    path = na.save_bundle(tmp_path / "m.safetensors", result)
    sub = take(data, np.arange(4))
    res = na.explain(path, sub, device="cpu", steps=2)
    assert res.maps.shape == (4, 32, 32)
    ref = na.explain(path, data.images[:4], device="cpu", steps=2)
    np.testing.assert_allclose(res.probabilities, ref.probabilities, atol=1e-5)
    # crops normalised the model's way are used as they are
    prepared = take(data, np.arange(4))
    prepared.images = result.normalizer(data.images[:4])
    prepared.metadata = {**prepared.metadata, "normalization": result.normalizer.to_dict()}
    got = na.explain(path, prepared, device="cpu", steps=2)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-5)


def test_swapped_channels_get_a_channel_map_caution(api_result, tmp_path):
    data, result, _ = api_result
    path = na.save_bundle(tmp_path / "m.safetensors", result)
    ref = na.load_bundle(path).provenance["data"]["channel_reference"]
    assert set(ref["channels"]) == set(data.channel_names)
    test = na.sample_cells(n_images=24, size=32, seed=5)
    right = na.explain(path, test.images, device="cpu", method="saliency")
    assert [f for f in right.all_findings() if f.code == "channel-map-suspect"] == []
    swapped = test.images[:, [1, 0, 2, 3]]            # Marker fed as DNA, DNA as Marker
    res = na.explain(path, swapped, device="cpu", method="saliency")
    found = [f for f in res.all_findings() if f.code == "channel-map-suspect"]
    assert found and all(f.severity == "caution" for f in found)
    assert {f.evidence["channel"] for f in found} == {"DNA", "Marker"}
    assert {f.evidence["looks_like"] for f in found} == {"DNA", "Marker"}
