"""One loader, one model object: tampered bundles, .pt2 end to end, no mutation, targets."""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import napari_attribution as na
from napari_attribution.cli import main
from napari_attribution.core.runtime.errors import BundleError, InputError
from napari_attribution.io.writers import read_attribution_tiff


def make_bundle(path):
    """A small untrained DCMIX bundle: channels dna, gfp; classes neg, pos."""
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(0)
    model = DCMIXClassifier(ModelConfig(2, 2, width=8)).eval()
    return save_bundle(path, model, ["dna", "gfp"], ["neg", "pos"],
                       PercentileNormalizer(mode="per_image"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "m.safetensors")


def _header(path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header: dict, body: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _tamper_meta(src, dst, edit) -> None:
    header, body = _header(src)
    meta = json.loads(header["__metadata__"]["napari_attribution"])
    header["__metadata__"]["napari_attribution"] = json.dumps(edit(meta))
    _write(dst, header, body)


def _first_float(header: dict) -> str:
    return next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")


def test_tampered_weights_are_refused(bundle, tmp_path):
    header, body = _header(bundle)
    key = _first_float(header)
    # dtype relabelled F32 -> I32 (same byte size: loads as garbage unless checked)
    relabel = json.loads(json.dumps(header))
    relabel[key]["dtype"] = "I32"
    _write(tmp_path / "i32.safetensors", relabel, body)
    with pytest.raises(BundleError, match=rf"weight '{key}' is stored as torch.int32"):
        na.load_model(tmp_path / "i32.safetensors")
    # NaN weights
    start, _ = header[key]["data_offsets"]
    nan_body = bytearray(body)
    nan_body[start:start + 4] = struct.pack("<f", float("nan"))
    _write(tmp_path / "nan.safetensors", header, bytes(nan_body))
    with pytest.raises(BundleError, match=rf"weight '{key}' holds NaN"):
        na.load_model(tmp_path / "nan.safetensors")
    # a weight reshaped (same number of elements)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(bundle), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    conv = next(k for k, v in state.items() if v.ndim == 4)
    state[conv] = state[conv].reshape(state[conv].shape[0], -1, 1, 1).contiguous()
    save_file(state, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(BundleError, match=rf"weight '{conv}' has shape"):
        na.load_model(tmp_path / "shape.safetensors")


@pytest.mark.parametrize("edit,message", [
    (lambda m: [m], "must be a JSON object; found a list"),
    (lambda m: {**m, "config": {**m["config"], "n_channels": "2"}},
     "config.n_channels must be int; found str"),
    (lambda m: {**m, "class_names": {"a": 1}}, "'class_names' must be list; found dict"),
    (lambda m: {**m, "channel_names": [1, 2]}, "non-empty list of names"),
    (lambda m: {**m, "class_names": ["only one"]}, "1 class names for 2 classes"),
    (lambda m: {**m, "normalization": {**m["normalization"], "low": "1"}},
     "normalization.low must be int or float"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, "has no 'config'"),
    (lambda m: {**m, "config": {**m["config"], "mixing": 1}}, "config.mixing must be bool"),
])
def test_tampered_metadata_gives_clear_errors(bundle, tmp_path, capsys, edit, message):
    bad = tmp_path / "bad.safetensors"
    _tamper_meta(bundle, bad, edit)
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        na.load_model(bad)
    np.save(tmp_path / "x.npy", np.ones((2, 16, 16), np.float32))
    assert main(["explain", str(bad), str(tmp_path / "x.npy"), "-q"]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class _NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) * float("nan")


def test_nan_outputs_are_errors_not_results(tmp_path, capsys):
    x = np.random.default_rng(0).random((2, 2, 16, 16)).astype(np.float32)
    with pytest.raises(BundleError, match="non-finite"):
        na.explain(_NaNModel(), x, device="cpu")
    p = tmp_path / "nan.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_NaNModel()), str(p))
    np.save(tmp_path / "x.npy", x[0])
    out = tmp_path / "m.ome.tif"
    assert main(["explain", str(p), str(tmp_path / "x.npy"), "-o", str(out), "-q",
                 "--trust-model"]) == 1
    assert "non-finite" in capsys.readouterr().err and not out.exists()


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_user_module_is_never_mutated():
    torch.manual_seed(0)
    net = _Tiny().train()
    net.head.weight.requires_grad_(False)  # a user's own choice, kept
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).random((2, 2, 16, 16)).astype(np.float32)
    res = na.explain(net, x, method="saliency", device="cpu", targets="class 2")
    assert (res.targets == 2).all()
    assert net.training and net.bn.training
    assert net.conv.weight.requires_grad and not net.head.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    clf = na.load_model(net)
    clf.predict_proba(x)
    assert net.training and clf.class_names == ["class 0", "class 1", "class 2"]


def test_channel_importance_leaves_a_training_result_as_it_was(tmp_path):
    from napari_attribution.core.data.synthetic import make_multi_snr

    data = make_multi_snr(n_images=64, size=16, seed=0)
    result = na.train(data, epochs=1, batch_size=32, width=4, device="cpu",
                      ablation_check=False)
    result.model.train()
    imp = na.channel_importance(result, data)
    assert imp.weights.shape[1] == data.n_channels and result.model.training


def test_exported_module_in_memory_is_explained():
    net = _Tiny().eval()
    program = torch.export.export(net, (torch.zeros(2, 2, 16, 16),))
    x = np.random.default_rng(0).random((2, 2, 16, 16)).astype(np.float32)
    res = na.explain(program.module(), x, method="pcim", steps=3, device="cpu")
    assert res.maps.shape == (2, 16, 16) and np.isfinite(res.maps).all()
    res2 = na.explain(program, x, method="saliency", device="cpu")
    assert res2.model["model_kind"] == "export"


def test_targets_resolve_one_way_everywhere(bundle):
    clf = na.load_model(bundle)
    assert clf.resolve_targets("pos") == 1 and clf.resolve_targets("0") == 0
    assert clf.resolve_targets("predicted") is None and clf.resolve_targets(None) is None
    assert clf.resolve_targets(["neg", 1]) == [0, 1]
    assert clf.resolve_targets("predicted (pos)") is None  # the widget's combo text
    with pytest.raises(InputError, match="out of range"):
        clf.resolve_targets(2)
    with pytest.raises(InputError, match="unknown target class 'mitotic'"):
        clf.resolve_targets("mitotic")


def test_pt2_export_explain_evaluate_end_to_end(bundle, tmp_path, capsys):
    pt2 = tmp_path / "model.pt2"
    assert main(["export-model", str(bundle), "-o", str(pt2)]) == 0
    assert pt2.exists() and "torch.export" in capsys.readouterr().out
    clf, ref = na.load_model(pt2), na.load_model(bundle)
    assert clf.kind == "export" and clf.channel_names == ref.channel_names
    assert clf.class_names == ref.class_names and clf.normalization == ref.normalization
    raw = np.random.default_rng(1).normal(100, 10, (3, 2, 24, 40)).astype(np.float32)
    np.testing.assert_allclose(clf.predict_proba(raw), ref.predict_proba(raw), atol=1e-5)
    # explain from the command line, by class name; the provenance names the program
    np.save(tmp_path / "x.npy", raw[0])
    out = tmp_path / "m.ome.tif"
    assert main(["explain", str(pt2), str(tmp_path / "x.npy"), "-o", str(out), "-t", "pos",
                 "--param", "steps=3", "--device", "cpu", "-q"]) == 0
    maps, meta = read_attribution_tiff(out)
    prov = meta["provenance"]
    assert maps.shape == (24, 40) and np.isfinite(maps).all()
    assert prov["model_kind"] == "export" and prov["target_names"] == ["pos"]
    assert prov["model_sha256"] == clf.sha256 and prov["channel_names"] == ["dna", "gfp"]
    capsys.readouterr()
    assert main(["evaluate", str(pt2), "--sample", "multi-snr", "-n", "4", "--methods",
                 "saliency", "--metrics", "deletion", "--format", "csv", "-q"]) == 1
    assert "channel" in capsys.readouterr().err  # multi-snr has other channels: refused
    npz = tmp_path / "d.npz"
    np.savez(npz, images=raw, labels=np.array([0, 1, 1]))
    assert main(["evaluate", str(pt2), "--npz", str(npz), "--methods", "saliency",
                 "--metrics", "deletion,insertion", "--format", "csv", "-q"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("method,model_free,deletion_auc,insertion_auc")
    assert len(rows) == 5 and rows[1].startswith("saliency,False")   # + 3 model-free rows


def test_pt2_batch_run(bundle, tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("zarr")
    pytest.importorskip("ome_zarr_models")
    from napari_attribution.io.model_export import export_program
    from test_batch import PATTERN, write_plate

    pt2 = export_program(bundle, tmp_path / "model.pt2")
    plate = write_plate(tmp_path / "plate", wells=("A01", "B01"), sites=(1,), size=32)
    out = tmp_path / "r.zarr"
    assert main(["batch", str(plate), "--model", str(pt2), "-o", str(out), "--pattern",
                 PATTERN, "--channels", "dna,gfp", "--threads", "--workers", "1",
                 "--method", "saliency", "--target", "pos", "--device", "cpu", "-q"]) == 0
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert len(rows) == 3 and "predicted" in rows[0]
    import zarr

    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    text = json.dumps(attrs)
    assert '"model_kind": "export"' in text and '"target": 1' in text


def make_scaled_bundle(path):
    """A bundle trained (as recorded) on fields shrunk 2x into 32 px crops, with a
    per-dataset normaliser: everything an export must carry to predict the same."""
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(1)
    model = DCMIXClassifier(ModelConfig(2, 2, width=8)).eval()
    norm = PercentileNormalizer(mode="per_dataset", lo=[90.0, 80.0], hi=[120.0, 130.0])
    return save_bundle(path, model, ["dna", "gfp"], ["neg", "pos"], norm,
                       provenance={"data": {"downsample": 2, "image_size": [32, 32]}})


def test_exports_keep_the_bundles_meaning(tmp_path, capsys):
    """bundle -> export-model (.pt2 and bioimage.io) -> loaded WITHOUT trust -> the same
    probabilities on the same raw field (normaliser, names and the 2x training downsample
    travel with the file), from the API and the command line."""
    from napari_attribution.core.models.inference import ModelScale, shrink

    bundle = make_scaled_bundle(tmp_path / "b.safetensors")
    outs = [tmp_path / "m.pt2"]
    assert main(["export-model", str(bundle), "-o", str(outs[0])]) == 0
    if _has_bioimageio():
        outs.append(tmp_path / "m.zip")
        assert main(["export-model", str(bundle), "-o", str(outs[1])]) == 0
    ref = na.load_model(bundle)
    raw = np.random.default_rng(4).normal(100, 12, (3, 2, 64, 80)).astype(np.float32)
    want = ref.predict_proba(shrink(raw, 2))
    np.save(tmp_path / "field.npy", raw[0])
    capsys.readouterr()
    lines = []
    for src in [bundle, *outs]:
        clf = na.load_model(src)
        assert not clf.trusted and clf.channel_names == ["dna", "gfp"]
        assert clf.class_names == ["neg", "pos"]
        scale = ModelScale.from_provenance(clf.provenance)
        assert scale.downsample == 2, src
        got = clf.predict_proba(shrink(raw, scale.downsample))
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(src))
        assert main(["explain", str(src), str(tmp_path / "field.npy"), "-m", "saliency",
                     "-t", "pos", "-o", str(tmp_path / f"{src.suffix[1:]}.ome.tif"),
                     "--no-evidence-check", "-q"]) == 0
        lines.append(capsys.readouterr().out)
    probs = [line.split("(p=")[1].split(")")[0] for line in lines]
    assert len(set(probs)) == 1, probs
    assert all("shrunk 2x" in line for line in lines)


def _has_bioimageio() -> bool:
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        return False
    return True


def test_malformed_metadata_and_reversed_ranges_are_refused(tmp_path, capsys):
    """No silent "p=1.000": an export whose metadata is malformed, or any normaliser with
    lo >= hi, is refused with one sentence."""
    import zipfile

    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.model_export import export_program

    bundle = make_scaled_bundle(tmp_path / "b.safetensors")
    pt2 = export_program(bundle, tmp_path / "m.pt2")

    def rewrite(dst, edit):
        with zipfile.ZipFile(pt2) as zin, zipfile.ZipFile(dst, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename.endswith("/extra/napari_attribution.json"):
                    data = edit(data)
                zout.writestr(item.filename, data)
        return dst

    def meta_edit(key, value):
        def edit(data):
            meta = json.loads(data)
            meta[key] = value
            return json.dumps(meta).encode()
        return edit

    cases = {
        "notjson.pt2": (lambda d: d[:-5], "not valid JSON"),
        "reversed.pt2": (meta_edit("normalization", {"mode": "per_dataset", "low": 1.0,
                                                     "high": 99.8, "lo": [120.0, 80.0],
                                                     "hi": [90.0, 130.0]}),
                         "reversed in channel 0"),
        "equal.pt2": (meta_edit("normalization", {"mode": "per_dataset", "lo": [1.0, 1.0],
                                                  "hi": [1.0, 2.0]}), "lo=1 >= hi=1"),
        "nan.pt2": (meta_edit("normalization", {"mode": "per_dataset", "lo": [None, 1.0],
                                                "hi": [2.0, 2.0]}), "NaN"),
        "mode.pt2": (meta_edit("normalization", {"mode": "whatever"}), "normalization"),
        "names.pt2": (meta_edit("channel_names", "dna"), "channel_names"),
        "scale.pt2": (meta_edit("scale", {"downsample": 0}), "scale.downsample"),
    }
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((2, 32, 32), np.float32))
    for name, (edit, msg) in cases.items():
        bad = rewrite(tmp_path / name, edit)
        with pytest.raises(BundleError, match=msg):
            na.load_model(bad)
        assert main(["explain", str(bad), str(img), "-q"]) == 1
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err
    # a bundle whose normaliser is reversed
    header, body = _header(bundle)
    meta = json.loads(header["__metadata__"]["napari_attribution"])
    meta["normalization"]["lo"], meta["normalization"]["hi"] = [130.0, 80.0], [90.0, 130.0]
    header["__metadata__"]["napari_attribution"] = json.dumps(meta)
    _write(tmp_path / "rev.safetensors", header, body)
    with pytest.raises(BundleError, match="reversed in channel 0"):
        na.load_model(tmp_path / "rev.safetensors")
    # fitting on a constant channel still gives lo < hi (and maps it to 0)
    x = np.stack([np.full((4, 8, 8), 5.0), np.random.default_rng(0).random((4, 8, 8))], 1)
    norm = PercentileNormalizer(mode="per_dataset").fit(x.astype(np.float32))
    assert norm.lo[0] < norm.hi[0] and np.allclose(norm(x)[:, 0], 0)
    PercentileNormalizer.from_dict(norm.to_dict())
