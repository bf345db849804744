"""One record per attribution method: a method added in a test by one registration works
in the API, the CLI (explain, methods) and the Pixel attribution widget."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from attribution_models import SpotModel, small_cnn, spot_images
from napari_attribution.core.attribution.explain import available_methods, explain
from napari_attribution.core.attribution.method_config import MethodConfig, setting
from napari_attribution.core.attribution.methods import (
    AttributionMethod,
    get_method,
    register_method,
    registered_methods,
    single_pass,
    unregister_method,
)
from napari_attribution.core.evaluation.metrics import trained_perturbations
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.runtime.progress import run_generator

NAME = "grad_x_input"


@dataclass
class GradXInputConfig(MethodConfig):
    """Gradient times input, scaled."""

    title: ClassVar[str] = "gradient x input"
    scale: float = setting(1.0, minimum=0.1, maximum=10.0, help="multiplies the map")
    absolute: bool = setting(False, help="absolute values")


def _grad_x_input(model, x, targets, per_channel, cfg: GradXInputConfig) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x).gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(out, x)
    attr = grad * x.detach() * cfg.scale
    attr = attr.abs() if cfg.absolute else attr
    return attr if per_channel else attr.sum(1)


METHOD = AttributionMethod(
    NAME, single_pass(_grad_x_input), GradXInputConfig, "gradient x input (a test method)",
    needs_gradients=True, passes=lambda cfg, c, h, w, per_channel: 1, signed=True)


@pytest.fixture
def registered():
    register_method(METHOD)
    yield METHOD
    unregister_method(NAME)


def test_api_runs_a_registered_method_with_its_settings(registered):
    x, _ = spot_images(n=2, size=24, c=2)
    model = SpotModel()
    one = run_generator(explain(model, x, 1, method=NAME, device="cpu"))
    two = run_generator(explain(model, x, 1, method=NAME, device="cpu", scale=2.0))
    assert NAME in available_methods() and one.maps.shape == (2, 24, 24)
    assert np.abs(one.maps).max() > 0
    np.testing.assert_allclose(two.maps, 2 * one.maps, rtol=1e-5, atol=1e-7)
    assert two.params["scale"] == 2.0 and two.params["absolute"] is False
    assert two.provenance()["method"] == NAME
    per = run_generator(explain(model, x, 1, method=NAME, device="cpu", per_channel=True))
    np.testing.assert_allclose(per.maps.sum(1), one.maps, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"unknown gradient x input parameter.*\['steps'\]"):
        run_generator(explain(model, x, 1, method=NAME, device="cpu", steps=3))
    with pytest.raises(InputError, match="absolute='yes' must be true or false"):
        run_generator(explain(model, x, 1, method=NAME, device="cpu", absolute="yes"))
    assert trained_perturbations(NAME, {"scale": 2.0}) == []


def test_cli_explain_and_methods_list_a_registered_method(registered, tmp_path, capsys,
                                                          trained_cells):
    import tifffile

    from napari_attribution.cli import main
    from napari_attribution.io.bundle import save_training_result

    bundle = save_training_result(tmp_path / "cells.safetensors", trained_cells)
    img = tmp_path / "cell.npy"
    np.save(img, np.random.default_rng(0).random((4, 32, 32)).astype(np.float32))
    assert main(["methods", "--format", "json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[NAME]["settings"] == {"scale": 1.0, "absolute": False}
    assert rows[NAME]["gradients"] is True and set(rows) >= {"pcim", "rise", NAME}
    out = tmp_path / "map.ome.tif"
    assert main(["explain", str(bundle), str(img), "-m", NAME, "--param", "scale=3",
                 "-o", str(out), "-q", "--no-evidence-check"]) == 0
    with tifffile.TiffFile(out) as tif:
        text = tif.pages[0].description + "".join(
            str(p.tags.get("ImageDescription", "")) for p in tif.pages)
    assert NAME in text
    assert main(["explain", str(bundle), str(img), "-m", NAME, "--param", "scale=abc",
                 "-q"]) == 1
    assert "scale='abc' must be a number" in capsys.readouterr().err


def test_registration_is_checked():
    with pytest.raises(ValueError, match="other than 'auto'"):
        register_method(AttributionMethod("auto", METHOD.run, GradXInputConfig, "",
                                          needs_gradients=True, passes=METHOD.passes))

    @dataclass
    class Clash(MethodConfig):
        device: str = "cpu"

    with pytest.raises(ValueError, match=r"\['device'\] clash"):
        register_method(AttributionMethod("clash", METHOD.run, Clash, "",
                                          needs_gradients=False, passes=METHOD.passes))
    with pytest.raises(ValueError, match="registered already"):
        register_method(get_method("pcim"))
    with pytest.raises(InputError, match="unknown attribution method 'nope'"):
        get_method("nope")
    assert "clash" not in registered_methods()


def test_every_built_in_record_is_complete():
    """Every built-in: settings that construct with their defaults, a positive cost,
    a JSON-ready description; the gradient flag matches what the method needs."""
    x, _ = spot_images(n=1, size=24, c=2)
    for name, spec in registered_methods().items():
        cfg = spec.make_config()
        assert spec.cost(None, 2, 64, 64) >= 1, name
        json.dumps(spec.describe())
        for s in spec.config.settings():
            assert getattr(cfg, s.name) == s.default
    # the gradient flag: a model whose output does not depend on gradients-friendly ops
    assert {n for n, s in registered_methods().items() if s.needs_gradients} >= {
        "pcim", "saliency", "integrated_gradients", "gradcam", "extremal_mask"}
    assert not get_method("pcim_blackbox").needs_gradients
    assert trained_perturbations("pcim") == ["deletion", "insertion"]
    assert trained_perturbations("pcim_blackbox", {"substrate": "mean", "device": "cpu"}) \
        == ["deletion_mean", "insertion"]
    assert get_method("rise").cost({"n_masks": 40}, 2, 24, 24) == 40
    res = run_generator(explain(small_cnn(), x, 0, method="rise", device="cpu", n_masks=8))
    assert res.params["n_masks"] == 8 and res.params["cells"] == 7


pytest.importorskip("pytestqt")


@pytest.mark.gui
def test_widget_offers_a_registered_method_and_its_settings(registered, make_napari_viewer,
                                                           qtbot, trained_cells,
                                                           isolated_qt_settings):
    from napari_attribution._qt import AttributionWidget
    from napari_attribution._qt._common import session_for
    from napari_attribution.io.models import load_model

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    bundle = load_model(trained_cells)
    for name in bundle.channel_names:
        viewer.add_image(rng.random((32, 32)).astype(np.float32), name=name)
    session_for(viewer).set_model(bundle)
    w = AttributionWidget(viewer)
    w.curves.setChecked(False)
    w.evidence.setChecked(False)
    assert w.method.findText(NAME) >= 0
    assert set(w.method_settings.editors) >= {"steps"}       # PCIM's form first
    w.method.setCurrentText(NAME)
    assert set(w.method_settings.editors) == {"scale", "absolute"}
    assert w.method_settings.params() == {}                     # defaults are not sent
    w.method_settings.set_value("scale", 3.0)
    assert w.method_settings.params() == {"scale": 3.0}
    assert w.run() is not None
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert w.last_result is not None and w.last_result.method == NAME
    assert w.last_result.params["scale"] == 3.0
    assert any(NAME.replace("_", " ") in ly.name for ly in viewer.layers)


def test_explain_options_object_and_keywords_agree():
    """``options=ExplainOptions(...)`` and the same options as keywords give the same maps;
    a keyword overrides the object; bad options are refused with a sentence."""
    import napari_attribution as na

    x, _ = spot_images(n=2, size=24, c=2)
    model = SpotModel()
    a = run_generator(explain(model, x, 1, "saliency", na.ExplainOptions(device="cpu",
                                                                          batch_size=1)))
    b = run_generator(explain(model, x, 1, method="saliency", device="cpu", batch_size=1))
    np.testing.assert_array_equal(a.maps, b.maps)
    c = run_generator(explain(model, x, 1, "saliency", na.ExplainOptions(batch_size=1),
                              device="cpu", per_channel=True))
    assert c.maps.shape == (2, 2, 24, 24) and c.params["device"] == "cpu"
    with pytest.raises(InputError, match="unknown tiling 'tiles'"):
        run_generator(explain(model, x, 1, "saliency", tiling="tiles"))
    with pytest.raises(InputError, match="gradcam gives one map per image"):
        run_generator(explain(small_cnn(), x, 0, "gradcam", per_channel=True, device="cpu"))


@pytest.mark.gui
def test_settings_form_round_trips_every_built_in_default(qtbot, isolated_qt_settings):
    """Untouched forms send no settings for any built-in (a 'none' choice is text, an
    optional choice left off is None); changed values come back typed."""
    from napari_attribution._qt.method_settings import NO_CHOICE, MethodSettings

    form = MethodSettings("test-forms")
    qtbot.addWidget(form)
    for name in registered_methods():
        form.set_method(name)
        assert form.params() == {}, name
    form.set_method("pcim_blackbox")
    form.set_value("grid", 9)
    form.set_value("modulate", "excess")
    form.set_value("max_forward", None)
    assert form.params() == {"grid": 9, "modulate": "excess"}
    form.set_method("pcim")
    form.set_value("preserve_substrate", None)
    assert form.editors["preserve_substrate"][0].currentText() == NO_CHOICE
    assert form.params() == {"preserve_substrate": None}
    get_method("pcim").make_config(form.params())      # what the form sends is valid
