"""A headless install (batch workers, clusters): core, API, CLI and batch work with napari
and every Qt binding impossible to import."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qt_blocker import block_gui_imports

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = block_gui_imports("headless install") + textwrap.dedent("""
    import numpy as np
    import napari_attribution as na
    import napari_attribution.batch as batch
    from napari_attribution import api, cli
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    data = make_cell_phenotype(n_images=48, size=24, seed=0)
    result = na.train(data, epochs=1, device="cpu")
    maps = na.explain(result, data.images[:2], method="saliency", device="cpu")
    assert maps.maps.shape == (2, 24, 24), maps.maps.shape
    path = na.save_bundle(sys.argv[1] + "/m.safetensors", result)
    assert cli.main(["channels", str(path), "--format", "json",
                     "-o", sys.argv[1] + "/imp.json"]) == 0
    parser = cli.build_parser()  # every command module imports
    assert batch.BatchConfig(methods=["saliency"]).method_params() == {"saliency": {}}
    bad = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not bad, bad
    print("HEADLESS-OK", na.__version__)
""")


def test_core_api_cli_batch_without_napari_or_qt(tmp_path):
    pytest.importorskip("dask")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, timeout=300,
                         env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
                              "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "HEADLESS-OK" in res.stdout
    assert (tmp_path / "imp.json").read_text().lstrip().startswith("{")
