"""Result tables in the layout of Hase et al. (2024) Table 4 / Table 5, as Markdown and one tidy CSV.

Input is the output of :func:`editlab.eval.summary.summarize`::

    {"protocol": str, "subsets": {subset: {"<stage>/<metric>": float, "n": int}}}

Table 4 has one block of rows per subset (all requests, downstream answer changes, fixing errors,
updating) with the pre-edit value, the post-edit value and their difference, and the paper's columns:
generative accuracy and probabilistic coherence (mean |p_LM - p_gold|) per probe type s1r1 s1r2 s2r1
s2r2, then logical coherence TF, not, and, or (LM against itself, evaluation.md). Table 5's block is
the "fixing errors" subset on its own. A sequential run also has a "final" stage (every edit scored
on the final model), shown with its own difference to "pre".

Numbers are formatted as in the paper: accuracies in percent with one decimal, coherences (absolute
probability errors, lower is better) with three decimals. Rendering is a pure function of the
summary, so tests can compare text.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence

from editlab.vocab import ATOMIC, STAGES, SUBSETS

SUBSET_TITLES = {"all": "All requests", "downstream_changes": "Downstream changes",
                 "fixing_errors": "Fixing errors", "updating": "Updating"}
# Table 4 columns: (metric key, header, is a percentage)
TABLE4_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    *((f"{k}_acc", f"acc {k}", True) for k in ATOMIC),
    *((f"{k}_prob_coh", f"coh {k}", False) for k in ATOMIC),
    ("logic_tf", "TF", False), ("logic_not", "not", False), ("logic_and", "and", False), ("logic_or", "or", False),
)
# editing-framework metrics (EasyEdit / ROME): (metric key, header, kind) with kind "%", "p" (probability-like,
# 4 decimals: KL in nats) or "bits" (2 decimals)
EDITING_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("edit_exact", "edit success (exact)", "%"), ("edit_token_acc", "token acc", "%"),
    ("portability_s1r2", "portability s1r2", "%"), ("portability_tf", "portability TF", "%"),
    ("locality_agree", "locality agree", "%"), ("locality_agree_answer", "locality agree (answer)", "%"),
    ("locality_acc", "locality acc", "%"),
    ("locality_kl", "locality KL", "p"), ("s2_agree", "s2 agree", "%"),
    ("fluency", "fluency", "bits"), ("consistency", "consistency", "%"),
)


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(value: float | None, kind: str, signed: bool = False) -> str:
    """One cell: ``kind`` "%" -> percent with one decimal, "coh" -> 3 decimals, "p" -> 4, "bits" -> 2."""
    if _missing(value):
        return "–"
    sign = "+" if signed else ""
    digits = {"%": 1, "coh": 3, "p": 4, "bits": 2}[kind]
    value = round(100 * value if kind == "%" else value, digits) + 0.0  # no "-0.0" for a tiny negative Δ
    return f"{value:{sign}.{digits}f}"


def _stages(sub: dict) -> list[str]:
    """Stages present in one subset's metrics, in pipeline order."""
    have = {k.split("/", 1)[0] for k in sub if "/" in k}
    return [s for s in STAGES if s in have]


def _subsets(summary: dict, only: Sequence[str] | None = None) -> list[str]:
    subs = summary["subsets"]
    names = [s for s in SUBSETS if s in subs] + sorted(s for s in subs if s not in SUBSETS)
    return [s for s in names if only is None or s in only]


def _header(title: str, summary: dict, meta: dict | None) -> str:
    bits = [f"protocol `{summary.get('protocol', '?')}`", f"golds `{summary.get('gold_agent', 'single')}`"]
    for key in ("method", "mode"):
        if meta and meta.get(key) is not None:
            bits.append(f"{key} `{meta[key]}`")
    return f"### {title} ({', '.join(bits)})\n"


def _md_table(head: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _table4_rows(summary: dict, subsets: Sequence[str]) -> list[list[str]]:
    rows = []
    for name in subsets:
        sub = summary["subsets"][name]
        stages = _stages(sub)
        label = f"{SUBSET_TITLES.get(name, name)} (n={sub.get('n', 0)})"
        lines = [(s, {c: sub.get(f"{s}/{c}") for c, _, _ in TABLE4_COLUMNS}, False) for s in stages]
        for s in stages[1:]:  # differences to the pre-edit model (the paper's Δ rows)
            if stages[0] == "pre":
                diff = {c: None if _missing(sub.get(f"{s}/{c}")) or _missing(sub.get(f"pre/{c}"))
                        else sub[f"{s}/{c}"] - sub[f"pre/{c}"] for c, _, _ in TABLE4_COLUMNS}
                lines.append((f"Δ {s}", diff, True))
        for i, (stage, vals, signed) in enumerate(lines):
            rows.append([label if i == 0 else "", stage,
                         *(fmt(vals[c], "%" if pct else "coh", signed) for c, _, pct in TABLE4_COLUMNS)])
    return rows


def table4_markdown(summary: dict, meta: dict | None = None, subsets: Sequence[str] | None = None,
                    title: str = "Table 4") -> str:
    """The paper's Table 4: per subset, pre / post (/ final) and Δ rows; accuracy in %, coherence errors.

    Args:
        summary: ``summarize`` output.
        meta: optional run facts shown in the header (``method``, ``mode``).
        subsets: restrict to these subsets (Table 5 uses ``["fixing_errors"]``).
        title: the header's title.
    """
    head = ["subset", "stage", *(h for _, h, _ in TABLE4_COLUMNS)]
    note = ("acc: generative accuracy (%, higher is better); coh: probabilistic coherence |p_LM - p_gold| and "
            "TF/not/and/or: logical coherence (LM against itself), lower is better.\n")
    return _header(title, summary, meta) + "\n" + _md_table(head, _table4_rows(summary, _subsets(summary, subsets))) \
        + "\n" + note


def table5_markdown(summary: dict, meta: dict | None = None) -> str:
    """Table 5's "fixing errors" block: reinforce requests whose pre-edit s1 r1 output was wrong."""
    return table4_markdown(summary, meta, subsets=["fixing_errors"], title="Table 5: fixing errors")


def editing_markdown(summary: dict, meta: dict | None = None) -> str:
    """Editing-framework metrics (edit success, portability, locality, fluency) per subset and stage.

    Only stages after editing are shown, plus "pre" where a metric has a pre-edit value (fluency).
    """
    head = ["subset", "stage", *(h for _, h, _ in EDITING_COLUMNS)]
    rows = []
    for name in _subsets(summary):
        sub = summary["subsets"][name]
        first = True
        for stage in _stages(sub):
            vals = [sub.get(f"{stage}/{c}") for c, _, _ in EDITING_COLUMNS]
            if all(_missing(v) for v in vals):
                continue
            label = f"{SUBSET_TITLES.get(name, name)} (n={sub.get('n', 0)})" if first else ""
            rows.append([label, stage, *(fmt(v, k) for v, (_, _, k) in zip(vals, EDITING_COLUMNS, strict=True))])
            first = False
    note = "KL(p_pre || p_post) of the next-token distribution in nats; fluency: ROME's n-gram entropy in bits.\n"
    return _header("Editing metrics", summary, meta) + "\n" + _md_table(head, rows) + "\n" + note


def tidy_rows(summary: dict) -> list[tuple[str, str, str, float]]:
    """Every number of a summary as (subset, stage, metric, value), sorted; the subset size is metric ``n``."""
    out = []
    for name in _subsets(summary):
        for key, value in summary["subsets"][name].items():
            stage, metric = key.split("/", 1) if "/" in key else ("", key)
            out.append((name, stage, metric, value))
    order = {s: i for i, s in enumerate(_subsets(summary))}
    return sorted(out, key=lambda r: (order[r[0]], r[1], r[2]))


def tidy_csv(summary: dict) -> str:
    """One tidy CSV (columns protocol, subset, stage, metric, value) with full-precision values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["protocol", "subset", "stage", "metric", "value"])
    proto = summary.get("protocol", "")
    for subset, stage, metric, value in tidy_rows(summary):
        w.writerow([proto, subset, stage, metric, "" if _missing(value) else repr(value)])
    return buf.getvalue()
