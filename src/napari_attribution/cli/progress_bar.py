"""Progress of generators of :class:`Progress` events on the terminal (tqdm)."""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import TypeVar

from tqdm import tqdm

from ..core.runtime.progress import Progress, run_generator

R = TypeVar("R")


def run_with_bar(gen: Generator[Progress, None, R], quiet: bool = False) -> R:
    """Drive ``gen`` showing its progress on stderr; returns the generator's result.

    On a terminal: one tqdm bar with the current message. Elsewhere (logs, pipes): one
    plain line each time the message changes, so that logs stay readable. ``quiet``: none.
    """
    stream = sys.stderr
    if quiet:
        return run_generator(gen)
    if not stream.isatty():
        last = [""]

        def log(p: Progress) -> None:
            if p.message != last[0]:
                stream.write(f"{100 * p.fraction:5.1f}%  {p.message}\n")
                last[0] = p.message

        return run_generator(gen, log)
    with tqdm(total=1.0, file=stream, unit="", dynamic_ncols=True, leave=True,
              bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}") as bar:

        def show(p: Progress) -> None:
            bar.n = p.fraction
            bar.set_postfix_str(p.message[:80], refresh=False)
            bar.refresh()

        return run_generator(gen, show)
