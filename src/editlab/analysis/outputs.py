"""How an analysis writes its directory: PNG + CSV + ``result.json``, all or nothing.

``<paths.outputs>/analysis/<data>/<model>-s<seed>/<analysis>/`` is written into a staging sibling and renamed
into place (:func:`editlab.utils.atomic.publish`), so a failed or stopped analysis leaves the previous result
(or nothing), never a directory whose ``result.json`` a method config would read half-written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from editlab.eval.plots import save
from editlab.utils.atomic import publish
from editlab.utils.hardware import describe
from editlab.utils.jsonio import write_json


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A CSV table (floats as written by Python, empty cells for None)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def write_analysis(out: Path, result: dict, tables: dict[str, str], figures: dict[str, Callable[[], Figure]],
                   precision: str) -> dict:
    """Publish ``result.json`` (with the hardware and ``precision`` it ran in), the CSV ``tables`` and the PNG
    ``figures`` (built inside the staging directory) to ``out``; returns ``result`` with ``report`` = ``out``."""
    result = {**result, "hardware": describe(precision)}

    def write(tmp: Path) -> None:
        for name, text in tables.items():
            (tmp / name).write_text(text)
        for name, make in figures.items():
            save(make(), tmp / name)
        write_json(tmp / "result.json", result)

    publish(out, write)
    return {**result, "report": str(out)}
