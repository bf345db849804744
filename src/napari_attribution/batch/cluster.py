"""Dask distributed: a LocalCluster by default, or any running cluster by address.

Workers get a :class:`BatchWorkerSetup` plugin that pins torch's thread count (so two
workers never fight over the same cores) and assigns each worker a device: with GPUs
present, worker ``k`` of a LocalCluster uses ``cuda:k mod n_gpus``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..core.runtime.errors import InputError
from .task import WORKER_ATTRIBUTE, WorkerState

try:
    import dask
    from distributed import Client, LocalCluster, WorkerPlugin
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise InputError("batch runs need dask[distributed]: pip install "
                     "'napari-attribution[batch]'") from _err


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def choose_device(requested: str, worker_name: Any) -> str:
    """The device a worker uses: ``requested`` unless "auto", where GPUs are spread
    over workers by their index and CPU is the fallback."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        try:
            index = int(worker_name)
        except (TypeError, ValueError):
            index = sum(map(ord, str(worker_name)))
        return f"cuda:{index % count}"
    return "cpu"


class BatchWorkerSetup(WorkerPlugin):
    """Sets torch threads and the worker's device when a worker (re)starts, and holds the
    worker's model cache (:class:`~.task.WorkerState`) for as long as the worker lives."""

    name = "napari-attribution-batch"

    def __init__(self, threads: int = 1, device: str = "auto") -> None:
        self.threads = int(threads)
        self.device = device

    def setup(self, worker: Any) -> None:
        import torch

        for var in THREAD_ENV:
            os.environ.setdefault(var, str(self.threads))
        torch.set_num_threads(self.threads)
        setattr(worker, WORKER_ATTRIBUTE, WorkerState(choose_device(self.device, worker.name)))

    def teardown(self, worker: Any) -> None:
        state = getattr(worker, WORKER_ATTRIBUTE, None)
        if state is not None:
            with state.lock:
                state.models.clear()
            setattr(worker, WORKER_ATTRIBUTE, None)


def default_workers(device: str = "auto") -> int:
    """One worker per GPU when GPUs are used, else one per CPU core."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, os.cpu_count() or 1)


def open_client(scheduler: str | None = None, client: Any = None, n_workers: int | None = None,
                threads_per_worker: int = 1, processes: bool = True,
                device: str = "auto") -> tuple[Any, Callable[[], None]]:
    """A connected client and a function that releases what this call started.

    ``client``: use it as is. ``scheduler``: connect to a running cluster at this address.
    Otherwise start a LocalCluster of ``n_workers`` workers (processes or threads), each
    with ``threads_per_worker`` threads and the same number of torch/OpenMP threads.
    """
    if client is not None:
        owned: list[Any] = []
    elif scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as err:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
        owned = [client]
    else:
        n = n_workers or default_workers(device)
        if n < 1 or threads_per_worker < 1:
            raise InputError("workers and threads per worker must be at least 1")
        env = {var: str(threads_per_worker) for var in THREAD_ENV}
        kwargs: dict[str, Any] = {}
        if processes:
            kwargs["env"] = env  # applied before the worker process imports torch
        # no dashboard, so nobody reads the workers' statistical profiles: sampling every
        # thread's stack every 10 ms only grows the workers' memory over a long run
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                                   processes=processes, dashboard_address=None,
                                   silence_logs=40, **kwargs)
        client = Client(cluster)
        owned = [client, cluster]
    client.register_plugin(BatchWorkerSetup(threads_per_worker, device))

    def release() -> None:
        for obj in owned:
            try:
                obj.close()
            except Exception:  # closing is best effort (e.g. after Ctrl-C)
                pass

    return client, release
