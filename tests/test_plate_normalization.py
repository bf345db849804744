"""Normalisation names and where they are applied: plate crops, bundles, explain, npz."""

from __future__ import annotations

import numpy as np
import pytest

from napari_attribution.cli import main
from napari_attribution.core.data.normalization import PercentileNormalizer, canonical_mode
from napari_attribution.core.runtime.errors import InputError
from plate_factory import PATTERN, nfkb_pair


def test_names_and_old_names():
    assert canonical_mode("per-field") == "per_field"
    with pytest.warns(DeprecationWarning, match="per_crop"):
        assert PercentileNormalizer("per_image").mode == "per_crop"
    with pytest.warns(DeprecationWarning, match="per_dataset"):
        assert canonical_mode("per_plate") == "per_dataset"
    assert canonical_mode("per_image", context="field", warn=False) == "per_field"
    # bundles written before the rename load without a warning, as per crop
    assert PercentileNormalizer.from_dict({"mode": "per_image"}).mode == "per_crop"
    with pytest.raises(InputError, match="per_field, per_crop, per_dataset, none"):
        canonical_mode("per_well")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A per-field model trained on a plate, saved and loaded back."""
    import napari_attribution as na
    from napari_attribution.io.bundle import load_bundle

    tmp = tmp_path_factory.mktemp("norm")
    root = nfkb_pair(tmp / "plate", size=160, n=24)
    plate = na.load_plate(root, PATTERN, channels=["DNA", "NFKB"], plate_map=root / "map.csv")
    data = plate.sample(crop_size=32, downsample=1, masks=False)
    res = na.train(data, epochs=1, device="cpu", ablation_check=False)
    path = na.save_bundle(tmp / "m.safetensors", res)
    return plate, data, load_bundle(path)


def test_bundle_round_trip_and_raw_fields_prepared_as_in_training(trained):
    plate, data, bundle = trained
    assert bundle.normalizer.mode == "per_field"
    assert bundle.provenance["normalization"]["mode"] == "per_field"
    assert bundle.provenance["data"]["input_normalization"]["mode"] == "per_field"
    # a raw field prepared by the bundle gives exactly the training crops
    i = 5
    fov = next(f for f in plate.fields if f.well == data.metadata["well"][i])
    raw = plate.read_field(fov)
    prepared = bundle.prepare(raw)
    y, x = data.metadata["y"][i], data.metadata["x"][i]
    np.testing.assert_allclose(prepared[:, y:y + 32, x:x + 32], data.images[i], atol=1e-6)
    # ... and not what a per-dataset normaliser fitted on the crops would give
    other = PercentileNormalizer("per_dataset").fit(data.images)(raw)
    assert not np.allclose(other, prepared, atol=1e-3)


def test_explain_applies_the_bundle_normalisation(trained, tmp_path):
    import tifffile

    import napari_attribution as na
    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.core.runtime.progress import run_generator

    plate, _, bundle = trained
    raw = plate.read_field(plate.fields[0])
    want = PercentileNormalizer("per_field")(raw[None])
    np.testing.assert_allclose(na.load_model(bundle.path).prepare(raw[None]), want, atol=1e-6)
    api = na.explain(bundle, raw, method="saliency", device="cpu")
    size = na.load_model(bundle.path).input_size  # a field is explained in crop-sized tiles
    assert size is not None and size < raw.shape[-1]
    core = run_generator(explain(bundle.model, want, method="saliency", device="cpu",
                                 input_size=size))
    np.testing.assert_allclose(api.maps, core.maps, rtol=1e-5, atol=1e-7)
    # the command line on a raw field file, too
    tifffile.imwrite(tmp_path / "field.tif", raw.astype(np.uint16))
    assert main(["explain", str(bundle.path), str(tmp_path / "field.tif"), "--method",
                 "saliency", "--device", "cpu", "-o", str(tmp_path / "out.ome.tif")]) == 0
    from napari_attribution.io.writers import read_attribution_tiff

    maps, meta = read_attribution_tiff(tmp_path / "out.ome.tif")
    np.testing.assert_allclose(np.squeeze(maps), np.squeeze(core.maps), rtol=1e-4,
                               atol=1e-6)


def _npz(path, images, labels, **extra):
    np.savez(path, images=images, labels=labels, channel_names=np.array(["a", "b"]),
             **extra)
    return path


def test_npz_declares_its_normalisation(tmp_path, capsys):
    from napari_attribution.io.bundle import load_bundle

    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 2, 12, 12)).astype(np.float32)
    labels = np.arange(40) % 2
    images[labels == 1, 1] += 1.0
    base = ["train", "--epochs", "1", "--device", "cpu", "-q", "--no-augment"]
    declared = _npz(tmp_path / "d.npz", images, labels, normalization="per_field")
    assert main([*base, "--npz", str(declared), "-o", str(tmp_path / "d.safetensors")]) == 0
    b = load_bundle(tmp_path / "d.safetensors")
    assert b.normalizer.mode == "per_field"
    assert not any("does not say how" in w for w in b.provenance["warnings"])
    assert b.provenance["data"]["input_normalization"]["declared_by"].startswith("npz key")

    raw = _npz(tmp_path / "r.npz", images, labels)
    assert main([*base, "--npz", str(raw), "-o", str(tmp_path / "r.safetensors")]) == 0
    assert "caution [data-warning]" in capsys.readouterr().out
    b = load_bundle(tmp_path / "r.safetensors")
    assert b.normalizer.mode == "per_dataset" and b.normalizer.lo is not None
    assert "does not say how its images were normalised" in b.provenance["warnings"][0]

    assert main([*base, "--npz", str(raw), "--input-normalization", "per_crop",
                 "-o", str(tmp_path / "c.safetensors")]) == 0
    assert load_bundle(tmp_path / "c.safetensors").normalizer.mode == "per_crop"
    # normalising again on top of a declared normalisation is refused
    assert main([*base, "--npz", str(declared), "--normalization", "per_dataset",
                 "-o", str(tmp_path / "x.safetensors")]) == 1
    assert "already normalised per_field" in capsys.readouterr().err
    # raw images normalised per crop in training, by the new name
    assert main([*base, "--npz", str(raw), "--input-normalization", "none",
                 "--normalization", "per_crop", "-o", str(tmp_path / "p.safetensors")]) == 0
    assert load_bundle(tmp_path / "p.safetensors").normalizer.mode == "per_crop"


def test_plate_crops_are_not_normalised_twice(trained):
    """Crops cut from per-field normalised fields go to the model as they are, through
    every entry point that takes a dataset (ImageSet or FieldCrops)."""
    import torch

    import napari_attribution as na

    plate, data, bundle = trained
    np.testing.assert_array_equal(bundle.prepare(data), data.images)
    fc = next(iter(plate.iter_crops(crop_size=32, downsample=1)))
    assert fc.normalization == "per_field"
    with torch.no_grad():
        direct = bundle.model.eval()(torch.from_numpy(fc.images)).numpy()
    np.testing.assert_allclose(bundle.predict_logits(fc), direct, atol=1e-5)
    # raw crops are normalised; crops normalised another way are refused
    raw = plate.sample(crop_size=32, downsample=1, masks=False, normalization="none")
    assert not np.allclose(bundle.prepare(raw), raw.images)
    other = plate.sample(crop_size=32, downsample=1, masks=False,
                         normalization="per_dataset")
    with pytest.raises(InputError, match="normalised per_dataset, but the model expects"):
        bundle.prepare(other)
    imp = na.channel_importance(bundle, data)
    assert imp.channel_names == ["DNA", "NFKB"]
