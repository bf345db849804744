"""One run at a time per result store: an exclusive lock file beside the store.

``<store>.lock`` (e.g. ``plate.zarr.lock``, beside the store's resolved path: a symlink
to a store locks the store itself) is held by the process driving a run (``filelock``:
``flock`` on Unix, ``msvcrt`` locking on Windows), from before the store is opened (or
replaced with ``overwrite``) until the run ends, fails or is cancelled; it says who holds
it (host, pid, start time). A second run on the same store is refused at once with that
information, so two runs never compute the same images twice and ``--overwrite`` can
never delete a store under a running run. The operating system releases the lock when the
process dies, so a killed run never leaves a stale lock behind (a leftover file is
harmless and reused).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ..core.runtime.errors import InputError, OutputError
from ..io.atomic import why_failed


class StoreBusy(InputError):
    """Another run holds the result store."""


def lock_path(store: str | Path) -> Path:
    """The lock file of ``store``: beside the store's *resolved* path, so every name of
    one store (a symlink, ``..`` in the path, a relative path) takes the same lock."""
    store = Path(os.path.realpath(store))
    return store.with_name(store.name + ".lock")


def _write_holder(fd: int) -> None:
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(info).encode())


class StoreLock:
    """An exclusive, non-blocking lock on one result store (a context manager), keyed on
    the store's resolved path."""

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = lock_path(self.store)
        self._lock = FileLock(self.path, timeout=0, thread_local=False,
                              on_acquired=_write_holder)

    def acquire(self) -> StoreLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise StoreBusy(f"output {self.store} is in use by another run "
                            f"({_read_holder(self.path)}); wait for it to finish (or stop "
                            "it), then run again; --overwrite is refused while it runs"
                            ) from None
        except OSError as err:
            raise OutputError(f"cannot write the result store {self.store}: "
                              f"{why_failed(err)} ([Errno {err.errno}])") from None
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text()[:4096] or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
