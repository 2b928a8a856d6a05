"""The benchmark formats by name: reading a file into cases and writing cases as a file, with one error per
bad record (its file and number)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from editlab.benchmarks import counterfact, knowedit, zsre
from editlab.benchmarks.records import BenchmarkCase
from editlab.errors import EditlabError
from editlab.utils.jsonio import read_json, write_json

Reader = Callable[..., list[BenchmarkCase]]
Writer = Callable[..., list[dict]]
FORMATS: dict[str, tuple[Reader, Writer]] = {
    "counterfact": (counterfact.read, counterfact.write),
    "zsre": (zsre.read, zsre.write),
    "knowedit": (knowedit.read, knowedit.write),
}


def _format(fmt: str) -> tuple[Reader, Writer]:
    if fmt not in FORMATS:
        raise EditlabError(f"unknown benchmark format {fmt!r}; choose {', '.join(FORMATS)}")
    return FORMATS[fmt]


def read_benchmark(fmt: str, path: Path | str, **options: Any) -> list[BenchmarkCase]:
    """The cases of a benchmark file in format ``fmt`` (``options``: e.g. zsRE's ``target``)."""
    reader, _ = _format(fmt)
    path = Path(path)
    records = read_json(path, f"give data.path=<a {fmt} JSON file> (docs/benchmarks.md)", f"{fmt} benchmark")
    if not isinstance(records, list):
        raise EditlabError(f"{path}: a {fmt} file is a JSON array of records, not a {type(records).__name__}")
    return reader(records, path, **options)


def write_benchmark(fmt: str, cases: list[BenchmarkCase], path: Path | str, **options: Any) -> Path:
    """Write ``cases`` as a ``fmt`` file at ``path`` (atomically: a reader never sees half a file)."""
    _, writer = _format(fmt)
    return write_json(Path(path), writer(cases, **options), indent=2)
