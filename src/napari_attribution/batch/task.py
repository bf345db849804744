"""The unit of batch work: a few images in, their outputs written to the store.

:func:`process_images` runs on a Dask worker (or in any process). It skips images
already marked done, so a task that is re-run after its worker died never duplicates
work that was finished, and writes each image's outputs before marking it done. Images
are opened lazily; a large field (``batch.regions``) is computed and written region by
region, the others are read whole and computed together.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.runtime.errors import BundleError, InputError
from .records import ImageRecord, open_record
from .store import BatchStore


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker needs besides the image indices (small, pickled per task)."""

    bundle_path: str
    bundle_sha256: str
    store_path: str
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_channel: bool = False
    target: int | None = None
    input_size: int | None = None
    device: str = "auto"
    batch_size: int = 16
    image_shape: tuple[int, int] = (0, 0)
    downsample: int = 1
    trust: bool = False
    regions: bool | None = None
    region_size: int = 1024
    evidence: bool = False


class WorkerState:
    """What one worker keeps between tasks: its device and the models it has loaded.

    On a Dask worker the :class:`~.cluster.BatchWorkerSetup` plugin creates it at worker
    start and drops it (and the models) at teardown; outside Dask one process-wide state
    serves the in-process runs.
    """

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self.lock = threading.Lock()
        self.models: dict[tuple, Any] = {}


#: the attribute the worker plugin sets on a Dask worker
WORKER_ATTRIBUTE = "napari_attribution_state"
_LOCAL = WorkerState()


def worker_state() -> WorkerState:
    """The calling worker's state (the process-wide one outside a Dask worker or before
    the plugin ran)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return _LOCAL
    return getattr(worker, WORKER_ATTRIBUTE, None) or _LOCAL


def current_worker_device(default: str) -> str:
    """Device assigned to the worker running the calling task (``default`` outside Dask)."""
    return worker_state().device or default


def get_bundle(path: str, sha256: str, device: str, trust: bool = False) -> Any:
    """The model (a ``Classifier``), loaded once per worker thread and device (cached)."""
    from ..io.models import load_model

    state = worker_state()
    key = (threading.get_ident(), path, sha256, device)
    with state.lock:
        bundle = state.models.get(key)
    if bundle is None:
        bundle = load_model(path, device=device, trust=trust)
        if bundle.sha256 != sha256:
            raise BundleError(f"the model bundle {path} changed since the run started "
                              "(sha256 differs); restart the run")
        with state.lock:
            state.models[key] = bundle
    return bundle


def clear_model_cache() -> None:
    """Forget the models cached outside Dask (tests, or after replacing a bundle file)."""
    with _LOCAL.lock:
        _LOCAL.models.clear()


def tiled_probabilities(bundle: Any, raw: np.ndarray, input_size: int | None,
                        batch_size: int, device: str) -> np.ndarray:
    """Class probabilities (N, K) of raw images: one pass per image when they fit the
    model's input, else the mean over non-overlapping tiles of ``input_size`` (a model
    trained on crops never sees a whole field in one global-pooling pass)."""
    if input_size is None or max(raw.shape[-2:]) <= int(input_size):
        return bundle.predict_proba(raw, batch_size=batch_size, device=device)
    from ..core.models.classifier import check_outputs, frozen
    from ..core.models.inference import tile_probabilities
    from ..core.runtime.progress import run_generator

    x = np.asarray(bundle.prepare(raw), np.float32)
    with frozen(bundle.model, device) as net:
        probs, _ = run_generator(tile_probabilities(net, x, int(input_size), overlap=0,
                                                    batch_size=batch_size, device=device))
    check_outputs(probs, what="class probabilities")
    return probs


def compute_outputs(bundle: Any, raw: np.ndarray, spec: TaskSpec, device: str,
                    evidence: list | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Probabilities (N, K), targets (N,) and maps per method for raw images (N, C, H, W).

    This is the single-process computation; batch runs call it per task. With
    ``spec.evidence`` the first method's maps are checked and their states appended to
    ``evidence``.
    """
    from ..core.runtime.progress import run_generator

    probs = tiled_probabilities(bundle, raw, spec.input_size, spec.batch_size, device)
    if spec.target is None:
        targets = probs.argmax(1).astype(np.int64)
    else:
        if not 0 <= spec.target < probs.shape[1]:
            raise InputError(f"target class {spec.target} is out of range: the model has "
                             f"{probs.shape[1]} classes")
        targets = np.full(raw.shape[0], spec.target, dtype=np.int64)
    maps: dict[str, np.ndarray] = {}
    if spec.methods:
        from ..core.attribution.explain import explain

        x = bundle.prepare(raw).astype(np.float32)
        for k, (method, params) in enumerate(spec.methods.items()):
            check = bool(spec.evidence and k == 0)
            result = run_generator(explain(
                bundle.model, x, targets=targets, method=method,
                per_channel=spec.per_channel, device=device, batch_size=spec.batch_size,
                input_size=spec.input_size, evidence=check, **params))
            maps[method] = np.asarray(result.maps, dtype=np.float32)
            if check and evidence is not None:
                evidence.extend(result.evidence["state"])
    return probs, targets, maps


def process_images(spec: TaskSpec, indices: list[int], records: list[ImageRecord],
                   fields: list[str] | None = None) -> dict[str, Any]:
    """Compute and store the outputs of images ``indices`` (records and NGFF field paths
    in the same order).

    Returns which indices were computed and which were found done already.
    """
    t0 = time.perf_counter()
    store = BatchStore.writer(spec.store_path, list(spec.methods))
    done = store.done_mask(indices)
    todo = [(i, r) for i, r, d in zip(indices, records, done, strict=True) if not d]
    skipped = [i for i, d in zip(indices, done, strict=True) if d]
    if not todo:
        return {"computed": [], "skipped": skipped, "seconds": 0.0}
    device = current_worker_device(spec.device)
    if device == "auto":
        from ..core.runtime.devices import resolve_device

        device = str(resolve_device("auto"))
    bundle = get_bundle(spec.bundle_path, spec.bundle_sha256, device, spec.trust)
    from .regions import process_large_field, use_regions

    where = dict(zip(indices, fields or [None] * len(indices), strict=True))
    f = int(spec.downsample)
    planes, small = [], []
    large_seconds = 0.0
    for index, record in todo:
        arr = open_record(record)
        c, h, w = (int(n) for n in arr.shape)
        if min(h, w) < f:
            raise InputError(f"image {record.id} is {h}x{w} pixels, smaller than the "
                             f"downsampling factor {f}")
        if use_regions((c, h // f, w // f), spec.regions):
            t_large = time.perf_counter()
            process_large_field(store, index, where[index], record, arr, bundle, spec,
                                device)
            large_seconds += time.perf_counter() - t_large
            continue
        if hasattr(arr, "compute"):  # read whole here, never through the distributed client
            arr = arr.compute(scheduler="synchronous")
        img = np.asarray(arr, dtype=np.float32)
        if f > 1:
            from ..io.plate import block_mean

            img = block_mean(img, f)
        if tuple(img.shape[1:]) != tuple(spec.image_shape):
            raise InputError(f"image {record.id} is {img.shape[1]}x{img.shape[2]} pixels but "
                             f"the plate's images are {spec.image_shape[0]}x"
                             f"{spec.image_shape[1]}"
                             f"{' after downsampling' if spec.downsample > 1 else ''}; one "
                             "run needs equal-sized images")
        planes.append(img)
        small.append((index, record))
    if not small:
        return {"computed": [i for i, _ in todo], "skipped": skipped,
                "seconds": time.perf_counter() - t0}
    raw = np.stack(planes)
    states: list[str] = []
    probs, targets, maps = compute_outputs(bundle, raw, spec, device, states)
    per_image = (time.perf_counter() - t0 - large_seconds) / len(small)
    for k, (index, _) in enumerate(small):
        store.write_image(index, probs[k], {m: a[k] for m, a in maps.items()},
                          {m: int(targets[k]) for m in maps}, per_image, where[index])
    return {"computed": [i for i, _ in todo], "skipped": skipped,
            "seconds": time.perf_counter() - t0,
            "evidence": {int(i): s for (i, _), s in zip(small, states, strict=False)}}
