"""The registry of pixel attribution methods: one :class:`AttributionMethod` record each.

A record says everything the rest of the package needs about a method: its name, the
batch generator that computes maps, its settings (a :class:`.MethodConfig` subclass),
whether it needs the model's gradients, which fidelity perturbations it optimises, what
it costs and whether its maps are signed. ``explain``, the CLI (``--method``,
``--param``, ``napari-attribution methods``), the batch runner, ``evaluate`` and the
widgets (method list and settings form) all read it; adding a method is one module with
its generator and config plus one :func:`register_method` call.

Built-in methods are registered by :mod:`.methods`; installed packages may add theirs
through the ``napari_attribution.methods`` entry-point group (each entry point names an
``AttributionMethod`` or a function returning one or a list of them).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch

from ..runtime.errors import InputError
from ..runtime.progress import Progress
from .method_config import MethodConfig
from .options import OPTION_NAMES

MapGenerator = Generator[Progress, None, torch.Tensor]
#: ``run(model, x, targets, per_channel, config)`` over one batch x (B, C, H, W): yields
#: progress, returns maps (B, H, W), or (B, C, H, W) with ``per_channel``
RunFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, bool, Any], MapGenerator]
ENTRY_POINT_GROUP = "napari_attribution.methods"


@dataclass(frozen=True)
class AttributionMethod:
    """Everything the package needs to know about one pixel attribution method."""

    name: str
    run: RunFn
    config: type[MethodConfig]
    #: one line for menus and ``napari-attribution methods``
    summary: str
    #: the maps depend on the model's gradients (checked: flat maps of a model without
    #: usable gradients stop with an error naming the forward-only method)
    needs_gradients: bool
    #: ``passes(config, C, H, W, per_channel)``: model evaluations per image of C x H x W
    #: for these settings (a cost hint; with ``needs_gradients`` each includes a backward
    #: pass)
    passes: Callable[[Any, int, int, int, bool], int]
    #: the fidelity games it optimises, as (kind, substrate, blur sigma) for
    #: ``evaluation.metrics.trained_perturbations`` (scores on them are not independent)
    trained_on: Callable[[Any], list[tuple[str, str, float]]] | None = None
    #: plain warnings for these settings on H x W inputs (e.g. a coarse grid)
    warnings: Callable[[Any, int, int], list[str]] | None = None
    #: maps take both signs (shown on a symmetric diverging scale)
    signed: bool = False
    #: one map per channel is available
    per_channel: bool = True
    #: whole fields larger than the model's input can be optimised as one map
    #: (``explain(tiling=...)``, PCIM only today)
    whole_field: bool = False

    def make_config(self, params: dict | None = None) -> MethodConfig:
        """The settings for ``params`` (checked: unknown names or wrong types raise
        :class:`InputError`)."""
        return self.config.from_params(params)

    def all_params(self, params: dict | None = None) -> dict:
        """Every parameter the method will use: its defaults overlaid with ``params``."""
        return self.make_config(params).to_dict()

    def cost(self, params: dict | None, channels: int, height: int, width: int,
             per_channel: bool = False) -> int:
        """Model evaluations per image (see :attr:`passes`)."""
        return int(self.passes(self.make_config(params), channels, height, width,
                               per_channel))

    def perturbations(self, params: dict | None = None) -> list[tuple[str, str, float]]:
        """The games it plays with ``params`` (keys that are not settings, such as a
        result's ``device``, are ignored)."""
        if self.trained_on is None:
            return []
        known = self.config.type_hints()
        return self.trained_on(self.make_config(
            {k: v for k, v in (params or {}).items() if k in known}))

    def plan_warnings(self, params: dict | None, height: int, width: int) -> list[str]:
        if self.warnings is None:
            return []
        return list(self.warnings(self.make_config(params), height, width))

    def describe(self) -> dict:
        """JSON-ready: name, summary, gradients, and every parameter with its default."""
        return {"name": self.name, "summary": self.summary,
                "needs_gradients": self.needs_gradients, "signed": self.signed,
                "per_channel": self.per_channel,
                "params": {s.name: s.default for s in self.config.settings()
                           if s.kind != "other"}}


_REGISTRY: dict[str, AttributionMethod] = {}
_entry_points_loaded = False


def register_method(method: AttributionMethod, replace: bool = False) -> AttributionMethod:
    """Add ``method`` to the registry (``replace``: allow a name already taken)."""
    if not isinstance(method, AttributionMethod):
        raise TypeError(f"register an AttributionMethod; got {type(method).__name__}")
    if not method.name.isidentifier() or method.name == "auto":
        raise ValueError(f"method names are identifiers other than 'auto'; got "
                         f"{method.name!r}")
    if not (isinstance(method.config, type) and issubclass(method.config, MethodConfig)):
        raise TypeError(f"{method.name}: config must be a MethodConfig subclass")
    clash = sorted(OPTION_NAMES & set(method.config.type_hints()))
    if clash:
        raise ValueError(f"{method.name}: settings {clash} clash with explain's own "
                         "options (ExplainOptions); rename them")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"an attribution method named {method.name!r} is registered "
                         "already (replace=True to override it)")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method (tests and plugins that registered one)."""
    _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    """Register the methods of installed packages, once (a broken one is logged)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    import logging
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = ep.load()
            found = found() if callable(found) and not isinstance(
                found, AttributionMethod) else found
            for m in found if isinstance(found, (list, tuple)) else [found]:
                if m.name not in _REGISTRY:
                    register_method(m)
        except Exception as err:  # noqa: BLE001 (a plugin must not break the package)
            logging.getLogger(__name__).warning(
                "attribution method entry point %r failed: %s", ep.name, err)


def registered_methods() -> dict[str, AttributionMethod]:
    """Name -> record, built-ins first, then in registration order."""
    _load_entry_points()
    return dict(_REGISTRY)


def get_method(name: str) -> AttributionMethod:
    """The record of ``name``; :class:`InputError` listing the choices otherwise."""
    methods = registered_methods()
    if name not in methods:
        raise InputError(f"unknown attribution method {name!r}; choose one of "
                         f"{[*methods, 'auto']}")
    return methods[name]


def single_pass(fn: Callable[..., torch.Tensor], message: str | None = None) -> RunFn:
    """Wrap a plain ``fn(model, x, targets, per_channel, config) -> maps`` as a run
    generator with one progress event (for methods with no steps to report)."""
    def run(model, x, targets, per_channel, config) -> MapGenerator:
        maps = fn(model, x, targets, per_channel, config)
        yield Progress(1, 1, message or getattr(fn, "__name__", "attribution"))
        return maps

    run.__name__ = getattr(fn, "__name__", "run")
    run.__doc__ = fn.__doc__
    return run

