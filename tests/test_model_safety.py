"""Hostile model files: no side effect and one clear message, on every face.

Each hostile file would create ``marker`` or overwrite ``target`` if any of its code ran
(``test_hostile_files_really_act_when_trusted`` shows they do, once trusted). The API,
the CLI commands explain/evaluate/channels/batch and the widget loader must refuse them
with a sentence naming the problem, never a traceback.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import hostile_models as H
import napari_attribution as na
from napari_attribution.cli import main
from napari_attribution.core.runtime.errors import BundleError

TARGET_BYTES = b"0123456789abcdef-original-bytes"


#: name -> (builder(path, marker, target), expected message fragment)
HOSTILE = {
    "pickle": (lambda d, m, t: H.pickle_payload(d / "evil.pt", m), "pickled models"),
    "torch_save_pickle": (lambda d, m, t: H.torch_save_payload(d / "evil.pth", m),
                          "not a loadable TorchScript"),
    "torchscript_from_file": (lambda d, m, t: H.torchscript_from_file(d / "ff.pt", t),
                              "'aten::from_file'"),
    "torchscript_setstate": (lambda d, m, t: H.torchscript_setstate(d / "ss.pt", t),
                             "'__setstate__'"),
    "export_custom_op": (lambda d, m, t: H.export_custom_op(d / "op.pt2", m),
                         "'na_hostile::touch'"),
    "export_pickled_weight": (lambda d, m, t: H.export_pickled_weight(d / "pw.pt2", m),
                              "pickled Python object"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile files, the marker a payload would create, the target it would change."""
    d = tmp_path_factory.mktemp("hostile")
    marker, target = d / "marker.txt", d / "target.bin"
    target.write_bytes(TARGET_BYTES)
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (build, _) in HOSTILE.items():
            files[name] = build(d, marker, target)
    assert not marker.exists() and target.read_bytes() == TARGET_BYTES
    return files, marker, target


@pytest.fixture
def images(tmp_path):
    x = np.random.default_rng(0).random((1, 2, 16, 16)).astype(np.float32)
    p = tmp_path / "img.npy"
    np.save(p, x[0])
    return x, p


def _no_effect(marker: Path, target: Path) -> None:
    assert not marker.exists(), "a payload ran: the marker file was created"
    assert target.read_bytes() == TARGET_BYTES, "a payload ran: the target was overwritten"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_api_refuses_hostile_files(hostile, images, name):
    files, marker, target = hostile
    x, _ = images
    with pytest.raises(BundleError, match=HOSTILE[name][1]):
        na.load_model(files[name])
    with pytest.raises(BundleError, match=HOSTILE[name][1]):
        na.explain(files[name], x, device="cpu")
    with pytest.raises(BundleError):
        na.channel_importance(files[name])
    _no_effect(marker, target)


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("command", ["explain", "evaluate", "channels"])
def test_cli_refuses_hostile_files(hostile, images, tmp_path, capsys, name, command):
    files, marker, target = hostile
    _, img = images
    out = tmp_path / "out.ome.tif"
    args = {"explain": ["explain", str(files[name]), str(img), "-o", str(out), "-q"],
            "evaluate": ["evaluate", str(files[name]), "--sample", "cells", "-n", "2",
                         "--methods", "saliency", "-q"],
            "channels": ["channels", str(files[name])]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    assert HOSTILE[name][1] in err
    assert not out.exists()
    _no_effect(marker, target)


@pytest.mark.parametrize("name", ["torchscript_from_file", "export_custom_op"])
def test_cli_batch_refuses_hostile_files(hostile, tmp_path, capsys, name):
    pytest.importorskip("distributed")
    pytest.importorskip("zarr")
    pytest.importorskip("ome_zarr_models")
    from test_batch import PATTERN, write_plate

    files, marker, target = hostile
    plate = write_plate(tmp_path / "plate", wells=("A01",), sites=(1,), size=16)
    out = tmp_path / "o.zarr"
    assert main(["batch", str(plate), "--model", str(files[name]), "-o", str(out),
                 "--pattern", PATTERN, "--threads", "--workers", "1", "--device", "cpu",
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert HOSTILE[name][1] in err and "Traceback" not in err
    assert not out.exists()
    _no_effect(marker, target)


def test_hostile_files_really_act_when_trusted(tmp_path):
    """The payloads are real: trusting the files lets them write (so the tests above
    would notice a missed refusal). Run on copies, never on the shared fixture."""
    marker, target = tmp_path / "marker.txt", tmp_path / "target.bin"
    target.write_bytes(TARGET_BYTES)
    x = np.zeros((1, 2, 16, 16), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ff = H.torchscript_from_file(tmp_path / "ff.pt", target)
        op = H.export_custom_op(tmp_path / "op.pt2", marker)
    na.load_model(ff, trust=True).predict_proba(x)
    assert target.read_bytes().startswith(b"AAAAAAAA")
    clf = na.load_model(op, trust=True)
    assert clf.trusted and not marker.exists()
    clf.predict_proba(x)
    assert marker.exists()
    # the command line says so in the provenance of what a trusted model produced
    target.write_bytes(TARGET_BYTES)
    img = tmp_path / "img.npy"
    np.save(img, x[0])
    out = tmp_path / "m.ome.tif"
    assert main(["explain", str(ff), str(img), "-o", str(out), "-m", "saliency",
                 "--trust-model", "-q"]) == 0
    from napari_attribution.io.writers import read_attribution_tiff

    assert read_attribution_tiff(out)[1]["provenance"]["model_trusted"] is True


def test_operator_scan_is_an_allowlist():
    from napari_attribution.io.model_scan import aten_allowed

    assert aten_allowed("conv2d") and aten_allowed("_convolution") and aten_allowed("relu_")
    for bad in ("from_file", "save", "_ops_from_file", "__setstate__", "to_file",
                "_foreach_exec"):
        assert not aten_allowed(bad), bad


class _Realistic(torch.nn.Module):
    """Control flow, interpolation, dropout, normalisation: all pure tensor maths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.drop = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 32:
            x = torch.nn.functional.interpolate(x, size=[32, 32], mode="bilinear",
                                                align_corners=False)
        h = torch.nn.functional.gelu(self.norm(self.conv(x)))
        for _ in range(2):
            h = h + torch.nn.functional.max_pool2d(h, 3, 1, 1)
        return self.head(self.drop(h.mean((2, 3))))


def test_scripted_model_with_allowed_ops_loads_and_explains(tmp_path):
    p = tmp_path / "ok.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_Realistic()), str(p))
    clf = na.load_model(p)
    assert clf.kind == "torchscript" and not clf.trusted and clf.n_classes == 3
    assert {"aten::conv2d", "aten::upsample_bilinear2d", "prim::If", "prim::Loop"} <= \
        set(clf.operators)
    x = np.random.default_rng(0).random((2, 2, 40, 40)).astype(np.float32)
    res = na.explain(p, x, method="saliency", targets="class 1", device="cpu")
    assert res.maps.shape == (2, 40, 40) and res.provenance()["model_kind"] == "torchscript"


@pytest.mark.gui
def test_widget_loader_refuses_hostile_files(hostile, make_napari_viewer, qtbot,
                                              monkeypatch, tmp_path):
    import napari.utils.notifications as notifications
    from qtpy.QtCore import QSettings

    from napari_attribution._qt import TrainWidget

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(tmp_path / "settings"))
    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    files, marker, target = hostile
    w = TrainWidget(make_napari_viewer())
    assert not w.trust.isChecked()  # trusting is an explicit act
    for name in ("torchscript_from_file", "export_custom_op", "pickle",
                 "export_pickled_weight"):
        seen.clear()
        w.load_model(files[name])
        qtbot.waitUntil(lambda: not w.runner.running, timeout=30000)
        assert seen and HOSTILE[name][1] in seen[-1] and "Traceback" not in seen[-1]
        assert w.session.bundle is None
    _no_effect(marker, target)
