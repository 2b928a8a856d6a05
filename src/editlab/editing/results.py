"""The results file of an edit run, written record by record so a killed run resumes where it stopped.

Records go to ``results.jsonl.partial`` (flushed after each edit); a finished run renames it to
``results.jsonl``. A reader never mistakes a partial file for a complete one: only ``results.jsonl``
is a result, and ``metrics.json`` is written after it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from editlab.eval.records import read_records

FINAL, PARTIAL = "results.jsonl", "results.jsonl.partial"


class ResultsWriter:
    """Append-only JSONL of per-case records with resume (truncates to the last complete line)."""

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.path = Path(run_dir) / PARTIAL
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        self.records = read_records(self.path) if resume and self.path.exists() else []
        self._rewrite()

    def keep(self, n: int) -> None:
        """Keep the first ``n`` records (sequential resume: records after the checkpoint are redone)."""
        self.records = self.records[:n]
        self._rewrite()

    def append(self, records: list[dict]) -> None:
        with self.path.open("a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(records)

    def finish(self) -> Path:
        final = self.path.with_name(FINAL)
        os.replace(self.path, final)
        return final

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(tmp, self.path)
