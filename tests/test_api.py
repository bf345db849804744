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
