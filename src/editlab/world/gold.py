"""Gold probabilities of a case's probes from any agent state (world.md section 6, step 6).

The case records store ``p_pre`` / ``p_post`` for a single edit applied to the fitted agent. Sequential
(continual) editing needs the same values from an agent that has accumulated many edits, so this
module recomputes them with the same rules: a fact that has received an edit is read *directly*
(the edit is direct evidence on that very fact; for a single edit this is the table's s1 r1 row),
every other fact through the agent's answer (marginal where an upstream fact exists); logical
sentences combine their operands' probabilities by world.md section 5 (``editlab.world.logic``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from editlab.vocab import ATOMIC
from editlab.world.agent import Agent
from editlab.world.logic import p_and, p_not, p_or, p_tf

Ids = tuple[dict[str, int], dict[str, int], dict[str, int]]  # subject, relation, object name -> id


def fact_prob(agent: Agent, s: int, r: int, o: int, edited: Collection[tuple[int, int]]) -> float:
    """p(o | s, r): direct on an edited fact, the agent's answer otherwise."""
    dist = agent.direct(s, r) if (s, r) in edited else agent.answer(s, r)
    return float(dist[agent.local(r, o)])


_LOGIC: dict[str, Callable[[list[float], bool], float]] = {
    "tf": lambda p, same: p_tf(p[0]),
    "not": lambda p, same: p_not(p[0]),
    "and": lambda p, same: p_and(p[0], p[1], same),
    "or": lambda p, same: p_or(p[0], p[1], same),
    "atomic": lambda p, same: p[0],
}


def case_gold(agent: Agent, ids: Ids, case: dict, edited: Collection[tuple[int, int]]) -> list[float]:
    """Gold p for every probe of ``case`` (in probe order) under ``agent``, ``edited`` = facts (s, r) with edits."""
    sid, rid, oid = ids
    cache: dict[tuple[int, int, int], float] = {}

    def p(s: str, r: str, o: str) -> float:
        key = (sid[s], rid[r], oid[o])
        if key not in cache:
            cache[key] = fact_prob(agent, *key, edited)
        return cache[key]

    out = []
    for pr in case["probes"]:
        if pr["kind"] in ATOMIC:
            out.append(p(pr["subject"], pr["relation"], pr["object"]))
            continue
        facts: Sequence[Sequence[str]] = pr["facts"]
        same = len(facts) == 2 and tuple(facts[0][:2]) == tuple(facts[1][:2])
        out.append(_LOGIC[pr["kind"].split("_")[0]]([p(*f) for f in facts], same))
    return out
