"""The propagation report: does an edit's consequence follow it, and at what cost (``evaluate.py sweep=``).

Hase et al. (2024) find that after an edit "s1 r1 o*" the model's answer to the subject's downstream fact (s1 r2)
does not follow the Bayesian agent's (their Table 4, downstream-changes rows). Per setup of a sweep, this report
puts beside each other what propagation buys and what it costs:

- on the downstream-changes subset (the cases whose agent answer for s1 r2 moves): s1 r2 generative accuracy and
  probabilistic coherence |p_LM - p_agent|, before and after the edit;
- the request itself (s1 r1 accuracy and coherence after the edit) and the other subjects' facts (s2 accuracy,
  after minus before, the mean of s2 r1 and s2 r2);
- the facts the edit changed beyond the request: the subject's downstream answer (the greedy s1 r2 answer differs
  from the pre-edit one) plus the rest of the knowledge graph, estimated from the fixed locality sample
  (1 - locality agreement) x (facts - 2), the sample being uniform over facts of subjects no case probes;
- locality agreement itself.

Means over seeds with 95% Student-t intervals (:func:`editlab.eval.compare.interval95`). The figure
(:func:`editlab.eval.plots.propagation_scatter`) plots downstream s1 r2 accuracy against locality agreement, one
point per setup, the paper's LoRA (``lora`` under ``preset=paper``) marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from editlab.eval.compare import Run, interval95, setup_label
from editlab.eval.records import read_records
from editlab.eval.summary import headline_stage
from editlab.vocab import answer_text

COLUMNS: tuple[tuple[str, int], ...] = (  # (column, digits) rates and coherences x 100; counts as they are
    ("downstream s1r2 acc pre", 1), ("downstream s1r2 acc", 1), ("downstream s1r2 coh pre", 1),
    ("downstream s1r2 coh", 1), ("s1r1 acc", 1), ("s1r1 coh", 1), ("s2 acc change", 1), ("s1r2 changed", 1),
    ("facts changed", 1), ("locality agree", 1),
)
COUNTS = ("facts changed",)
PAPER_LORA = ("lora", "paper")


def run_values(run: Run, n_facts: int | None) -> dict[str, float | None]:
    """The report's columns for one run (module docstring); None where the run has no such value."""
    summary = run.summary
    stage = headline_stage(summary)
    subsets = summary.get("subsets", {})
    allsub, down = subsets.get("all", {}), subsets.get("downstream_changes", {})

    def get(sub: dict, key: str) -> float | None:
        v = sub.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    out = {"downstream s1r2 acc pre": get(down, "pre/s1r2_acc"), "downstream s1r2 acc": get(down, f"{stage}/s1r2_acc"),
           "downstream s1r2 coh pre": get(down, "pre/s1r2_prob_coh"),
           "downstream s1r2 coh": get(down, f"{stage}/s1r2_prob_coh"),
           "s1r1 acc": get(allsub, f"{stage}/s1r1_acc"), "s1r1 coh": get(allsub, f"{stage}/s1r1_prob_coh"),
           "locality agree": get(allsub, f"{stage}/locality_agree")}
    if out["locality agree"] is None:  # a sequential run whose summary has no final locality: the per-edit one
        out["locality agree"] = get(allsub, "post/locality_agree")
    s2 = [(get(allsub, f"{stage}/{k}"), get(allsub, f"pre/{k}")) for k in ("s2r1_acc", "s2r2_acc")]
    out["s2 acc change"] = (sum(a - b for a, b in s2) / 2) if all(a is not None and b is not None for a, b in s2) \
        else None
    records = read_records(run.path / "results.jsonl") if (run.path / "results.jsonl").is_file() else []
    after = "final" if stage == "final" else "post"
    changed = [answer_text(r["pre"]["gen"].get("s1r2", "")) != answer_text(r[after]["gen"].get("s1r2", ""))
               for r in records if after in r]
    out["s1r2 changed"] = sum(changed) / len(changed) if changed else None
    agree = out["locality agree"]
    out["facts changed"] = (out["s1r2 changed"] + (1 - agree) * max(n_facts - 2, 0)
                            if out["s1r2 changed"] is not None and agree is not None and n_facts else None)
    return out


def propagation_rows(runs: Sequence[Run], keys: list[str], n_facts: dict[Path, int | None]) -> list[dict]:
    """One row per setup (the comparison's ``keys``): label, seeds, and each column's (mean, 95% half-width)."""
    groups: dict[str, list[dict]] = {}
    meta: dict[str, tuple[str, str]] = {}
    for r in runs:
        label = setup_label({k: r.config.get(k, "<unset>") for k in keys}, keys)
        groups.setdefault(label, []).append(run_values(r, n_facts.get(r.path)))
        meta[label] = (str(r.config.get("method.name")), str(r.config.get("preset.name", "tuned")))
    rows = []
    for label, values in groups.items():
        row: dict = {"setup": label, "seeds": len(values), "paper_lora": meta[label] == PAPER_LORA}
        for column, _ in COLUMNS:
            xs = [v[column] for v in values if v[column] is not None]
            row[column] = interval95(xs) if xs else (None, None)
        rows.append(row)
    return sorted(rows, key=lambda row: row["setup"])


def _cell(value: tuple[float | None, float | None], column: str, digits: int) -> str:
    mean, half = value
    if mean is None:
        return "–"
    scale = 1.0 if column in COUNTS else 100.0
    return f"{mean * scale:.{digits}f}" + (f" ± {half * scale:.{digits}f}" if half is not None else "")


def propagation_markdown(rows: Sequence[dict]) -> str:
    """The report as a Markdown table with its reading notes."""
    head = ["setup", "seeds", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["setup"] + (" (paper's LoRA)" if row["paper_lora"] else ""),
                                        str(row["seeds"]), *(_cell(row[c], c, d) for c, d in COLUMNS)]) + " |")
    notes = ["", "Downstream: the cases whose agent answer for s1 r2 changes under the edit (Hase et al.'s "
             "downstream changes). Accuracies and locality in %, coherences |p_LM - p_agent| x 100 (lower is better), "
             "after the edit unless marked pre. s2 acc change: after minus before, mean of s2 r1 and s2 r2, in "
             "points. s1r2 changed: share of edits after which the greedy s1 r2 answer differs from before. facts "
             "changed: per edit, beyond the request: the s1 r2 change plus (1 - locality agree) x (the graph's "
             "facts - 2), the locality sample standing for the rest of the graph. Mean ± 95% Student-t half-width "
             "over seeds."]
    return "\n".join(lines + notes) + "\n"
