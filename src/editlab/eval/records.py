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
    gold_agent    which agent the record is scored against: "single" (the fitted agent plus this case's
                  edit: the case's p_post and new_argmax), "batch" (plus every request of the batch) or
                  "stream" (plus every edit of the sequential stream up to and including this one)
    gold_post     batch and sequential: per probe gold from that agent (replaces the case's p_post)
    target_post   batch and sequential: per atomic kind, the object the probe must produce after the edit
                  (that agent's argmax; the requested object where the probe asks an edited fact)
    downstream_changes  batch and sequential: whether that agent's s1 r2 answer differs from the fitted
                  agent's (replaces the case's flag for the downstream-changes subset)
    gold_final, target_final  sequential only: the same on the final model (the agent holding every edit)
    locality      {"agree", "agree_answer", "acc", "kl"} on the run's fixed locality facts, after the edit
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

PROTOCOL = "editlab-2"  # bump when the meaning of any stored number changes (evaluation.md)


def read_records(path: Path) -> list[dict]:
    """Records of a results file; a malformed line is an error naming the file and line."""
    return read_jsonl(path, "re-run edit.py", what="results")
