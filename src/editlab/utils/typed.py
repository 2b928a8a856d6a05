"""Plain dicts (resolved Hydra nodes) into validated frozen dataclasses, with one-line errors."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from editlab.errors import EditlabError

T = TypeVar("T")


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """``cls(**raw)``; unknown keys and wrong types become an :class:`EditlabError` naming ``where``.

    Value checks live in each dataclass's ``__post_init__``.
    """
    raw = dict(raw or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise EditlabError(f"unknown key(s) {unknown} in {where}; valid keys: {', '.join(sorted(names))}")
    try:
        return cls(**raw)
    except TypeError as exc:  # a wrong type reaching a comparison in __post_init__
        raise EditlabError(f"bad value in {where}: {exc}") from None
