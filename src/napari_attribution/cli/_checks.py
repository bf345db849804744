"""Shared command-line checks: the overwrite flag, the missing-chunks flag and typed,
ranged numeric options."""

from __future__ import annotations

import argparse
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def add_overwrite_argument(p: argparse.ArgumentParser, what: str = "output files") -> None:
    """``--overwrite``: the one rule for every command is to refuse existing outputs."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace existing {what} (default: refuse them)")


def add_missing_chunks_argument(p: argparse.ArgumentParser) -> None:
    """``--allow-missing-chunks``: read OME-Zarr images with chunks missing on disk as the
    fill value, with a warning, instead of refusing them."""
    p.add_argument("--allow-missing-chunks", action="store_true",
                   help="read OME-Zarr images whose chunks are missing on disk as the fill "
                        "value, with a warning (default: refuse them, naming the array; "
                        "also NAPARI_ATTRIBUTION_ALLOW_MISSING_CHUNKS=1)")


@contextmanager
def missing_chunks_allowed(allow: bool) -> Iterator[None]:
    """While a command runs, allow missing chunks if ``allow``: through the environment
    variable the readers consult, so the batch workers the command starts inherit it."""
    from ..io.ngff import FILL_MISSING_ENV

    old = os.environ.get(FILL_MISSING_ENV)
    if allow:
        os.environ[FILL_MISSING_ENV] = "1"
    try:
        yield
    finally:
        if allow and old is None:
            os.environ.pop(FILL_MISSING_ENV, None)
        elif allow:
            os.environ[FILL_MISSING_ENV] = old


@contextmanager
def printing_missing_chunks() -> Iterator[None]:
    """While a command runs, print the readers' missing-chunk warnings as plain
    ``warning: ...`` lines (once each), when they happen; other warnings as usual."""
    from ..io.ngff import MissingChunksWarning

    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", MissingChunksWarning)
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, MissingChunksWarning):
                return show(message, category, filename, lineno, file, line)
            if str(message) not in seen:
                seen.add(str(message))
                print(f"warning: {message}", flush=True)
            return None

        warnings.showwarning = showwarning
        yield


def _number(kind: type, low: float | None, high: float | None, low_open: bool,
            what: str) -> Callable[[str], float | int]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is outside the allowed range ({what})")
        return value

    parse.__name__ = "whole number" if kind is int else "number"
    return parse


positive_int = _number(int, 1, None, False, "a whole number >= 1")
non_negative_int = _number(int, 0, None, False, "a whole number >= 0")
positive_float = _number(float, 0.0, None, True, "a number > 0")
non_negative_float = _number(float, 0.0, None, False, "a number >= 0")
learning_rate = _number(float, 0.0, 10.0, True, "a learning rate > 0 and <= 10")
probability = _number(float, 0.0, 1.0, False, "a fraction between 0 and 1")
open_fraction = _number(float, 0.0, 1.0, True, "a fraction > 0 and <= 1")
