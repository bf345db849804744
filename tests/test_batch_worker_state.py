"""Batch workers keep their device and loaded models in the worker plugin's state."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from napari_attribution.batch import task  # noqa: E402
from napari_attribution.batch.cluster import open_client  # noqa: E402


def _state_of_worker():
    state = task.worker_state()
    return state is not task._LOCAL, state.device, len(state.models)


def _load_twice(path: str, sha: str):
    a = task.get_bundle(path, sha, "cpu")
    b = task.get_bundle(path, sha, "cpu")
    return a is b, len(task.worker_state().models)


def test_worker_plugin_holds_device_and_model_cache(tmp_path):
    from napari_attribution.api import save_bundle, train
    from napari_attribution.core.data.synthetic import make_cell_phenotype
    from napari_attribution.io.models import load_model

    data = make_cell_phenotype(n_images=24, size=32, seed=0)
    path = tmp_path / "m.safetensors"
    save_bundle(path, train(data, epochs=1, batch_size=8))
    sha = load_model(path).sha256

    client, release = open_client(n_workers=1, processes=False, device="cpu")
    try:
        on_worker, device, n_models = client.submit(_state_of_worker, pure=False).result()
        assert (on_worker, device, n_models) == (True, "cpu", 0)
        same, n_models = client.submit(_load_twice, str(path), sha, pure=False).result()
        assert same and n_models == 1
    finally:
        release()
    # outside Dask the process-wide state is used, and cleared on request
    task.get_bundle(str(path), sha, "cpu")
    assert len(task._LOCAL.models) == 1
    task.clear_model_cache()
    assert task._LOCAL.models == {}
