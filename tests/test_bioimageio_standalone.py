"""bioimage.io packages that run without napari-attribution: TorchScript (and ONNX)
weights beside the state dict, an environment file, the user's metadata, covers and
sample tensors; bioimageio.core's ``test_model`` passes with this package blocked from
import, and our own loader still takes the state dict without trust."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.spec")
yaml = pytest.importorskip("yaml")

import napari_attribution as na  # noqa: E402
from napari_attribution.cli import main  # noqa: E402
from napari_attribution.core.runtime.errors import BundleError  # noqa: E402
from napari_attribution.io.bioimageio_export import export_bioimageio  # noqa: E402
from napari_attribution.io.bioimageio_metadata import (  # noqa: E402
    METHOD_CITATIONS,
    MISSING_AUTHOR,
)
from test_model_loading import make_bundle  # noqa: E402

_LOG: dict[str, str] = {}


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _per_dataset_bundle(path):
    """A DCMIX bundle with a fitted per-dataset normaliser (exported as scale_linear)."""
    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(1)
    model = DCMIXClassifier(ModelConfig(3, 3, n_heads=2, width=8)).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # confident outputs: a preprocessing mismatch would show
        last.weight.mul_(40.0)
    images = np.random.default_rng(4).gamma(2.0, [[[30.0]], [[80.0]], [[5.0]]],
                                            (20, 3, 32, 32)).astype(np.float32)
    norm = PercentileNormalizer(mode="per_dataset").fit(images)
    return save_bundle(path, model, ["dna", "gfp", "actin"], ["a", "b", "c"], norm)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """``export-model m.safetensors -o m.zip`` with no metadata given (per-image norm)."""
    d = tmp_path_factory.mktemp("plain")
    bundle = make_bundle(d / "m.safetensors")
    out = d / "m.zip"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export-model", str(bundle), "-o", str(out)]) == 0
    _LOG["plain"] = err.getvalue()
    return bundle, out


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """Every metadata option, a real (non-square) test image, per-dataset normalisation."""
    d = tmp_path_factory.mktemp("rich")
    bundle = _per_dataset_bundle(d / "m.safetensors")
    doc = d / "about.md"
    doc.write_text("# Nuclear GFP classifier\n\nTrained on our screen of 3 phenotypes.\n")
    raw = np.random.default_rng(7).gamma(2.0, 40.0, (3, 48, 40)).astype(np.float32)
    np.save(d / "cell.npy", raw)
    out = d / "rich.zip"
    assert main(["export-model", str(bundle), "-o", str(out),
                 "--author", "Ada Lovelace;Analytical Engine Lab",
                 "--author", "Charles Babbage",
                 "--cite", "Our screen. J Imaging 2026;doi:10.1234/screen.42",
                 "--license", "CC-BY-4.0", "--name", "GFP phenotypes",
                 "--description", "Three phenotypes of a GFP reporter screen.",
                 "--tag", "gfp-reporter", "--documentation", str(doc),
                 "--test-image", str(d / "cell.npy"), "--no-onnx"]) == 0
    return bundle, out, raw


def _rdf(zip_path) -> dict:
    with zipfile.ZipFile(zip_path) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _member(zip_path, name: str) -> bytes:
    with zipfile.ZipFile(zip_path) as z:
        return z.read(name)


def test_package_carries_torchscript_beside_the_state_dict_and_an_environment(plain):
    _, out = plain
    rdf = _rdf(out)
    w = rdf["weights"]
    assert set(w) == ({"pytorch_state_dict", "torchscript", "onnx"} if
                      _has("onnx", "onnxscript") else {"pytorch_state_dict", "torchscript"})
    assert w["torchscript"]["parent"] == "pytorch_state_dict"
    assert w["torchscript"]["source"] == "weights_torchscript.pt"
    sd = w["pytorch_state_dict"]
    assert sd["architecture"]["import_from"] == "napari_attribution.core.channels.dcmix"
    assert sd["dependencies"]["source"] == "environment.yaml"
    env = yaml.safe_load(_member(out, "environment.yaml"))
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("python") for d in deps)
    assert any(d.startswith("pytorch>=") for d in deps) and "numpy" in deps
    assert rdf["inputs"][0]["sample_tensor"]["source"] == "sample_input.tif"
    assert rdf["outputs"][0]["sample_tensor"]["source"] == "sample_output.tif"


def test_no_author_is_labelled_and_warned_never_a_placeholder(plain):
    _, out = plain
    rdf = _rdf(out)
    assert [a["name"] for a in rdf["authors"]] == [MISSING_AUTHOR]
    assert "warning: no author given" in _LOG["plain"] and "--author" in _LOG["plain"]
    # the method papers, by DOI, and no invented address
    assert [c["doi"] for c in rdf["cite"]] == [c["doi"] for c in METHOD_CITATIONS]
    assert "10.1016/j.slasd.2025.100287" in [c["doi"] for c in rdf["cite"]]
    assert "napari-hub" not in _member(out, "rdf.yaml").decode()


def test_user_metadata_reaches_the_package(rich):
    _, out, _ = rich
    rdf = _rdf(out)
    assert rdf["authors"] == [{"name": "Ada Lovelace", "affiliation": "Analytical Engine Lab"},
                              {"name": "Charles Babbage"}]
    assert rdf["cite"][0] == {"text": "Our screen. J Imaging 2026", "doi": "10.1234/screen.42"}
    assert [c["doi"] for c in rdf["cite"][1:]] == [c["doi"] for c in METHOD_CITATIONS]
    assert rdf["license"] == "CC-BY-4.0" and rdf["name"] == "GFP phenotypes"
    assert rdf["description"] == "Three phenotypes of a GFP reporter screen."
    assert rdf["tags"][0] == "gfp-reporter" and "dcmix" in rdf["tags"]
    readme = _member(out, rdf["documentation"]["source"]).decode()
    assert readme.startswith("# Nuclear GFP classifier")
    assert "no preprocessing step for shrinking" in readme  # the training-scale note
    assert [str(p["id"]) for p in rdf["inputs"][0]["preprocessing"]
            if p["id"] != "ensure_dtype"] == ["scale_linear"]


def test_test_tensors_are_the_models_own_output_and_the_cover_is_from_them(rich):
    import matplotlib.image as mpimg
    import tifffile

    bundle, out, raw = rich
    test_in = np.load(io.BytesIO(_member(out, "test_input.npy")))
    test_out = np.load(io.BytesIO(_member(out, "test_output.npy")))
    np.testing.assert_array_equal(test_in, raw[None])  # the --test-image, as given
    np.testing.assert_allclose(test_out, na.load_model(bundle).predict_proba(raw[None]),
                               atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(_member(
        out, "sample_input.tif"))), test_in)
    cover = mpimg.imread(io.BytesIO(_member(out, _rdf(out)["covers"][0]["source"])),
                         format="png")
    assert cover.shape[:2] == (400, 800)  # 2:1, as the spec recommends
    left = cover[:, :400, :3]
    assert left.std() > 0.05  # the channels, not a blank panel


def test_torchscript_weights_give_the_bundles_probabilities(rich):
    bundle, out, _ = rich
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(io.BytesIO(_member(out, "weights_torchscript.pt")))
    ref = na.load_model(bundle)
    raw = np.random.default_rng(3).gamma(2.0, 40.0, (3, 3, 24, 56)).astype(np.float32)
    with torch.no_grad():
        got = ts(torch.from_numpy(ref.prepare(raw))).numpy()
    np.testing.assert_allclose(got, ref.predict_proba(raw), atol=1e-5)


def test_our_export_loads_untrusted_from_the_state_dict(rich, monkeypatch):
    """The package now also carries TorchScript: the loader still takes the allow-listed
    state dict without trust, and never opens the TorchScript weights."""
    bundle, out, _ = rich

    def no_torchscript(*args, **kwargs):
        raise AssertionError("the TorchScript weights were loaded")

    monkeypatch.setattr(torch.jit, "load", no_torchscript)
    raw = np.random.default_rng(5).gamma(2.0, 40.0, (2, 3, 32, 32)).astype(np.float32)
    ref = na.load_model(bundle).predict_proba(raw)
    for trust in (False, True):
        clf = na.load_model(out, trust=trust)
        assert clf.kind == "bioimageio" and clf.trusted is trust
        assert clf.channel_names == ["dna", "gfp", "actin"]
        np.testing.assert_allclose(clf.predict_proba(raw), ref, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--author", ";Some Lab"], "has no name"),
    (["--author", "A/B"], "cannot contain"),
    (["--cite", "just a title"], "TEXT;DOI or TEXT;URL"),
    (["--cite", "title;nowhere"], "neither a DOI"),
    (["--license", "my own"], "not an SPDX licence id"),
    (["--documentation", "about.txt"], "Markdown"),
    (["--test-image", "three.npy"], "3 channel(s); the model takes 2"),
    (["--no-method-citations"], "at least one citation"),
])
def test_bad_metadata_is_one_line_and_writes_nothing(plain, tmp_path, capsys, args,
                                                     message):
    bundle, _ = plain
    (tmp_path / "about.txt").write_text("x")
    np.save(tmp_path / "three.npy", np.zeros((3, 32, 32), np.float32))
    args = [a if a not in ("about.txt", "three.npy") else str(tmp_path / a) for a in args]
    out = tmp_path / "x.zip"
    assert main(["export-model", str(bundle), "-o", str(out), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("error:"), err
    assert "Traceback" not in "\n".join(err) and not out.exists()


@pytest.mark.parametrize("option", [["--author", "A"], ["--name", "N"], ["--no-onnx"]])
def test_bioimageio_options_are_refused_for_pt2(plain, tmp_path, capsys, option):
    bundle, _ = plain
    assert main(["export-model", str(bundle), "-o", str(tmp_path / "m.pt2"), *option]) == 2
    err = capsys.readouterr().err
    assert "only for a bioimage.io package (.zip)" in err and option[0] in err
    assert not (tmp_path / "m.pt2").exists()


@pytest.mark.skipif(_has("onnx", "onnxscript"), reason="onnx is installed here")
def test_onnx_asked_for_without_onnx_is_a_clear_error(plain, tmp_path):
    bundle, _ = plain
    with pytest.raises(BundleError, match="ONNX weights need onnx"):
        export_bioimageio(bundle, tmp_path / "x.zip", authors=["A"], onnx=True)
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.skipif(not _has("onnx", "onnxscript"), reason="needs onnx and onnxscript")
def test_onnx_weights_when_onnx_is_installed(plain):
    _, out = plain
    onnx_entry = _rdf(out)["weights"]["onnx"]
    assert onnx_entry["parent"] == "pytorch_state_dict" and onnx_entry["opset_version"] >= 7
    assert len(_member(out, onnx_entry["source"])) > 1000


# --- bioimageio.core's model test, with napari_attribution blocked from import --------

#: a preamble that makes ``import napari_attribution`` (and its submodules) fail
BLOCK_IMPORT = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "napari_attribution":
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _Block())
"""

_RUN_TESTS = BLOCK_IMPORT + """
import json
import numpy as np
from bioimageio.core import create_prediction_pipeline, load_description, predict, test_model
plan = json.loads(sys.argv[1])
result = {"tests": {}, "predictions": {}}
for source, fmt in plan["tests"]:
    s = test_model(source, weight_format=fmt)
    result["tests"][f"{source}::{fmt}"] = {"status": s.status, "details": [
        [d.name, d.status, [e.msg[:300] for e in d.errors]] for d in s.details]}
for source, raw_path in plan["predict"]:
    pipeline = create_prediction_pipeline(load_description(source),
                                          weight_format="torchscript")
    raw = np.load(raw_path)
    out = [predict(model=pipeline, inputs={"raw": raw[i:i + 1]}).members["probabilities"]
           .data.values for i in range(len(raw))]
    np.save(raw_path.replace(".npy", ".out.npy"), np.concatenate(out))
try:
    import napari_attribution  # noqa: F401
    result["blocked"] = False
except ImportError:
    result["blocked"] = True
result["loaded"] = sorted(m for m in sys.modules if m.startswith("napari_attribution"))
print("RESULT" + json.dumps(result))
"""


def _tampered(out, folder):
    """The package with a wrong test output (sha256 updated): the model test must fail."""
    with zipfile.ZipFile(out) as z:
        z.extractall(folder)
    wrong = 1.0 - np.load(folder / "test_output.npy")
    np.save(folder / "test_output.npy", wrong.astype(np.float32))
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(
        (folder / "test_output.npy").read_bytes()).hexdigest()
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder / "rdf.yaml"


@pytest.mark.skipif(not _has("bioimageio.core"), reason="needs bioimageio.core")
def test_bioimageio_core_runs_the_export_without_napari_attribution(plain, rich, tmp_path):
    """Acceptance (issue 25): ``bioimageio.core.test_model`` passes on the exported .zip,
    TorchScript weights (and ONNX where present), in a process where importing
    napari_attribution fails; a package with a wrong test output fails there (the test is
    not vacuous); and bioimageio.core's own preprocessing + TorchScript give the bundle's
    probabilities on new raw images (per-crop -> scale_range, per-dataset ->
    scale_linear)."""
    tests = [[str(plain[1]), "torchscript"], [str(rich[1]), "torchscript"]]
    if "onnx" in _rdf(plain[1])["weights"] and _has("onnxruntime"):
        tests.append([str(plain[1]), "onnx"])
    wrong = [str(_tampered(rich[1], tmp_path / "wrong")), "torchscript"]
    rng = np.random.default_rng(11)
    predict = []
    for name, (bundle, out, *_) in (("plain", plain), ("rich", rich)):
        c = na.load_model(bundle).n_channels
        raw = rng.gamma(2.0, rng.uniform(5, 80, (1, c, 1, 1)), (3, c, 40, 56))
        np.save(tmp_path / f"{name}.npy", raw.astype(np.float32))
        predict.append([str(out), str(tmp_path / f"{name}.npy")])
    plan = {"tests": [*tests, wrong], "predict": predict}
    env = {**os.environ, "BIOIMAGEIO_CACHE_PATH": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _RUN_TESTS, json.dumps(plan)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.split("RESULT", 1)[1])
    assert result["blocked"] is True and result["loaded"] == []
    for source, fmt in tests:
        summary = result["tests"][f"{source}::{fmt}"]
        assert summary["status"] == "passed", json.dumps(summary, indent=1)
        names = [d[0] for d in summary["details"] if d[1] == "passed"]
        assert f"Reproduce test outputs from test inputs ({fmt})" in names
        assert sum(n.startswith(f"Run {fmt} inference") for n in names) >= 6
    failed = result["tests"]["::".join(wrong)]
    assert failed["status"] != "passed"  # bioimageio.core 0.11 leaves it 'valid-format'
    assert any(d[0].startswith("Reproduce test outputs") and d[1] == "failed"
               for d in failed["details"])
    for (name, (bundle, *_)), (_, raw_path) in zip((("plain", plain), ("rich", rich)),
                                                   predict, strict=True):
        raw = np.load(raw_path)
        got = np.load(raw_path.replace(".npy", ".out.npy"))
        ref = na.load_model(bundle).predict_proba(raw)
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=name)
    assert np.abs(ref - 1 / ref.shape[1]).max() > 0.2  # confident: a mismatch would show


def test_python_metadata_object_and_keywords(plain, tmp_path):
    """``PackageMetadata`` and its fields as keywords (which override it); a misspelt
    field is a TypeError before anything is loaded."""
    from napari_attribution.io.bioimageio_metadata import PackageMetadata

    bundle, _ = plain
    with pytest.raises(TypeError, match="author"):
        export_bioimageio(bundle, tmp_path / "x.zip", author=["A"])
    md = PackageMetadata(authors=["Grace Hopper;Navy"], license="MIT", tags=["cells"])
    out = export_bioimageio(bundle, tmp_path / "x.zip", md, license="CC0-1.0", onnx=False)
    rdf = _rdf(out)
    assert rdf["authors"] == [{"name": "Grace Hopper", "affiliation": "Navy"}]
    assert rdf["license"] == "CC0-1.0" and rdf["tags"][0] == "cells"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
