"""Shared test fixtures: location of the real data and small trained models."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BBBC013 = SHARED_DATA / "bbbc013"
MNIST = SHARED_DATA / "mnist"

requires_bbbc013 = pytest.mark.skipif(
    not (BBBC013 / "1049_Metadata.csv").exists(),
    reason=f"BBBC013 plate not found at {BBBC013} (real data lives beside the repo in "
           "../shared/data; a fresh clone does not have it)",
)
requires_mnist = pytest.mark.skipif(
    not (MNIST / "t10k-images-idx3-ubyte.gz").exists(),
    reason=f"MNIST test split not found at {MNIST}",
)


@pytest.fixture(scope="session")
def cell_data():
    """A small synthetic cell-phenotype set (Marker channel informative)."""
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    return make_cell_phenotype(n_images=240, size=32, seed=0)


@pytest.fixture(scope="session")
def trained_cells(cell_data):
    """A DCMIX model trained briefly on ``cell_data`` (CPU, seconds)."""
    from napari_attribution.core.channels.training import TrainConfig, train_dcmix
    from napari_attribution.core.runtime.progress import run_generator

    cfg = TrainConfig(epochs=12, batch_size=32, device="cpu", seed=0, width=16)
    return run_generator(train_dcmix(cell_data, cfg))


@pytest.fixture
def isolated_qt_settings(tmp_path):
    """QSettings written under the test's tmp folder, never the user's."""
    from qtpy.QtCore import QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(tmp_path / "settings"))


@pytest.fixture
def errors(monkeypatch):
    """The messages napari would show as errors, collected instead of shown."""
    import napari.utils.notifications as notifications

    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    return seen
