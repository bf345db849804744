"""bioimage.io packages: export validated by bioimageio.spec, loaded back (zip and folder),
explained from the CLI and in napari; hostile packages refused."""

from __future__ import annotations

import shutil
import warnings
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.spec")

import napari_attribution as na  # noqa: E402
from napari_attribution.cli import main  # noqa: E402
from napari_attribution.core.runtime.errors import BundleError  # noqa: E402
from napari_attribution.io.bioimageio import apply_preprocessing  # noqa: E402
from napari_attribution.io.model_scan import UnsafeModelError  # noqa: E402
from napari_attribution.io.writers import read_attribution_tiff  # noqa: E402
from test_model_loading import make_bundle  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    d = tmp_path_factory.mktemp("bio")
    bundle = make_bundle(d / "m.safetensors")
    out = d / "model.zip"
    assert main(["export-model", str(bundle), "-o", str(out)]) == 0
    return bundle, out


def _unzip(src, dst):
    with zipfile.ZipFile(src) as z:
        z.extractall(dst)
    return dst


def test_export_passes_the_spec_validator(package):
    import bioimageio.spec as spec

    _, out = package
    descr = spec.load_description(out, perform_io_checks=True)
    assert isinstance(descr, spec.model.v0_5.ModelDescr), descr.validation_summary
    assert descr.validation_summary.status in ("valid-format", "passed")
    inp = descr.inputs[0]
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "y", "x"]
    assert "scale_range" in [str(p.id) for p in inp.preprocessing]


def test_package_loads_as_zip_and_folder_with_the_bundles_predictions(package, tmp_path):
    bundle, out = package
    ref = na.load_model(bundle)
    raw = np.random.default_rng(2).normal(100, 10, (3, 2, 24, 32)).astype(np.float32)
    folder = _unzip(out, tmp_path / "pkg")
    for source in (out, folder, folder / "rdf.yaml"):
        clf = na.load_model(source if source.name != "rdf.yaml" else source.parent)
        assert clf.kind == "bioimageio"
        assert clf.channel_names == ["dna", "gfp"] and clf.class_names == ["neg", "pos"]
        np.testing.assert_allclose(clf.predict_proba(raw), ref.predict_proba(raw), atol=1e-5)


def test_package_explained_from_the_cli(package, tmp_path):
    _, out = package
    raw = np.random.default_rng(3).normal(100, 10, (2, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", raw)
    res = tmp_path / "m.ome.tif"
    assert main(["explain", str(out), str(tmp_path / "x.npy"), "-o", str(res), "-t", "pos",
                 "--param", "steps=3", "--device", "cpu", "-q"]) == 0
    maps, meta = read_attribution_tiff(res)
    assert maps.shape == (32, 32) and np.isfinite(maps).all()
    prov = meta["provenance"]
    assert prov["model_kind"] == "bioimageio" and prov["target_names"] == ["pos"]
    assert "scale_range" in [s["id"] for s in prov["normalization"]["bioimageio_preprocessing"]]


def _edit_rdf(folder, old, new):
    rdf = folder / "rdf.yaml"
    text = rdf.read_text()
    assert old in text
    rdf.write_text(text.replace(old, new))


def test_packages_exported_before_the_core_split_still_load(package, tmp_path):
    """Packages written before core/ had subpackages name the architecture
    ``napari_attribution.core.dcmix``: still this package's own network, untrusted."""  # pre-split
    ref, out = package
    old = _unzip(out, tmp_path / "old")
    _edit_rdf(old, "import_from: napari_attribution.core.channels.dcmix",
              "import_from: napari_attribution.core.dcmix")  # pre-split name
    clf = na.load_model(old)
    raw = np.random.default_rng(5).normal(100, 10, (2, 2, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(clf.predict_proba(raw), na.load_model(out).predict_proba(raw),
                               atol=1e-6)


def test_hostile_packages_are_refused(package, tmp_path, capsys):
    import hostile_models as H

    _, out = package
    marker, target = tmp_path / "marker.txt", tmp_path / "target.bin"
    target.write_bytes(b"original")
    # an architecture from an arbitrary importable callable
    evil = _unzip(out, tmp_path / "evil")
    _edit_rdf(evil, "import_from: napari_attribution.core.channels.dcmix", "import_from: os")
    with pytest.raises(UnsafeModelError, match=r"architecture os\.build_dcmix, which is "
                                               "Python code"):
        na.load_model(evil)
    assert main(["explain", str(evil), str(tmp_path / "none.npy"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Python code" in err and "--trust-model" in err and "Traceback" not in err
    # torchscript weights (and no state dict) that overwrite a file when run
    import yaml

    ts = _unzip(out, tmp_path / "ts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H.torchscript_from_file(ts / "weights.torchscript", target)
    import bioimageio.spec as spec

    rdf = yaml.safe_load((ts / "rdf.yaml").read_text())
    rdf["weights"] = {"torchscript": {
        "source": "weights.torchscript", "pytorch_version": "2.13",
        "sha256": str(spec.utils.get_sha256(ts / "weights.torchscript"))}}
    (ts / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    with pytest.raises(UnsafeModelError, match="has TorchScript weights, which can run code"):
        na.load_model(ts)
    assert not marker.exists() and target.read_bytes() == b"original"


def _helpers(out, tmp_path, target, hostile_pt):
    """Packages whose architecture is one of this package's own helpers (issue 22: any
    ``napari_attribution.*`` name used to be trusted)."""
    import hostile_models as H

    return {
        "atomic_writer": H.bioimageio_architecture(
            out, tmp_path / "aw", "napari_attribution.io.atomic", "atomic_write_text",
            {"path": str(target), "text": "pwned"}),
        "load_model_trusted": H.bioimageio_architecture(
            out, tmp_path / "lm", "napari_attribution.io.models", "load_model",
            {"source": str(hostile_pt), "trust": True}),
        "prefix_alike": H.bioimageio_architecture(
            out, tmp_path / "pa", "napari_attribution.core.channels.dcmix", "build_dcmix_evil", {}),
        "module_alike": H.bioimageio_architecture(
            out, tmp_path / "ma", "napari_attribution.core.channels.dcmix.evil", "build_dcmix", {}),
    }


@pytest.mark.parametrize("name", ["atomic_writer", "load_model_trusted", "prefix_alike",
                                  "module_alike"])
def test_package_helpers_are_not_architectures(package, tmp_path, capsys, name):
    """Only the exact (import_from, callable) pairs of ARCHITECTURES load untrusted: a
    package helper named as the architecture is refused on every face, nothing written."""
    import hostile_models as H

    _, out = package
    target = tmp_path / "target.bin"
    target.write_bytes(b"original")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hostile_pt = H.torchscript_from_file(tmp_path / "ff.pt", target)
    pkg = _helpers(out, tmp_path, target, hostile_pt)[name]
    x = np.zeros((1, 2, 16, 16), np.float32)
    np.save(tmp_path / "x.npy", x[0])
    with pytest.raises(UnsafeModelError, match="which is Python code .*--trust-model"):
        na.load_model(pkg)
    with pytest.raises(UnsafeModelError):
        na.explain(pkg, x, device="cpu")
    for args in (["explain", str(pkg), str(tmp_path / "x.npy"), "-q"],
                 ["channels", str(pkg)],
                 ["evaluate", str(pkg), "--sample", "cells", "-n", "2", "--methods",
                  "saliency", "-q"],
                 ["export-model", str(pkg), "-o", str(tmp_path / "o.pt2")]):
        assert main(args) == 1, args
        err = capsys.readouterr().err.strip()
        assert "Python code" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert target.read_bytes() == b"original"
    assert not (tmp_path / "x.pcim.ome.tif").exists() and not (tmp_path / "o.pt2").exists()
    if name == "atomic_writer":  # the file is real: trusted, the helper does write
        with pytest.raises(BundleError):
            na.load_model(pkg, trust=True)
        assert target.read_text() == "pwned"


def _serve(folder, tmp_path):
    """A local HTTP server (127.0.0.1, any free port) for ``folder``; returns it and the
    list of paths requested from it. Stop it with ``server.shutdown()``."""
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: Handler(*a, directory=str(folder), **k))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def test_weights_at_a_url_are_not_downloaded(package, tmp_path, capsys):
    """Weights given as a URL: refused unless allow_download / --allow-download, and no
    connection is made (a local server counts them)."""
    import hostile_models as H

    _, out = package
    server, hits = _serve(_unzip(out, tmp_path / "served"), tmp_path)
    connections: list[int] = []
    original = server.process_request
    server.process_request = lambda *a: connections.append(1) or original(*a)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/weights.pt"
        pkg = H.bioimageio_url_weights(out, tmp_path / "remote", url)
        x = np.zeros((1, 2, 16, 16), np.float32)
        np.save(tmp_path / "x.npy", x[0])
        with pytest.raises(BundleError, match="nothing is downloaded unless you ask: pass "
                                              "--allow-download"):
            na.load_model(pkg)
        with pytest.raises(BundleError, match="--allow-download"):
            na.load_model(pkg, trust=True)  # trust is about code, not about fetching
        with pytest.raises(BundleError, match="--allow-download"):
            na.explain(pkg, x, device="cpu")
        for args in (["explain", str(pkg), str(tmp_path / "x.npy"), "-q"],
                     ["channels", str(pkg)],
                     ["export-model", str(pkg), "-o", str(tmp_path / "o.pt2")]):
            assert main(args) == 1
            err = capsys.readouterr().err.strip()
            assert "--allow-download" in err and len(err.splitlines()) == 1
        assert connections == [] and hits == []
    finally:
        server.shutdown()
        server.server_close()


def test_broken_packages_give_one_clear_error(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "rdf.yaml").write_text("type: model\nname: [broken\n")
    with zipfile.ZipFile(tmp_path / "incomplete.zip", "w") as z:
        z.writestr("rdf.yaml", "format_version: 0.5.4\ntype: model\n")
    for src, msg in ((tmp_path / "bad", "not a readable bioimage.io package"),
                     (tmp_path / "incomplete.zip", "not a valid bioimage.io model")):
        with pytest.raises(BundleError, match=msg):
            na.load_model(src)
        assert main(["channels", str(src)]) == 1
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err


def test_declared_preprocessing_is_applied():
    from bioimageio.spec.model import v0_5 as m

    x = np.random.default_rng(0).normal(5, 2, (2, 3, 8, 8)).astype(np.float32)
    zm = m.ZeroMeanUnitVarianceDescr(kwargs=m.ZeroMeanUnitVarianceKwargs(
        axes=[m.AxisId("y"), m.AxisId("x")]))
    out = apply_preprocessing(x, [("zero_mean_unit_variance", zm.kwargs)],
                              ["batch", "channel", "y", "x"])
    np.testing.assert_allclose(out.mean((2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std((2, 3)), 1, atol=1e-3)
    sl = m.ScaleLinearAlongAxisKwargs(axis=m.AxisId("channel"), gain=[1.0, 2.0, 3.0],
                                      offset=[0.0, 1.0, 0.0])
    out = apply_preprocessing(x, [("scale_linear", sl)], ["batch", "channel", "y", "x"])
    np.testing.assert_allclose(out[:, 1], 2 * x[:, 1] + 1, rtol=1e-6)


def test_non_dcmix_models_cannot_be_exported(tmp_path):
    from napari_attribution.io.bioimageio_export import export_bioimageio

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    with pytest.raises(BundleError, match="only DCMIX models"):
        export_bioimageio(net, tmp_path / "x.zip")


@pytest.mark.gui
@pytest.mark.parametrize("fmt", ["pt2", "bioimageio"])
def test_exported_models_are_explained_in_napari(package, make_napari_viewer, qtbot,
                                                 monkeypatch, tmp_path, fmt):
    import napari.utils.notifications as notifications
    from qtpy.QtCore import QSettings

    from napari_attribution._qt import AttributionWidget, TrainWidget

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(tmp_path / "settings"))
    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    bundle, zip_path = package
    path = zip_path
    if fmt == "pt2":
        from napari_attribution.io.model_export import export_program

        path = export_program(bundle, tmp_path / "m.pt2")
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    for name in ("dna", "gfp"):
        viewer.add_image(rng.normal(100, 10, (3, 32, 32)).astype(np.float32), name=name)
    t = TrainWidget(viewer)
    t.load_model(path)
    qtbot.waitUntil(lambda: not t.runner.running, timeout=30000)
    assert not seen, seen
    assert t.session.bundle.kind == ("export" if fmt == "pt2" else "bioimageio")
    a = AttributionWidget(viewer)
    a.steps.setValue(3)
    a.curves.setChecked(False)
    a.target.setCurrentText("pos")
    a.run()
    qtbot.waitUntil(lambda: not a.runner.running, timeout=60000)
    assert not seen, seen
    layer = a.last_layers[0]
    prov = layer.metadata["napari_attribution"]["provenance"]
    assert layer.name.startswith("PCIM · pos · ") and prov["target_names"] == ["pos"]
    assert prov["model_kind"] == t.session.bundle.kind and prov["source_layers"]
    assert np.isfinite(np.asarray(layer.data)).all()
    shutil.rmtree(tmp_path / "settings", ignore_errors=True)


def test_weights_at_a_url_load_when_asked(package, tmp_path):
    """With allow_download the weights are fetched (one request) and predict like the
    bundle. Run in a fresh process so that bioimageio's download cache is a tmp folder."""
    import os
    import subprocess
    import sys

    import hostile_models as H

    bundle, out = package
    server, hits = _serve(_unzip(out, tmp_path / "served"), tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/weights.pt"
        pkg = H.bioimageio_url_weights(out, tmp_path / "remote", url)
        code = ("import numpy as np, napari_attribution as na\n"
                "x = np.random.default_rng(0).normal(100, 10, (2, 2, 32, 32))"
                ".astype(np.float32)\n"
                f"a = na.load_model({str(pkg)!r}, allow_download=True).predict_proba(x)\n"
                f"b = na.load_model({str(bundle)!r}).predict_proba(x)\n"
                "print('maxdiff', float(np.abs(a - b).max()))\n")
        env = {**os.environ, "BIOIMAGEIO_CACHE_PATH": str(tmp_path / "cache"),
               "PYTHONPATH": os.pathsep.join(sys.path)}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        assert float(res.stdout.split("maxdiff")[1]) < 1e-5
        assert hits == ["/weights.pt"]
    finally:
        server.shutdown()
        server.server_close()
