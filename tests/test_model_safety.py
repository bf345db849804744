"""Hostile model files: no side effect and one clear message, on every face.

Each hostile file would create ``marker`` or overwrite ``target`` if any of its code ran
(``test_hostile_files_really_act_when_trusted`` shows they do, once trusted). The API,
the CLI commands explain/evaluate/channels/batch and the widget loader must refuse them
with a sentence naming the problem, never a traceback.
"""

from __future__ import annotations

import tempfile
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
TS_REFUSAL = "is TorchScript, which can run code when loaded; pass --trust-model"


#: name -> (builder(path, marker, target), expected message fragment)
HOSTILE = {
    "pickle": (lambda d, m, t: H.pickle_payload(d / "evil.pt", m), "pickled models"),
    "torch_save_pickle": (lambda d, m, t: H.torch_save_payload(d / "evil.pth", m),
                          "torch.save pickle archive"),
    "torchscript_from_file": (lambda d, m, t: H.torchscript_from_file(d / "ff.pt", t),
                              TS_REFUSAL),
    "torchscript_setstate": (lambda d, m, t: H.torchscript_setstate(d / "ss.pt", t),
                             TS_REFUSAL),
    # issue 22: hooks and a line-continued __setstate__ ran code past the old scan
    "torchscript_hooks": (lambda d, m, t: H.torchscript_hooks(d / "hk.pt", t), TS_REFUSAL),
    "torchscript_setstate_continued": (
        lambda d, m, t: H.torchscript_setstate_continued(d / "sc.pt", t), TS_REFUSAL),
    "export_custom_op": (lambda d, m, t: H.export_custom_op(d / "op.pt2", m),
                         "'na_hostile::touch'"),
    "export_pickled_weight": (lambda d, m, t: H.export_pickled_weight(d / "pw.pt2", m),
                              "not plain tensor data"),
    # issue 22: a pickle under an allowed name, a nested opaque pickle, a native
    # library, a member escaping the archive, Python in a size expression
    "export_numbered_pickled_weight": (
        lambda d, m, t: H.export_numbered_pickled_weight(d / "np.pt2", m),
        "as a pickled Python object"),
    "export_nested_opaque": (lambda d, m, t: H.export_nested_opaque(d / "no.pt2", m),
                             "opaque_obj_0/x"),
    "export_aotinductor": (lambda d, m, t: H.export_aotinductor(d / "ao.pt2"),
                           "native library"),
    "export_dotdot": (lambda d, m, t: H.export_dotdot(d / "dd.pt2"),
                      "points outside the archive"),
    "export_sym_expr": (lambda d, m, t: H.export_sym_expr(d / "se.pt2", m),
                        "evaluate as Python"),
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
    assert set(Path(tempfile.gettempdir()).glob("aotinductor_*")) <= AOTI_BEFORE, \
        "a load left an aotinductor_* folder behind"
    for folder in (Path("/"), Path(tempfile.gettempdir()), marker.parent, Path.cwd()):
        assert not (folder / "escaped.txt").exists(), "a ../ member was extracted"


AOTI_BEFORE = set(Path(tempfile.gettempdir()).glob("aotinductor_*"))


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
@pytest.mark.parametrize("command", ["explain", "evaluate", "channels", "export-model"])
def test_cli_refuses_hostile_files(hostile, images, tmp_path, capsys, name, command):
    files, marker, target = hostile
    _, img = images
    out = tmp_path / ("out.pt2" if command == "export-model" else "out.ome.tif")
    args = {"explain": ["explain", str(files[name]), str(img), "-o", str(out), "-q"],
            "evaluate": ["evaluate", str(files[name]), "--sample", "cells", "-n", "2",
                         "--methods", "saliency", "-q"],
            "channels": ["channels", str(files[name])],
            "export-model": ["export-model", str(files[name]), "-o", str(out)]}[command]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    assert HOSTILE[name][1] in err
    assert not out.exists()
    _no_effect(marker, target)


@pytest.mark.parametrize("name", ["torchscript_from_file", "export_custom_op",
                                  "export_nested_opaque", "export_aotinductor"])
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
                 "-q"]) == 1
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
    clf = na.load_model(op, trust=True)  # its first forward call is made (and timed) here
    assert clf.trusted and marker.exists()
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
    with pytest.raises(BundleError, match=TS_REFUSAL):
        na.load_model(p)  # by format, whatever its operators
    clf = na.load_model(p, trust=True)
    assert clf.kind == "torchscript" and clf.trusted and clf.n_classes == 3
    assert {"aten::conv2d", "aten::upsample_bilinear2d", "prim::If", "prim::Loop"} <= \
        set(clf.operators)
    x = np.random.default_rng(0).random((2, 2, 40, 40)).astype(np.float32)
    res = na.explain(p, x, method="saliency", targets="class 1", device="cpu", trust=True)
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
                 "export_pickled_weight", "export_nested_opaque", "torchscript_hooks"):
        seen.clear()
        w.load_model(files[name])
        qtbot.waitUntil(lambda: not w.runner.running, timeout=30000)
        assert seen and HOSTILE[name][1] in seen[-1] and "Traceback" not in seen[-1]
        assert w.session.bundle is None
    _no_effect(marker, target)


# --- issue 22: what loads without trust, and what a trusted load still never does -------

def test_plain_torch_export_loads_untrusted_without_unpickling(tmp_path, monkeypatch):
    """An archive as torch.export.save writes it for a plain model (graph JSON, raw
    tensors, a tensor constant) loads without trust, and nothing is unpickled."""
    import pickle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = H.plain_pt2(tmp_path / "plain.pt2")
    ref = na.load_model(p, trust=True)
    x = np.random.default_rng(0).random((1, 2, 16, 16)).astype(np.float32)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("an untrusted load unpickled something")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(torch._C, "_pickle_load_obj", no_unpickling, raising=False)
    clf = na.load_model(p)
    assert clf.kind == "export" and not clf.trusted and clf.n_classes == 2
    assert "aten::conv2d" in clf.operators  # the operator scan still ran (second line)
    monkeypatch.undo()
    np.testing.assert_array_equal(clf.predict_proba(x), ref.predict_proba(x))


def test_untrusted_pt2_is_checked_before_torch_opens_it(hostile, monkeypatch):
    """The member allow-list is applied before torch.export.load is ever called."""
    files, marker, target = hostile
    calls: list[str] = []
    original = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append("load") or
                        original(*a, **k))
    for name in ("export_nested_opaque", "export_aotinductor", "export_dotdot",
                 "export_numbered_pickled_weight", "export_pickled_weight",
                 "export_sym_expr"):
        with pytest.raises(BundleError, match=HOSTILE[name][1]):
            na.load_model(files[name])
    assert calls == []
    _no_effect(marker, target)


def test_trusted_pt2_never_loads_native_libraries(hostile):
    """Even trusted, AOTInductor members are left out (this tool runs the graph, never the
    compiled library): nothing is dlopened and no aotinductor_* folder is left behind."""
    files, marker, target = hostile
    clf = na.load_model(files["export_aotinductor"], trust=True)
    assert clf.kind == "export" and clf.trusted
    clf.predict_proba(np.zeros((1, 2, 16, 16), np.float32))
    _no_effect(marker, target)


def test_guard_code_is_never_compiled_untrusted(tmp_path):
    """A .pt2's guard code is Python source torch compiles into the module: an untrusted
    load drops it (the graph still runs); a trusted one runs it, so the file is real."""
    marker = tmp_path / "marker.txt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = H.export_guard_code(tmp_path / "g.pt2", marker)
    x = np.zeros((1, 2, 16, 16), np.float32)
    na.load_model(p).predict_proba(x)
    assert not marker.exists()
    na.load_model(p, trust=True).predict_proba(x)
    assert marker.exists()


def test_new_hostile_files_really_act_when_trusted(tmp_path):
    """The issue-22 payloads are real: trusted, each one writes (so the refusals above
    are meaningful)."""
    x = np.zeros((1, 2, 16, 16), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, what in (("export_nested_opaque", "marker"), ("export_sym_expr", "marker"),
                           ("export_numbered_pickled_weight", "marker"),
                           ("torchscript_hooks", "target"),
                           ("torchscript_setstate_continued", "target")):
            d = tmp_path / name
            d.mkdir()
            marker, target = d / "marker.txt", d / "target.bin"
            target.write_bytes(TARGET_BYTES)
            path = HOSTILE[name][0](d, marker, target)
            target.write_bytes(TARGET_BYTES)
            try:
                na.load_model(path, trust=True).predict_proba(x)
            except BundleError:
                pass  # the payload ran while loading; the rest of the file is junk
            acted = marker.exists() if what == "marker" else \
                target.read_bytes() != TARGET_BYTES
            assert acted, f"{name} did nothing even when trusted"


@pytest.mark.parametrize("kind", ["pt2", "bioimageio", "torchscript"])
def test_zip_bombs_are_refused_before_extraction(tmp_path, capsys, kind):
    """A 1 MB zip expanding to 1 GiB is refused from its directory, through the API and
    the command line, trusted or not, in well under a second of reading."""
    import time

    names = {"pt2": ("m/data/weights/weight_0",), "bioimageio": ("weights.pt",),
             "torchscript": ("m/data/0",)}[kind]
    small = {"pt2": {"m/archive_format": "pt2", "m/models/model.json": "{}"},
             "bioimageio": {"rdf.yaml": "type: model\n"},
             "torchscript": {"m/code/__torch__.py": "", "m/data.pkl": ""}}[kind]
    suffix = {"pt2": ".pt2", "bioimageio": ".zip", "torchscript": ".pt"}[kind]
    bomb = H.zip_bomb(tmp_path / f"bomb{suffix}", names, small=small)
    assert bomb.stat().st_size < 1.2e6
    t0 = time.perf_counter()
    for trust in (False, True):
        with pytest.raises(BundleError, match="expands 1000x|expands 10[0-9][0-9]x"):
            na.load_model(bomb, trust=trust)
    assert main(["explain", str(bomb), str(tmp_path / "x.npy"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "zip bomb" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert time.perf_counter() - t0 < 5


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_zip_bomb_peak_memory(tmp_path):
    """Peak memory of a process that refuses a zip bomb (its resident-set high-water mark,
    torch included) stays well under 1 GiB. VmHWM, not ru_maxrss: Linux carries the
    forking parent's maximum (a test process grown by earlier tests) into the child's
    ru_maxrss across exec."""
    import subprocess
    import sys

    bomb = H.zip_bomb(tmp_path / "bomb.pt2", ("m/data/weights/weight_0",),
                      small={"m/archive_format": "pt2"})
    code = ("import napari_attribution as na\n"
            "from napari_attribution.core.runtime.errors import BundleError\n"
            f"try:\n    na.load_model({str(bomb)!r})\nexcept BundleError as e:\n"
            "    print('refused', e)\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
            "print('peak_kib', hwm[0].split()[1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "refused" in out and "zip bomb" in out
    peak = int(out.split("peak_kib")[1].split()[0]) / 2**20
    assert peak < 0.75, f"peak memory {peak:.2f} GiB"


class _Forever(torch.nn.Module):
    """Pure tensor operators in a ``while`` loop that takes seconds (about 20 us a step):
    "forever" for a 0.3 s limit, yet short enough that the call left running in the
    background ends soon after the test."""

    def __init__(self, steps: int = 150_000) -> None:
        super().__init__()
        self.steps = steps
        self.conv = torch.nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i < self.steps:
            x = x * 1.0
            i += 1
        return self.conv(x).mean((2, 3))


def test_a_model_that_never_answers_is_stopped(tmp_path, monkeypatch, capsys):
    """A model call has a time limit (NAPARI_ATTRIBUTION_MODEL_TIMEOUT or ``timeout``):
    an allowed-op loop is refused with one sentence instead of hanging explain."""
    import threading
    import time

    p = tmp_path / "loop.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_Forever()), str(p))
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match="did not answer one image within 0.3 s"):
        na.load_model(p, trust=True, timeout=0.3)
    monkeypatch.setenv("NAPARI_ATTRIBUTION_MODEL_TIMEOUT", "0.3")
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((2, 16, 16), np.float32))
    assert main(["explain", str(p), str(img), "--trust-model", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "NAPARI_ATTRIBUTION_MODEL_TIMEOUT" in err and len(err.splitlines()) == 1
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "x.pcim.ome.tif").exists()
    monkeypatch.setenv("NAPARI_ATTRIBUTION_MODEL_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="not a number of seconds"):
        na.load_model(p, trust=True)
    for thread in threading.enumerate():  # leave nothing spinning for the next tests
        if thread.name == "napari-attribution-model-probe":
            thread.join(60)


def test_size_expressions_and_member_names_are_allow_listed():
    """The grammar for symbolic sizes accepts what torch writes and nothing that would
    run other Python under sympify; member names are matched whole."""
    from napari_attribution.io.model_trust import PT2_MEMBERS, _safe_member, check_sym_expr

    ok = ["Symbol('s0', positive=True, integer=True)",
          "Add(Symbol('s53', positive=True, integer=True), Integer(-2))",
          "Max(Integer(1), FloorDiv(Symbol('s7', positive=True, integer=True), Integer(2)))",
          "TruncToInt(Mul(Float('0.5', precision=53), ToFloat(Symbol('s0', positive=True, "
          "integer=True))))", "Integer(3)", "True"]
    bad = ["__import__('os').system('id')", "Symbol('s0').__class__",
           "Symbol('__import__')", "Pow(Integer(9), Integer(999999999))",
           "Integer(9)**Integer(9)", "Symbol('s0', positive=__import__('os'))",
           "Float('1', precision=10**9)", "Integer(1); Integer(2)", "lambda: 0",
           "Symbol(\"s0\")", "Integer(1)[0]", "getattr(Integer(1), 'x')", "x" * 5000]
    assert all(check_sym_expr(s) for s in ok)
    assert not any(check_sym_expr(s) for s in bad)
    import re

    assert any(re.fullmatch(p, "data/weights/weight_12") for p in PT2_MEMBERS)
    for name in ("data/weights/weight_12/x", "data/weights/weight_x", "xdata/weights/weight_1",
                 "data/constants/opaque_obj_0", "data/aotinductor/model/a.so"):
        assert not any(re.fullmatch(p, name) for p in PT2_MEMBERS), name
    assert _safe_member("m/data/weights/weight_0")
    for name in ("/etc/passwd", "m/../x", "m\\..\\x", "c:/x", "m//x", "m/./x"):
        assert not _safe_member(name), name


def test_a_pt2_with_a_member_twice_is_refused(tmp_path):
    """Zip allows one name twice; which copy torch would read is not defined: refused."""
    import zipfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = H.plain_pt2(tmp_path / "dup.pt2")
        with zipfile.ZipFile(p) as z:
            name = next(n for n in z.namelist() if n.endswith("models/model.json"))
        with zipfile.ZipFile(p, "a") as z:
            z.writestr(name, "{}")
    with pytest.raises(BundleError, match="two files under one name"):
        na.load_model(p)
