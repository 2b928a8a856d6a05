"""The package order: the import contracts of pyproject.toml hold on the tree, each one fails on an import
that breaks it, and docs/architecture.md's package map lists exactly the package's files.

The contracts are checked on grimp's graph of the installed package, the graph ``lint-imports`` builds;
the failing cases add one import edge to a copy of it, so no source file is written.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import grimp
import pytest
from importlinter.api import read_configuration
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract

import editlab

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(editlab.__file__).resolve().parent
CONTRACT_TYPES = {"layers": LayersContract, "forbidden": ForbiddenContract}


def contracts() -> dict:
    """id -> contract, as configured in pyproject.toml."""
    config = read_configuration(str(ROOT / "pyproject.toml"))
    return {c["id"]: CONTRACT_TYPES[c["type"]](name=c["name"], session_options=config["session_options"],
                                               contract_options=c)
            for c in config["contracts_options"]}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("editlab", cache_dir=None)


def broken(graph: grimp.ImportGraph) -> set[str]:
    """Ids of the contracts ``graph`` breaks (each checked on its own copy: a check may change the graph)."""
    return {cid for cid, c in contracts().items() if not c.check(copy.deepcopy(graph), verbose=False).kept}


def test_contracts_hold(graph: grimp.ImportGraph) -> None:
    assert set(contracts()) == {"layers", "method-library", "scorer"}
    assert broken(graph) == set()


@pytest.mark.parametrize(("importer", "imported", "breaks"), [
    ("editlab.lm.arch", "editlab.runs.edit", {"layers"}),  # a library reaching up into a run
    ("editlab.world.kg", "editlab.lm.checkpoint", {"layers"}),  # the world knowing a model
    ("editlab.editing.base", "editlab.eval.probes", {"layers"}),  # siblings: the method library scoring
    ("editlab.eval.scoring", "editlab.editing.base", {"layers"}),  # siblings: the scorer editing
    ("editlab.editing.loss", "editlab.world.loading", {"method-library"}),  # downward, but not for a method
    ("editlab.eval.probes", "editlab.world.loading", {"scorer"}),
])
def test_an_added_import_breaks_its_contract(graph: grimp.ImportGraph, importer: str, imported: str,
                                             breaks: set[str]) -> None:
    g = copy.deepcopy(graph)
    g.add_import(importer=importer, imported=imported)
    assert broken(g) == breaks


def test_a_new_package_must_be_placed(graph: grimp.ImportGraph) -> None:
    """The layers contract is exhaustive: a package nobody placed in the order fails it."""
    g = copy.deepcopy(graph)
    g.add_module("editlab.unplaced")
    assert broken(g) == {"layers"}


def package_map() -> dict[str, str]:
    """Top-level entry of docs/architecture.md's package map (``utils/``, ``vocab.py``) -> its text."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```\nsrc/editlab/\n", 1)[1].split("```", 1)[0]
    sections: dict[str, str] = {}
    key = None
    for line in block.splitlines():
        head = re.match(r"^  (\S+)", line)
        if head:
            key = head.group(1)
            sections[key] = ""
        sections[key] += line + "\n"
    return sections


def test_package_map_matches_the_tree() -> None:
    """Every module file is named in its top-level package's section of the map, and every file the map names
    exists in that package (``__init__.py`` files are left out: they only mark packages; the entry scripts
    ``train.py``, ``edit.py``, ``evaluate.py`` are named in descriptions too)."""
    sections = package_map()
    files = {p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    top = {p.parts[0] + ("/" if len(p.parts) > 1 else "") for p in files}
    assert set(sections) == top
    for p in files:
        key = p.parts[0] + ("/" if len(p.parts) > 1 else "")
        assert re.search(rf"(?<![\w.]){re.escape(p.name)}\b", sections[key]), f"{p} is missing from the package map"
    for key, text in sections.items():
        named = set(re.findall(r"(?<![\w.])(\w+\.py)\b", text)) - {p.name for p in ROOT.glob("*.py")}
        present = {p.name for p in files if p.parts[0] + ("/" if len(p.parts) > 1 else "") == key}
        assert named <= present, f"the package map names files {sorted(named - present)} that {key} lacks"
