"""Single and batch protocols: each edit (or batch of k edits) is applied to the base model, scored, restored.

evaluation.md, "Protocols for many edits": ``single`` restores after every case, ``batch`` applies k
requests at once (MEMIT, MALMEN, batched LoRA). The restore is bit-exact (tested per method), so
every case sees the same base model. Pre-edit scores of all cases are computed once, in large batches.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from editlab.editing.results import ResultsWriter
from editlab.editing.session import Session
from editlab.eval.probes import CaseScores


def run_restoring(session: Session, cases: Sequence[dict], pre: list[CaseScores], pre_fluency: list[dict],
                  batch_size: int, mode: str, writer: ResultsWriter, progress: bool = True) -> None:
    """Edit ``cases`` in batches of ``batch_size`` from the base model; records go to ``writer``.

    Cases already in ``writer`` (a resumed run) are skipped: they are a prefix of ``cases``.
    """
    start = len(writer.records)
    bar = tqdm(total=len(cases), initial=start, disable=not progress, desc=f"edit ({mode})", unit="edit")
    for b in range(start, len(cases), batch_size):
        batch = list(cases[b : b + batch_size])
        handle, _, records = session.step(batch, b, pre[b : b + batch_size], pre_fluency[b : b + batch_size], mode,
                                          b // batch_size)
        session.model = handle.restore()
        writer.append(records)
        bar.update(len(batch))
    bar.close()
