"""How :func:`.explain.explain` runs a method, apart from the method's own settings.

:class:`ExplainOptions` gathers what every method shares (device, batches, tiling of large
images, contrastive targets, the evidence check); the method's settings are its
:class:`.MethodConfig`. ``explain(model, x, method="pcim", device="cpu", steps=12)`` still
works: :func:`split_options` sends ``device`` here and ``steps`` to the method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..runtime.errors import InputError
from .field import BACKGROUND_FRACTION

#: ``explain``'s ways of covering an image larger than the model's input (PCIM)
TILINGS = ("auto", "field", "one_pass", "per_tile")


@dataclass
class ExplainOptions:
    """Options of :func:`.explain.explain` shared by every method.

    ``per_channel``: one map per channel. ``device``: 'auto', 'cpu', 'cuda[:N]' or 'mps'.
    ``batch_size``: images or tiles per pass (halved when out of memory).
    ``input_size``: the side of the square input the model was trained on (larger images
    are tiled; None: whole images). ``tile_overlap``: overlap of those tiles (default a
    quarter tile; whole-field PCIM: ``input_size // 16``). ``contrast``: explain "target
    rather than this class". ``evidence``: run the evidence check afterwards.
    ``tiling``, ``background``, ``memory_budget``, ``amp``: whole-field PCIM (see
    :mod:`.field`).
    """

    per_channel: bool = False
    device: str = "auto"
    batch_size: int = 32
    input_size: int | None = None
    tile_overlap: int | None = None
    contrast: int | None = None
    evidence: bool = False
    tiling: str = "auto"
    background: float | None = BACKGROUND_FRACTION
    memory_budget: float | None = None
    amp: bool | None = None

    def check(self) -> ExplainOptions:
        """Raise :class:`InputError` for values no run can use; return self."""
        if int(self.batch_size) < 1:
            raise InputError(f"batch_size must be at least 1; got {self.batch_size}")
        if self.tiling not in TILINGS:
            raise InputError(f"unknown tiling {self.tiling!r}; choose one of {TILINGS}")
        if self.background is not None and not 0 <= float(self.background) < 1:
            raise InputError(f"background must be a fraction in [0, 1) or None; got "
                             f"{self.background}")
        return self

    def replace(self, **changes: Any) -> ExplainOptions:
        return dataclasses.replace(self, **changes)


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ExplainOptions))


def split_options(options: ExplainOptions | None, kwargs: dict[str, Any]
                  ) -> tuple[ExplainOptions, dict[str, Any]]:
    """(options with the keyword overrides that name an option, the method's params)."""
    base = options if options is not None else ExplainOptions()
    if not isinstance(base, ExplainOptions):
        raise InputError(f"options must be ExplainOptions; got {type(base).__name__}")
    overrides = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
    params = {k: v for k, v in kwargs.items() if k not in OPTION_NAMES}
    return (base.replace(**overrides) if overrides else base), params
