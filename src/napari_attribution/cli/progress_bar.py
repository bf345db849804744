"""A plain-text progress bar for generators of :class:`Progress` events."""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import TypeVar

from ..core.runtime.progress import Progress, run_generator

R = TypeVar("R")


def run_with_bar(gen: Generator[Progress, None, R], quiet: bool = False) -> R:
    """Drive ``gen`` printing a one-line bar to stderr; returns the generator's result."""
    stream = sys.stderr
    interactive = stream.isatty()
    last_msg = [""]

    def show(p: Progress) -> None:
        if quiet:
            return
        width = 30
        filled = int(width * p.fraction)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {100 * p.fraction:5.1f}%  {p.message}"
        if interactive:
            stream.write("\r" + line[:120].ljust(120))
            stream.flush()
        elif p.message != last_msg[0]:
            stream.write(line + "\n")
        last_msg[0] = p.message

    result = run_generator(gen, show)
    if interactive and not quiet:
        stream.write("\n")
    return result
