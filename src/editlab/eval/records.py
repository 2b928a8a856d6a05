"""Per-case result records: what edit.py writes (``results.jsonl``) and evaluate.py reads.

One JSON object per edited case::

    case_id       the case (cases.jsonl)
    index         position of the case in the run's stream (0-based)
    method, mode  registry name; "single" | "batch" | "sequential"
    batch         index of the batch the case was edited in (single: == index)
    edited        whether the case was given to the method (false only under edits.skip_correct, for a
                  case the model already answered exactly before the edit; it is still scored, on the
                  model holding the other edits of its batch)
    pre, post     CaseScores.to_json() of the case's probes before / right after its edit
                  (sequential: "post" is the immediate score right after the edit)
    final         sequential only: CaseScores of the case on the final model (else absent)
    gold_post     sequential only: per probe gold from the agent that accumulated the edits up to and
                  including this one (replaces the case's single-edit p_post); else absent
    locality      {"agree", "acc", "kl"} on the run's fixed locality facts, after the edit
    fluency       {"pre", "post", "consistency_pre", "consistency_post"} (absent if n_samples == 0)
    trace         for the first edits.trace cases: {"step": [...], "p": [[per probe p] per step],
                  "p_false": [[...] per step]}, step 0 = before the first optimizer step
    time_s        wall time of applying the edit (not scoring), seconds; batch: the batch's time / the
                  number of cases edited; 0 for a case not edited
    peak_mem_mb   peak memory while applying (CUDA max allocated, or process peak RSS on CPU)
    info          method diagnostics (final loss, steps, update norms); {} for a case not edited

Run-level values (pre-edit locality accuracy, protocol names, config) go in ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

from editlab.utils.jsonio import read_jsonl

PROTOCOL = "editlab-1"  # bump when the meaning of any stored number changes (evaluation.md)


def read_records(path: Path) -> list[dict]:
    """Records of a results file; a malformed line is an error naming the file and line."""
    return read_jsonl(path, "re-run edit.py", what="results")
