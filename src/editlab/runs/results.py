"""The results file of an edit run, written record by record so a stopped run resumes where it stopped.

Records go to ``results.jsonl.partial`` (flushed after each edit); a finished run writes ``metrics.json``
and then renames the partial file to ``results.jsonl``. A reader never mistakes a partial file for a
complete one: a run is finished only when both ``results.jsonl`` and ``metrics.json`` exist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from editlab.eval.records import read_records

FINAL, PARTIAL = "results.jsonl", "results.jsonl.partial"


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict], encode: Callable[[dict], str] = json.dumps) -> None:
    """Replace ``path`` by ``rows``, one ``encode``-d object per line, atomically (temporary sibling, then rename)."""
    _replace_text(Path(path), "".join(encode(r) + "\n" for r in rows))


class ResultsWriter:
    """Append-only JSONL of per-case records with resume.

    On resume a trailing line without its newline (a write cut by a signal or a kill) is dropped: the
    case it belonged to is redone, every complete line is kept.
    """

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.path = Path(run_dir) / PARTIAL
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        self.records = []
        if resume and self.path.exists():
            text = self.path.read_text()
            if not text.endswith("\n"):
                _replace_text(self.path, text[: text.rfind("\n") + 1])
            self.records = read_records(self.path)
        self._rewrite()

    def keep(self, n: int) -> None:
        """Keep the first ``n`` records (sequential resume: records after the checkpoint are redone)."""
        self.records = self.records[:n]
        self._rewrite()

    def append(self, records: list[dict]) -> None:
        with self.path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(records)

    def finish(self) -> Path:
        final = self.path.with_name(FINAL)
        os.replace(self.path, final)
        return final

    def _rewrite(self) -> None:
        write_jsonl(self.path, self.records)
