"""Method registry: ``@register`` on the class, ``get_method(name)`` by name, with "did you mean"."""

from __future__ import annotations

import difflib

from editlab.errors import EditlabError
from editlab.utils.typed import from_dict

_METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: register an :class:`~editlab.editing.base.EditMethod` under ``cls.name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or registered twice")
    _METHODS[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registered method names, sorted."""
    import editlab.editing.methods  # noqa: F401 - registers the built-in methods

    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The class registered as ``name``; an unknown name lists the valid ones and close matches."""
    names = available()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EditlabError(f"unknown method {name!r}{hint}; valid methods: {', '.join(names)}")
    return _METHODS[name]


def get_method(name: str, hparams: dict | None = None):
    """An instance of method ``name`` built from a plain dict of hyper-parameters (validated)."""
    return from_dict(method_class(name), hparams, f"method {name}")

