"""Per-subset summary of edit results: the numbers of the paper's Tables 4/5 and the framework metrics.

:func:`summarize` turns the per-case result records of a run (:mod:`editlab.eval.records`) and the
world's case records (world.md section 6) into one flat ``"<stage>/<metric>" -> value`` dict per
subset of cases. The parsing is done once into row tensors (one row per scored probe, sentence or
case, each carrying the position of its case); every number then comes from one ``update`` of an
:mod:`editlab.metrics` metric with the rows of the subset, so the table and the logged training-time
metrics share one implementation.

Definitions (evaluation.md, "Paper metrics"):

- generative accuracy / probabilistic coherence per probe type: pre-edit the probe of target
  ``original`` (the LM should say, and believe, what the agent believed before); post-edit (and final)
  s1 r1 against target ``requested`` (o*) and the other probes against ``new_argmax``. The agent is the
  one holding the same edits as the model (the record's ``gold_agent``): its accuracy target is the
  record's ``target_post`` / ``target_final`` where present (a batch or a stream; a probe that asks another
  request of the batch is scored as that request), else the probe's object; its gold values are ``p_pre``
  before the edit and the record's ``gold_post`` (else the probes' single-edit ``p_post``) after it, and
  ``gold_final`` on a stream's final model. Coherence reads the same (probe, object) pairs in every protocol.
- subsets: ``downstream_changes`` (the record's flag from the agent holding the same edits, else the case's),
  ``fixing_errors`` (reinforce requests whose pre-edit s1 r1 continuation misses o_true), ``updating``
  (pre-edit s1 r1 continuation misses o*), both under the protocol's hit function.
- edit success and portability's s1 r2 accuracy always use the exact protocol (the framework
  metrics are comparable across protocols); ``s2_agree`` compares post (final) s2 continuations with
  the pre-edit ones; locality is read from the records (measured after the edit); fluency and
  consistency from the records' per-case values (pre and post).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from editlab.errors import EditlabError
from editlab.metrics import (
    AgentCoherence,
    Agreement,
    EditSuccess,
    GenerativeAccuracy,
    GroupedMean,
    LabelMass,
    Locality,
    LogicalCoherence,
    Portability,
    ProbabilisticCoherence,
)
from editlab.vocab import (
    AGENT_KINDS,
    ATOMIC,
    LOGIC_OPERANDS,
    STAGES,
    SUBSETS,
    gold_agent,
    hit_exact,
    hit_rule,
    is_target_probe,
    stage_gold,
    stage_target,
)


@dataclass
class _Rows:
    """Rows of one table: ``case`` (position of each row's record) and equally long columns."""

    case: torch.Tensor
    cols: dict[str, torch.Tensor | list]

    @staticmethod
    def build(rows: list[tuple], names: tuple[str, ...], dtypes: tuple[torch.dtype | None, ...]) -> _Rows:
        """From ``(case, col1, col2, ...)`` tuples; a ``None`` dtype keeps the column a Python list."""
        cols = list(zip(*rows, strict=True)) if rows else [[] for _ in range(len(names) + 1)]
        out = {n: list(c) if d is None else torch.tensor(c, dtype=d) for n, c, d in zip(names, cols[1:], dtypes,
                                                                                      strict=True)}
        return _Rows(torch.tensor(cols[0], dtype=torch.long), out)

    def where(self, keep: torch.Tensor) -> dict[str, torch.Tensor | list]:
        """The columns of the rows whose case is in ``keep`` (bool per record)."""
        sel = keep[self.case]
        idx = sel.nonzero().flatten().tolist()
        return {k: [v[i] for i in idx] if isinstance(v, list) else v[sel] for k, v in self.cols.items()}


def _stage_rows(cases: list[dict], recs: list[dict], stage: str, hit: Callable[[str, str], bool]
                ) -> dict[str, _Rows]:
    """Parse the records that carry ``stage`` into row tables (one Python pass over probes)."""
    f64, b = torch.float64, torch.bool
    atomic, gold, labels, logic, edit, s1r2, req_tf, s2, local, flu = ([] for _ in range(10))
    for i, (case, rec) in enumerate(zip(cases, recs, strict=True)):
        if stage not in rec:
            continue
        sc, probes = rec[stage], case["probes"]
        if len(sc["p"]) != len(probes):
            raise EditlabError(f"record of case {case['case_id']} has {len(sc['p'])} probe scores but the case has "
                               f"{len(probes)} probes; re-run edit.py on this world")
        g = stage_gold(stage, rec, probes)
        own = {}
        for j, pr in enumerate(probes):
            kind, p = pr["kind"], sc["p"][j]
            if is_target_probe(pr, stage):
                obj = stage_target(stage, rec, pr)
                atomic.append((i, ATOMIC.index(kind), hit(sc["gen"][kind], obj), p, g[j]))
                if kind == "s1r2":
                    s1r2.append((i, hit_exact(sc["gen"][kind], obj)))
            if kind in AGENT_KINDS:
                gold.append((i, AGENT_KINDS.index(kind), p, g[j]))
                own.setdefault(kind, p)
            if sc["p_false"][j] is not None:
                labels.append((i, p, sc["p_false"][j]))
        if all(k in own for k in LOGIC_OPERANDS):
            logic.append((i, [own[k] for k in LOGIC_OPERANDS]))
        edit.append((i, hit_exact(sc["gen"]["s1r1"], case["requested_object"]), sc["token_acc"]))
        req_tf.append((i, *sc["req_tf"]))
        if stage != "pre":
            s2 += [(i, rec["pre"]["gen"][k], sc["gen"][k]) for k in ("s2r1", "s2r2") if k in sc["gen"]]
        if stage == "post" and "locality" in rec:
            loc = rec["locality"]
            local.append((i, loc["agree"], loc["acc"], loc["kl"], loc.get("agree_answer", float("nan"))))
        if stage in ("pre", "post") and rec.get("fluency"):
            fl = rec["fluency"]
            flu.append((i, 0, fl[stage]))
            if f"consistency_{stage}" in fl:
                flu.append((i, 1, fl[f"consistency_{stage}"]))
    return {
        "atomic": _Rows.build(atomic, ("kind", "hit", "p", "gold"), (torch.long, b, f64, f64)),
        "gold": _Rows.build(gold, ("kind", "p", "gold"), (torch.long, f64, f64)),
        "labels": _Rows.build(labels, ("p_true", "p_false"), (f64, f64)),
        "logic": _Rows.build(logic, ("p",), (f64,)),
        "edit": _Rows.build(edit, ("exact", "token_acc"), (b, f64)),
        "s1r2": _Rows.build(s1r2, ("hit",), (b,)),
        "req_tf": _Rows.build(req_tf, ("p_true", "p_false"), (f64, f64)),
        "s2": _Rows.build(s2, ("before", "after"), (None, None)),
        "locality": _Rows.build(local, ("agree", "acc", "kl", "agree_answer"), (f64, f64, f64, f64)),
        "fluency": _Rows.build(flu, ("group", "value"), (torch.long, f64)),
    }


def _stage_metrics(rows: dict[str, _Rows], keep: torch.Tensor, stage: str) -> dict[str, float]:
    """All metrics of one stage on the records in ``keep``: one ``update`` per metric."""
    at, gd, lb, lg = (rows[k].where(keep) for k in ("atomic", "gold", "labels", "logic"))
    ed, s1, tf = (rows[k].where(keep) for k in ("edit", "s1r2", "req_tf"))
    acc, coh = GenerativeAccuracy(stage=stage), ProbabilisticCoherence(stage=stage)
    acc.update(at["hit"], at["kind"])
    coh.update(at["p"], at["gold"], at["kind"])
    logic = LogicalCoherence(stage=stage)
    logic.update(*lg["p"].reshape(-1, len(LOGIC_OPERANDS)).T)
    agent = AgentCoherence(stage=stage)
    agent.update(gd["p"], gd["gold"], gd["kind"])
    mass = LabelMass(stage=stage)
    mass.update(lb["p_true"], lb["p_false"])
    success, port = EditSuccess(stage=stage), Portability(stage=stage)
    success.update(ed["exact"], ed["token_acc"])
    port.update(s1["hit"], tf["p_true"], tf["p_false"])
    metrics: list[GroupedMean] = [acc, coh, logic, agent, mass, success, port]
    if stage != "pre":
        s2 = rows["s2"].where(keep)
        agree = Agreement(stage=stage)
        agree.update(s2["before"], s2["after"])
        metrics.append(agree)
    if stage == "post":
        lo = rows["locality"].where(keep)
        loc = Locality(stage=stage)
        answer = lo["agree_answer"]
        loc.update(lo["agree"], lo["acc"], lo["kl"], answer[answer.isfinite()])  # NaN: a record from before it
        metrics.append(loc)
    if stage in ("pre", "post"):
        fl = rows["fluency"].where(keep)
        ok = fl["value"].isfinite()  # consistency is NaN for a case whose samples never state the fact
        gen = GroupedMean(("fluency", "consistency"), stage)
        gen.update(fl["value"][ok], fl["group"][ok])
        metrics.append(gen)
    return {k: float(v) for m in metrics for k, v in m.compute().items()}


def subset_masks(cases: list[dict], recs: list[dict], hit: Callable[[str, str], bool]) -> dict[str, torch.Tensor]:
    """Membership of each record in each subset (bool per record), from the case and pre-edit scores."""
    pre = [r["pre"]["gen"]["s1r1"] for r in recs]
    return {
        "all": torch.ones(len(recs), dtype=torch.bool),
        "downstream_changes": torch.tensor([bool(r.get("downstream_changes", c["downstream_changes"]))
                                            for c, r in zip(cases, recs, strict=True)], dtype=torch.bool),
        "fixing_errors": torch.tensor([c["request_type"] == "reinforce" and not hit(g, c["o_true"])
                                       for c, g in zip(cases, pre, strict=True)], dtype=torch.bool),
        "updating": torch.tensor([not hit(g, c["requested_object"]) for c, g in zip(cases, pre, strict=True)],
                                 dtype=torch.bool),
    }


def summarize(cases: dict[str, dict], records: list[dict], protocol: str = "paper") -> dict:
    """``{"protocol": protocol, "gold_agent": agents, "subsets": {subset: {"n": cases, "<stage>/<metric>": value}}}``.

    ``gold_agent`` names the agent(s) the records were scored against (:data:`~editlab.vocab.GOLD_AGENTS`,
    comma-separated if a file mixes them).

    Args:
        cases: case records by ``case_id`` (cases.jsonl).
        records: per-case result records (results.jsonl, :mod:`editlab.eval.records`).
        protocol: hit function of generative accuracy and of the subsets, ``"paper"`` or ``"exact"``.

    A metric with no rows in a subset (e.g. no locality in the records) is NaN, never 0.
    """
    hit = hit_rule(protocol)
    missing = [r["case_id"] for r in records if r["case_id"] not in cases]
    if missing:
        raise EditlabError(f"{len(missing)} result records name cases not in the world's cases (e.g. {missing[0]}); "
                           "evaluate with the world the run edited")
    recs = list(records)
    cs = [cases[r["case_id"]] for r in recs]
    masks = subset_masks(cs, recs, hit)
    stages = [s for s in STAGES if any(s in r for r in recs)]
    rows = {s: _stage_rows(cs, recs, s, hit) for s in stages}
    out = {}
    for name in SUBSETS:
        keep = masks[name]
        out[name] = {"n": int(keep.sum())}
        for s in stages:
            out[name].update(_stage_metrics(rows[s], keep, s))
    agents = ", ".join(sorted({gold_agent(r) for r in recs}))
    return {"protocol": protocol, "gold_agent": agents, "subsets": out}


def headline_stage(summary: dict) -> str:
    """The stage a run is judged by: ``final`` for sequential runs (after the whole stream, where recorded),
    else ``post`` (comparison tables and tuning objectives read this one)."""
    allsub = summary.get("subsets", {}).get("all", {})
    return "final" if any(k.startswith("final/") for k in allsub) else "post"
