"""Plain dicts (resolved Hydra nodes) into validated frozen dataclasses, with one-line errors."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from editlab.errors import EditlabError

T = TypeVar("T")


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """``cls(**raw)``; unknown keys, non-finite numbers and wrong types become an :class:`EditlabError` naming
    ``where`` and the key.

    A NaN or infinite number is refused for every key: no setting of editlab means "infinity" (``null`` is
    how a limit is switched off), and a NaN passes every ``<``/``>`` check a ``__post_init__`` makes. The
    other value checks live in each dataclass's ``__post_init__``.
    """
    raw = dict(raw or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise EditlabError(f"unknown key(s) {unknown} in {where}; valid keys: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        if value == "???":  # OmegaConf's MISSING survives to_container(resolve=True) as this string
            raise EditlabError(f"{where.split(' ')[0]}.{key} is required and not set; add "
                               f"{where.split(' ')[0]}.{key}=<value> to the command")
        if not _fits(value, hints.get(key, Any)):
            raise EditlabError(f"{where}.{key}={value!r} should be {_name(hints[key])}; fix the value")
        if _non_finite(value):
            raise EditlabError(f"{where}.{key}={value} is not a finite number; give a finite value (null switches a "
                               "limit off where the key allows it)")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as exc:  # a wrong type reaching a comparison or conversion in __post_init__
        raise EditlabError(f"bad value in {where}: {exc}") from None


def _non_finite(value: Any) -> bool:
    """True when ``value`` is, or a list/dict in it holds, a NaN or infinite float."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from YAML or the command line) has the annotated type; only the shapes configs use are
    checked (scalars, ``X | None`` unions, lists, Literal), anything else passes (``__post_init__`` checks it)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _name(hint: Any) -> str:
    """A type as a user reads it: ``an int``, ``a float or null``."""
    words = {int: "an int", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(words.get(a, getattr(a, "__name__", str(a))) for a in args)
