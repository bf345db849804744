"""Package metadata: extras that mean what they say, floors that match the APIs used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _meta() -> dict:
    if not PYPROJECT.exists():
        pytest.skip("pyproject.toml is not beside the tests (installed package)")
    return tomllib.loads(PYPROJECT.read_text())["project"]


def test_all_extra_is_every_extra():
    extras = _meta()["optional-dependencies"]
    (spec,) = extras["all"]
    named = set(re.fullmatch(r"napari-attribution\[(.*)\]", spec).group(1).split(","))
    assert named == set(extras) - {"all", "testing", "pyqt5"}  # one Qt binding, not two


def test_dependency_floors_cover_the_apis_used():
    deps = {re.split(r"[<>=\[ ;]", d)[0].lower(): d for d in _meta()["dependencies"]}
    assert "torch>=2.6" in deps["torch"]          # torch.export.Dim.AUTO
    assert "captum>=0.9" in deps["captum"]
    assert not any("<" in d for d in deps.values())  # no upper bounds in the metadata


def test_bioimageio_extra_installs_a_working_core():
    extra = _meta()["optional-dependencies"]["bioimageio"]
    assert any(d.startswith("bioimageio.core>=0.11") for d in extra)
    # bioimageio.core pins its spec; a higher spec floor here makes pip fall back to an
    # old core that fails on import
    spec = next(d for d in extra if d.startswith("bioimageio.spec"))
    assert spec == "bioimageio.spec>=0.5.12"
