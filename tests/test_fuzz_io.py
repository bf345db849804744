"""Fuzzing the readers, plate maps and bundle metadata: every case ends in a clear error
or a correct read, never a raw traceback or a silent-wrong read (see fuzz_io_cases)."""

import json
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from fuzz_io_cases import (  # noqa: E402
    bundle_cases,
    plate_map_cases,
    run_bundle_case,
    run_plate_map_case,
    run_tiff_case,
    tiff_cases,
)

FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@FAST
@given(tiff_cases())
def test_fuzz_tiff_readers(case):
    with tempfile.TemporaryDirectory() as tmp:
        run_tiff_case(case, Path(tmp))


@FAST
@given(plate_map_cases())
def test_fuzz_plate_maps(case):
    with tempfile.TemporaryDirectory() as tmp:
        run_plate_map_case(case, Path(tmp))


def test_plate_map_overflowing_control_flag(tmp_path):
    from napari_attribution.core.runtime.errors import InputError
    from napari_attribution.io.plate import read_plate_map

    path = tmp_path / "map.csv"
    path.write_text("well,class,control\nA01,x,inf\n")
    with pytest.raises(InputError, match="line 2"):
        read_plate_map(path)


@pytest.fixture(scope="module")
def bundle_parts(tmp_path_factory, trained_cells):
    from safetensors import safe_open

    from napari_attribution.io.bundle import save_training_result

    path = save_training_result(tmp_path_factory.mktemp("b") / "m.safetensors",
                                trained_cells)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["napari_attribution"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    return meta, state


def test_fuzz_bundle_metadata(bundle_parts):
    meta, state = bundle_parts

    @settings(max_examples=80, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(bundle_cases())
    def check(case):
        with tempfile.TemporaryDirectory() as tmp:
            run_bundle_case(case, meta, state, Path(tmp))

    check()
