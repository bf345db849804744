"""Progress events for long work written as generators.

Long computations are generators that ``yield Progress(...)`` and ``return`` their
result. The same generator is driven synchronously by scripts and tests
(:func:`run_generator`), by the CLI with a text progress bar, and by napari's
``thread_worker`` in the GUI. Cancelling is closing the generator at a yield.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """One progress event: ``step`` of ``total`` done, a message and optional partial data."""

    step: int
    total: int
    message: str = ""
    partial: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.step / self.total)


ProgressGenerator = Generator[Progress, None, R]


def run_generator(
    gen: Generator[Progress, None, R],
    callback: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> R:
    """Drive ``gen`` to completion and return its result.

    ``callback`` sees every event; if ``should_stop()`` turns true the generator is
    closed at the next yield and :class:`~napari_attribution.core.runtime.errors.Cancelled`
    is raised.
    """
    from .errors import Cancelled

    try:
        while True:
            event = next(gen)
            if callback is not None:
                callback(event)
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled("cancelled by the user")
    except StopIteration as stop:
        return stop.value


def nested(gen: Generator[Progress, None, R], prefix: str, index: int, count: int
           ) -> Generator[Progress, None, R]:
    """Re-yield ``gen``'s events as part ``index`` of ``count`` equal parts of a larger job
    (messages prefixed ``"{prefix}: "``); returns ``gen``'s result."""
    try:
        while True:
            ev = next(gen)
            total = max(ev.total, 1)
            yield Progress(index * total + ev.step, count * total,
                           f"{prefix}: {ev.message}", ev.partial)
    except StopIteration as stop:
        return stop.value
