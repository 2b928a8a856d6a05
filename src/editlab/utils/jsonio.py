"""Strict JSON files, written atomically, and JSONL reading with clear errors: the one place for both.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which is not JSON (``jq``, JavaScript and
many JSON readers reject it). A metric that has no value (e.g. consistency of a case whose samples
never state the fact) is written as ``null`` instead.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from editlab.errors import EditlabError


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (recursively through dicts, lists, tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text (``allow_nan=False`` after :func:`strict`: a NaN can never slip through)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path: Path, obj: Any, indent: int | None = 1) -> Path:
    """Write strict JSON to ``path`` atomically (temporary sibling, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(obj, indent=indent, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path, fix: str = "re-run the command that wrote it", what: str = "") -> Any:
    """The JSON value in ``path``; a missing or malformed file is one error naming ``what``, the file and ``fix``."""
    path = Path(path)
    kind = f"{what} file" if what else "JSON file"
    if not path.is_file():
        raise EditlabError(f"no {kind} at {path}; {fix}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EditlabError(f"malformed {kind} {path} ({exc.msg}); {fix}") from None


def read_jsonl(path: Path, fix: str = "re-create the file", what: str = "") -> list[dict]:
    """Rows of a JSONL file (blank lines skipped); a malformed line is one error naming ``what`` (e.g.
    ``"results"``), the file, the line and ``fix``."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            kind = f"{what} line" if what else "line"
            raise EditlabError(f"malformed {kind} {path}:{n} ({exc.msg}); {fix}") from None
    return out

