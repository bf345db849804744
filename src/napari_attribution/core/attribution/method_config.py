"""Settings of one attribution method: a dataclass whose fields are its parameters.

Every registered method (:mod:`.registry`) names a config class built on
:class:`MethodConfig`: its fields, with their defaults and type hints, are the parameters
``explain(..., **params)``, the CLI's ``--param KEY=VALUE`` and the widget's settings form
accept. :func:`setting` attaches what a form needs (label, tooltip, range, choices,
whether it is an advanced knob) to a field; the form is derived from it, nothing is
listed twice. Values are checked against the type hints (JSON-parsed values from the
CLI included) before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..runtime.errors import InputError


def setting(default: Any, *, label: str | None = None, help: str = "",  # noqa: A002
            minimum: float | None = None, maximum: float | None = None,
            choices: Sequence[Any] | None = None, advanced: bool = False) -> Any:
    """A config field with what a settings form shows: ``label`` (default: the name),
    ``help`` (tooltip), ``minimum``/``maximum`` (numbers), ``choices`` (a drop-down) and
    ``advanced`` (hidden under "more settings")."""
    meta = {"label": label, "help": help, "minimum": minimum, "maximum": maximum,
            "choices": None if choices is None else tuple(choices), "advanced": advanced}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults need a tuple")
    return dataclasses.field(default=default, metadata={"setting": meta})


@dataclass(frozen=True)
class Setting:
    """One parameter as a form shows it (see :meth:`MethodConfig.settings`)."""

    name: str
    kind: str          # 'int', 'float', 'bool', 'str', 'choice' (anything else: API only)
    default: Any
    optional: bool     # None is allowed (the form offers "auto")
    label: str
    help: str
    minimum: float | None
    maximum: float | None
    choices: tuple | None
    advanced: bool


@dataclass
class MethodConfig:
    """Base of every method's settings: parameters from keywords, checked."""

    #: how error messages name the method ("PCIM", "integrated gradients", ...)
    title: ClassVar[str] = "the method"

    @classmethod
    def from_params(cls, params: dict | None = None) -> MethodConfig:
        """Build from keyword parameters; unknown names and values of the wrong type
        raise :class:`InputError` naming them."""
        params = dict(params or {})
        hints = cls.type_hints()
        unknown = sorted(set(params) - set(hints))
        if unknown:
            raise InputError(f"unknown {cls.title} parameter(s) {unknown}; known: "
                             f"{sorted(hints) or 'none'}")
        for key, value in params.items():
            if not type_ok(value, hints[key]):
                raise InputError(f"{cls.title} parameter {key}={value!r} must be "
                                 f"{type_name(hints[key])}")
        return cls(**params)

    @classmethod
    def type_hints(cls) -> dict[str, Any]:
        """Field name -> resolved type hint (``Any`` where it cannot be resolved)."""
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 (an unresolvable annotation: accept anything)
            hints = {}
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict:
        """Every parameter (tuples as lists; JSON-ready for plain types)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def settings(cls) -> list[Setting]:
        """The fields as a form shows them, in declaration order."""
        hints = cls.type_hints()
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata.get("setting", {})
            kind, optional = _kind(hints[f.name])
            if meta.get("choices"):
                kind = "choice"
            out.append(Setting(
                name=f.name, kind=kind, default=f.default, optional=optional,
                label=meta.get("label") or f.name.replace("_", " "),
                help=meta.get("help", ""), minimum=meta.get("minimum"),
                maximum=meta.get("maximum"), choices=meta.get("choices"),
                advanced=bool(meta.get("advanced", False))))
        return out


def _kind(hint: Any) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | 'other', whether None is allowed)."""
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            return "other", optional
        hint = rest[0]
    for t, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if hint is t:
            return name, optional
    return "other", optional


def type_ok(value: Any, hint: Any) -> bool:
    """Whether a (JSON-parsed) parameter value fits a type annotation."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) \
            and bool(np.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(
            type_ok(v, args[0]) for v in value) if args else isinstance(value, list | tuple)
    return True  # objects (e.g. a torch layer) are the API's business


def type_name(hint: Any) -> str:
    """A type hint in words ("a whole number or null")."""
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) not in (tuple, list):
        return " or ".join(type_name(a) for a in args)
    if hint is type(None):
        return "null"
    return {int: "a whole number", float: "a number", str: "text",
            bool: "true or false"}.get(hint, "a list" if typing.get_origin(hint) in
                                       (tuple, list) else getattr(hint, "__name__", str(hint)))
