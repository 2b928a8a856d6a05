"""Reading a Lightning ``CSVLogger`` file back (pretraining's loss curve, the meta-training curves)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path


def read_csv_log(*paths: Path) -> list[dict[str, float]]:
    """The metrics of Lightning ``CSVLogger`` files, one dict per ``step`` in step order (``[]`` if none exist).

    Rows of one step are merged (train and validation metrics are logged in separate rows); a step
    logged twice (in a later file: a resumed run repeating it) keeps the later values.
    """
    by_step: dict[int, dict[str, float]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("step"):
                    continue
                step = int(float(row["step"]))
                by_step.setdefault(step, {"step": step}).update(
                    {k: float(v) for k, v in row.items() if k not in ("step", "epoch") and v not in ("", None)})
    return [by_step[s] for s in sorted(by_step)]


def keep_for_resume(csv_dir: Path) -> None:
    """Move ``metrics.csv`` aside to ``metrics.<k>.csv`` before a resumed run logs again: Lightning's CSV
    writer deletes an existing ``metrics.csv`` when it starts, which would lose the curve before the stop."""
    current = Path(csv_dir) / "metrics.csv"
    if current.is_file():
        current.rename(current.with_name(f"metrics.{len(log_files(csv_dir)) - 1}.csv"))


def log_files(csv_dir: Path) -> list[Path]:
    """A run's CSV logs, oldest first: the parts kept by :func:`keep_for_resume`, then ``metrics.csv``."""
    csv_dir = Path(csv_dir)
    parts = sorted(csv_dir.glob("metrics.*.csv"), key=lambda p: int(p.suffixes[0][1:]))
    return parts + [p for p in (csv_dir / "metrics.csv",) if p.is_file()]


def keep_csv_logs_on_resume(loggers: list, resuming: bool) -> None:
    """Before a resumed fit logs again: keep each ``CSVLogger``'s earlier file (:func:`keep_for_resume`) and drop
    Lightning's warning that the log folder "is not empty" and old files "will be deleted" (they are kept)."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    if not resuming or rank_zero_only.rank != 0:
        return
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            keep_for_resume(Path(lg.log_dir))
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
