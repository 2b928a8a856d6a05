"""Knowledge-graph sources. Each returns an :class:`editlab.world.kg.KG`.

A source is a module with a frozen dataclass ``Config`` (its parameters, validated in
``__post_init__``) and a function ``load(cfg: Config, seed: int) -> KG``. ``data.kg.source``
picks one by name; the remaining keys of the ``kg`` node are that source's ``Config`` fields.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from editlab.errors import EditlabError
from editlab.utils.typed import from_dict

SOURCES = ("synthetic", "wikidata5m", "triples")


def source_module(name: str) -> ModuleType:
    """The module implementing KG source ``name``; a helpful error for unknown names."""
    if name not in SOURCES:
        close = difflib.get_close_matches(str(name), SOURCES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise EditlabError(f"unknown KG source '{name}'{hint}; set data.kg.source to one of {', '.join(SOURCES)}")
    return importlib.import_module(f"editlab.world.sources.{name}")


def source_config(name: str, params: dict):
    """Validate ``params`` against source ``name``'s Config (unknown keys are an error)."""
    return from_dict(source_module(name).Config, params, f"data.kg (source '{name}')")
