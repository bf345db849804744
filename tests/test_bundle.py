"""Model bundles: round trip, provenance, and clear errors for bad files."""

import json
import os

import numpy as np
import pytest
import torch

from napari_attribution.core.runtime.errors import BundleError
from napari_attribution.io.bundle import load_bundle, save_training_result


@pytest.fixture()
def bundle_path(tmp_path, trained_cells):
    return save_training_result(tmp_path / "model", trained_cells)


def test_round_trip_preserves_everything(bundle_path, trained_cells, cell_data):
    assert bundle_path.suffix == ".safetensors"
    b = load_bundle(bundle_path)
    assert b.channel_names == cell_data.channel_names
    assert b.class_names == cell_data.class_names
    assert b.config == trained_cells.model_config
    assert b.normalizer.to_dict() == trained_cells.normalizer.to_dict()
    assert len(b.sha256) == 64
    # The usual permissions (umask), not owner-only: bundles are shared with colleagues.
    umask = os.umask(0)
    os.umask(umask)
    assert bundle_path.stat().st_mode & 0o777 == 0o666 & ~umask
    prov = b.provenance
    assert prov["method"] == "DCMIX" and prov["seed"] == 0
    assert prov["train_config"]["epochs"] == 12
    np.testing.assert_allclose(b.importance.overall, trained_cells.importance.overall)
    x = torch.from_numpy(trained_cells.normalizer(cell_data.images[:8]))
    with torch.no_grad():
        torch.testing.assert_close(b.model(x), trained_cells.model.eval()(x))
    probs = b.predict_proba(cell_data.images[:8])
    assert probs.shape == (8, 2)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    logits = b.predict_logits(cell_data.images[:8])
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), probs,
                               rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        direct = trained_cells.model(x).numpy()
    np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-5)


def test_wrong_channel_count_names_both_counts(bundle_path):
    b = load_bundle(bundle_path)
    with pytest.raises(BundleError, match="3 channel.*trained on 4"):
        b.predict_proba(np.zeros((1, 3, 32, 32), np.float32))


def test_missing_truncated_and_foreign_files(tmp_path, bundle_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bundle_path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="not a readable"):
        load_bundle(truncated)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(BundleError, match="not a readable"):
        load_bundle(text)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(BundleError, match="not a napari-attribution bundle"):
        load_bundle(other)


def test_pickle_file_is_rejected_without_running_it(tmp_path):
    evil = tmp_path / "model.pt"
    torch.save({"x": 1}, evil)
    with pytest.raises(BundleError):
        load_bundle(evil)


def test_inconsistent_weights_are_reported(tmp_path, bundle_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(bundle_path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    m = json.loads(meta["napari_attribution"])
    m["config"]["n_channels"] = 5
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={"napari_attribution": json.dumps(m)})
    with pytest.raises(BundleError, match="inconsistent"):
        load_bundle(bad)


def _tampered(tmp_path, bundle_path, change, name="t.safetensors"):
    """A copy of the bundle whose JSON metadata ``change(meta)`` edited."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(bundle_path), "pt") as f:
        meta = json.loads(f.metadata()["napari_attribution"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    out = tmp_path / name
    save_file(state, str(out), metadata={"napari_attribution": json.dumps(meta)})
    return out


@pytest.mark.parametrize("key, value, match", [
    ("width", 1_000_000, r"config.width = 1000000 is outside the sane range 1\.\.65536"),
    ("width", 1e6, r"config.width must be int"),
    ("width", 0, r"config.width = 0 is outside"),
    ("n_heads", -3, r"config.n_heads = -3 is outside"),
    ("n_classes", 10**9, r"config.n_classes = 1000000000 is outside"),
    ("width", 60_000, r"weight .* has shape .* the architecture expects"),  # in range: the
])                                                                     # weights disagree
def test_absurd_geometry_is_refused_before_any_network_is_built(tmp_path, bundle_path, key,
                                                                value, match):
    import resource

    bad = _tampered(tmp_path, bundle_path, lambda m: m["config"].__setitem__(key, value))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BundleError, match=match):
        load_bundle(bad)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB


def test_nan_or_misshapen_importance_is_refused(tmp_path, bundle_path, capsys):
    from napari_attribution.cli import main

    def nan(m):
        m["importance"]["weights"][0][1] = float("nan")

    bad = _tampered(tmp_path, bundle_path, nan)
    with pytest.raises(BundleError, match=r"importance 'weights' holds NaN"):
        load_bundle(bad)
    assert main(["channels", str(bad)]) == 1  # was a raw ValueError traceback
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds NaN or infinite values" in err
    short = _tampered(tmp_path, bundle_path,
                      lambda m: m["importance"].__setitem__("overall", [0.5, 0.5]), "s.safetensors")
    with pytest.raises(BundleError, match=r"importance 'overall' has shape \(2,\)"):
        load_bundle(short)


def test_malformed_reports_are_left_out_with_a_warning(tmp_path, bundle_path, capsys):
    from napari_attribution.cli import main

    bad = _tampered(tmp_path, bundle_path,
                    lambda m: m["validation"].pop("accuracy"))
    bundle = load_bundle(bad)  # the model itself is fine
    assert "validation" not in bundle.checks and "shortcut_check" in bundle.checks
    assert any("validation report is malformed (it has no 'accuracy')" in w
               for w in bundle.warnings)
    assert main(["channels", str(bad)]) == 0  # was a raw KeyError traceback
    out = capsys.readouterr()
    assert "validation report is malformed" in " ".join(out.out.split())
    assert "Traceback" not in out.err
    for change, what in [
            (lambda m: m["validation"].__setitem__("confusion_matrix", [[1, 2]]),
             "'confusion_matrix' must be 2 x 2 numbers"),
            (lambda m: m.__setitem__("posthoc_importance", {"method": 1}),
             "a list of objects"),
            (lambda m: m["shortcut_check"].__setitem__("chance", "half"),
             "'chance' must be int or float")]:
        b = load_bundle(_tampered(tmp_path, bundle_path, change, "r.safetensors"))
        assert any(what in w for w in b.warnings), (what, b.warnings)
    assert load_bundle(bundle_path).checks.keys() >= {"validation", "shortcut_check"}
    assert not any("malformed" in w for w in load_bundle(bundle_path).warnings)
