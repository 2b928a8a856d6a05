"""What an edit implies: every answer of the world's agent that the edit changes, beyond the request itself.

The rational learner of the world takes the request "s1 r1 o*" as evidence of weight n' (the case's
``edit_weight``) on the fact (s1, r1); its posterior of every fact that depends on (s1, r1) moves with it. The
implied facts are the facts (s, r) != (s1, r1) of the knowledge graph whose argmax under the edited agent differs
from the fitted agent's, each with its new argmax: the targets ``method=propagate`` adds to the request.

Which facts can move follows from the agent (world.md, the agent): the subject's own facts (its downstream answer
is a marginal over the edited upstream posterior), and, because the learner's dependency table p(o_d | o_u) of a
relation pair is fitted on every subject's evidence, the edit included, the marginal answers of *other* subjects
on the pair the edited relation belongs to (r1 itself when it is a downstream relation, its downstream relation
when it is an upstream one). Only those facts are queried; ``tests/world/test_implied.py`` checks against the
whole graph that nothing else moves.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from editlab.world.agent import Agent
from editlab.world.loading import World


class ImpliedFact(NamedTuple):
    """One implied fact: its new argmax ``object`` and the edited agent's posterior ``p`` of it (a credence target)."""

    subject: str
    relation: str
    object: str
    p: float


class Implications:
    """The implied facts of a world's edit cases, as (subject, relation, object) names."""

    def __init__(self, agent: Agent, subjects: list[str], relations: list[str], objects: list[str]) -> None:
        self.agent, self.subjects, self.relations, self.objects = agent, subjects, relations, objects
        self._facts_of_relation = {r: np.flatnonzero(agent.fact_r == r) for r in range(agent.n_relations)}
        self._facts_of_subject = {}
        for row, s in enumerate(agent.fact_s.tolist()):
            self._facts_of_subject.setdefault(s, []).append(row)

    @staticmethod
    def from_world(world: World) -> Implications:
        names = sorted(world.relation_id, key=world.relation_id.get)
        return Implications(world.agent, list(world.info["subjects"]), names, list(world.info["objects"]))

    def of_case(self, case: dict) -> list[ImpliedFact]:
        """The facts the case's request implies under its own evidence weight (the case's golds' agent)."""
        i = case["ids"]
        return self.implied_facts(i["subject"], i["relation"], i["requested_object"], float(case["edit_weight"]))

    def candidates(self, s: int, r: int) -> list[int]:
        """Fact rows whose answer an edit of (s, r) can change (module docstring), the edited fact excluded."""
        agent = self.agent
        pair = {r} | {d for d, u in agent.upstream.items() if u == r}  # tables refitted with the edit's evidence
        rows = set(self._facts_of_subject.get(s, []))
        for rel in pair:
            rows.update(int(i) for i in self._facts_of_relation[rel] if agent.rule(int(agent.fact_s[i]), rel) ==
                        "marginal")
        return sorted(rows - {agent.row(s, r)})

    def implied_facts(self, s: int, r: int, o: int, weight: float) -> list[ImpliedFact]:
        """Each fact other than (s, r) whose argmax the edit (s, r, o, weight) changes, with its new argmax and the
        edited agent's posterior of it, in fact order (the edited subject's first: facts are sorted by subject)."""
        agent = self.agent
        edited = agent.edit(s, r, o, weight)
        out = []
        for row in self.candidates(s, r):
            fs, fr = int(agent.fact_s[row]), int(agent.fact_r[row])
            if (new := edited.argmax(fs, fr)) != agent.argmax(fs, fr):
                out.append(ImpliedFact(self.subjects[fs], self.relations[fr], self.objects[new],
                                       edited.prob(fs, fr, new)))
        return out
