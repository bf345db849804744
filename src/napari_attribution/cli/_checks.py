"""Shared command-line checks: the overwrite flag and typed, ranged numeric options."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def add_overwrite_argument(p: argparse.ArgumentParser, what: str = "output files") -> None:
    """``--overwrite``: the one rule for every command is to refuse existing outputs."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace existing {what} (default: refuse them)")


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
