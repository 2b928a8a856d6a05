"""Side-by-side continuations of a few fixed requests across the runs of a sweep (ROME's Figure 6, for our world).

ROME shows, for one request, what each method's edited model writes about the edited subject and about a
neighbouring subject, so a reader sees at a glance whether an edit took, whether it reached the subject's other
facts, and whether it leaked to another subject. Here every run's records already hold the greedy
continuation of each atomic probe after the edit (``post``; ``final`` for a sequential stream), so the table
costs no model call:

- ``s1r1``: the edited prompt ("<subject> <relation>"); the agent's answer is the requested object;
- ``s1r2``: the same subject's other relation; the agent's answer is its argmax after the edit (for a
  downstream-change request it moves with the edit: the propagation a rational learner makes);
- ``s2r1``: another subject, same relation; the agent's answer is that subject's unchanged fact.

A continuation that hits the agent's answer (the run's generation protocol: paper = substring, exact = the
answer up to the first period) is marked with a check mark; the agent's answers head the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from editlab import vocab

KINDS = ("s1r1", "s1r2", "s2r1")
CHECK = "✓"


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("\n", " ")


def _probe(case: dict, kind: str, stage: str) -> dict | None:
    i = vocab.target_index(case, kind, stage)
    return None if i is None else case["probes"][i]


def common_cases(runs: Sequence[Sequence[dict]], cases: dict[str, dict], n: int) -> list[str]:
    """``n`` case ids that every run edited (recorded ``edited``; ``edits.skip_correct`` leaves some alone), one
    per request type first (a downstream change, a reinforcement, ...: in the first run's order), then the
    next in order, so the same few requests head every table of the same runs."""
    if not runs:
        return []
    shared = set.intersection(*({r["case_id"] for r in recs if r.get("edited", True)} for recs in runs))
    order = [r["case_id"] for r in runs[0] if r["case_id"] in shared]
    picked: list[str] = []
    for cid in order:
        if len(picked) < n and cases[cid].get("request_type") not in {cases[p].get("request_type") for p in picked}:
            picked.append(cid)
    picked += [cid for cid in order if cid not in picked][: n - len(picked)]
    return sorted(picked, key=order.index)


def generations_markdown(labels: Sequence[str], runs: Sequence[Sequence[dict]], cases: dict[str, dict],
                         protocol: str = "paper", n: int = 3) -> str:
    """Markdown: for each of ``n`` requests every run edited, one row per run with its continuations of the
    ``KINDS`` prompts after the edit, the agent's answers on top, hits marked (module docstring).

    Args:
        labels: one setup label per run (:func:`editlab.eval.compare.setup_label`).
        runs: each run's records (results.jsonl), in the order of ``labels``.
        cases: the world's cases by id (their probes name the prompts and objects).
        protocol: the generation hit rule (``metrics.protocol`` of the runs).
    """
    hit = vocab.hit_rule(protocol)
    ids = common_cases(runs, cases, n)
    by_id = [{r["case_id"]: r for r in recs} for recs in runs]
    out = ["# Continuations after the edit, side by side", "",
           f"{len(ids)} fixed requests (the first of each request type that every run edited), greedy "
           "continuation of each prompt after the edit (a sequential run: on its final model). "
           f"{CHECK} = the continuation names the agent's answer (generation protocol: {protocol}). "
           "s1r2 is the edited subject's other fact, s2r1 another subject's.", ""]
    for cid in ids:
        case = cases[cid]
        out += [f"## {case['subject']} {case['relation']}: {case['o_true']} -> {case['requested_object']} "
                f"({case.get('request_type', 'request')}, `{cid}`)", ""]
        probes = {k: _probe(case, k, "post") for k in KINDS}
        kinds = [k for k in KINDS if probes[k] is not None]
        out.append("| run | " + " | ".join(f"{k}: *{_cell(probes[k]['prompt'])}*" for k in kinds) + " |")
        out.append("|---|" + "---|" * len(kinds))
        first = by_id[0][cid]
        stage0 = "final" if "final" in first else "post"
        agent = [_cell(vocab.stage_target(stage0, first, probes[k])) for k in kinds]
        out.append("| **agent** | " + " | ".join(f"**{a}**" for a in agent) + " |")
        for label, recs in zip(labels, by_id, strict=True):
            rec = recs[cid]
            stage = "final" if "final" in rec else "post"
            gen = (rec.get(stage) or {}).get("gen") or {}
            cells = []
            for k in kinds:
                text = gen.get(k)
                if text is None:
                    cells.append("–")
                    continue
                answer = vocab.stage_target(stage, rec, probes[k])
                cells.append(_cell(text) + (f" {CHECK}" if hit(text, answer) else ""))
            out.append(f"| {_cell(label)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
