"""One run at a time per result store: an exclusive lock file beside the store.

``<store>.lock`` (e.g. ``plate.zarr.lock``, beside the store's resolved path: a symlink
to a store locks the store itself) is held with ``flock`` by the process driving
a run, from before the store is opened (or replaced with ``overwrite``) until the run
ends, fails or is cancelled; it says who holds it (host, pid, start time). A second run on
the same store is refused at once with that information, so two runs never compute the
same images twice and ``--overwrite`` can never delete a store under a running run. The
lock is released by the kernel when the process dies, so a killed run never leaves a
stale lock behind (the leftover file is harmless and reused).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..core.runtime.errors import InputError, OutputError
from ..io.atomic import why_failed

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not guarded
    fcntl = None  # type: ignore[assignment]


class StoreBusy(InputError):
    """Another run holds the result store."""


def lock_path(store: str | Path) -> Path:
    """The lock file of ``store``: beside the store's *resolved* path, so every name of
    one store (a symlink, ``..`` in the path, a relative path) takes the same lock."""
    store = Path(os.path.realpath(store))
    return store.with_name(store.name + ".lock")


class StoreLock:
    """An exclusive, non-blocking lock on one result store (a context manager), keyed on
    the store's resolved path."""

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = lock_path(self.store)
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        if fcntl is None:  # pragma: no cover
            return self
        for _ in range(10):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise OutputError(f"cannot write the result store {self.store}: "
                                  f"{why_failed(err)} ([Errno {err.errno}])") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreBusy(f"output {self.store} is in use by another run ({holder}); "
                                "wait for it to finish (or stop it), then run again; "
                                "--overwrite is refused while it runs") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file as we opened it: try again
                os.close(fd)
                continue
            info = {"host": socket.gethostname(), "pid": os.getpid(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return self
        raise StoreBusy(f"could not lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding: no one can be inside
        except OSError:
            pass
        os.close(self._fd)  # closes the flock too
        self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
