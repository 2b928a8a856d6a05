"""Reading a Lightning ``CSVLogger`` file back (pretraining's loss curve, the meta-training curves)."""

from __future__ import annotations

import csv
from pathlib import Path


def read_csv_log(path: Path) -> list[dict[str, float]]:
    """The metrics of a Lightning ``CSVLogger`` file, one dict per ``step`` in step order (``[]`` if absent).

    Rows of one step are merged (train and validation metrics are logged in separate rows); a step
    logged twice (a resumed run repeating it) keeps the later values.
    """
    path = Path(path)
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            by_step.setdefault(step, {"step": step}).update(
                {k: float(v) for k, v in row.items() if k not in ("step", "epoch") and v not in ("", None)})
    return [by_step[s] for s in sorted(by_step)]
