"""Atomic, honest file writes: a result is under its final name only when complete.

Every writer of this package goes through :func:`atomic_write`: it writes to a hidden
temporary file in the destination folder (``.tmp-<random>-<name>``, same file system),
flushes it to disk, then renames it over the final name in one step. On any failure the
temporary file is removed and an :class:`OutputError` says what could not be written,
where and why (read-only folder, full disk, ...).

Overwrite policy (one rule for every command): an existing output is refused unless
``overwrite`` is true (``--overwrite`` on the command line). Library functions default to
``overwrite=True`` (the caller chose the path); the command line defaults to refusing.
A path that is a folder or a device (``/dev/null``) is never a valid output file.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.runtime.errors import OutputError

TMP_PREFIX = ".tmp-"


def why_failed(err: OSError) -> str:
    reasons = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EDQUOT: "the disk quota is exceeded", errno.ENOENT: "no such folder",
               errno.ENOTDIR: "a part of the path is not a folder",
               errno.EISDIR: "it is a folder", errno.EEXIST: "it already exists",
               errno.ENAMETOOLONG: "the name is too long",
               errno.EFBIG: "the file is larger than the file system or this process's "
                            "file size limit allows"}
    return reasons.get(err.errno or -1, err.strerror or str(err))


def check_output(path: str | Path, overwrite: bool = True, what: str = "output") -> Path:
    """Raise :class:`OutputError` unless ``path`` can receive a new file.

    Refused: a folder, a device or other non-regular file, and (unless ``overwrite``)
    an existing file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {what} to {path}: it is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"cannot write {what} to {path}: it is a device or special file, "
                          "not a regular file; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{what} {path} already exists; use --overwrite (overwrite=True) "
                          "to replace it, or choose another name")
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path, overwrite: bool, what: str) -> None:
    """Rename ``tmp`` to ``path``; without ``overwrite`` never replace an existing file."""
    if not overwrite:
        try:
            os.link(tmp, path)  # fails if path appeared meanwhile: no silent clobbering
        except FileExistsError:
            raise OutputError(f"{what} {path} already exists; use --overwrite "
                              "(overwrite=True) to replace it") from None
        except OSError:  # no hard links on this file system: check, then rename
            check_output(path, overwrite=False, what=what)
            os.replace(tmp, path)
        else:
            os.unlink(tmp)
        return
    os.replace(tmp, path)


def _new_temp(path: Path) -> Path:
    """Create an empty hidden file beside ``path``, with the usual (umask) permissions,
    unlike :func:`tempfile.mkstemp`'s owner-only ones: results are shared."""
    for _ in range(100):
        tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True, what: str = "output"
                ) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path`` atomically.

    The temporary file sits in ``path``'s folder and keeps its suffix (so libraries that
    look at the extension behave). Any exception removes it; ``OSError`` becomes an
    :class:`OutputError` naming what, where and why.
    """
    path = check_output(path, overwrite, what)
    folder = path.parent
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _commit(tmp, path, overwrite, what)
        tmp = None
        _fsync_dir(folder)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot write {what} to {path}: {why_failed(err)} "
                          f"([Errno {err.errno}])") from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def atomic_write(path: str | Path, write: Callable[[Path], object], overwrite: bool = True,
                 what: str = "output") -> Path:
    """Call ``write(tmp_path)``, then move the file to ``path`` atomically; returns ``path``."""
    with atomic_path(path, overwrite, what) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True,
                       what: str = "output") -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data), overwrite, what)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True,
                      what: str = "output", encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding=encoding, newline=""),
                        overwrite, what)
