"""The gold standard of a sequential edit stream: the Bayesian agent that accumulates the same edits.

evaluation.md, "Protocols for many edits", (e): in a sequential (continual) run the model keeps every
edit, so its gold is not the fitted agent plus one edit (the case records' ``p_post``) but the agent
that has taken every edit of the stream so far, in the same order. Each edit's evidence weight n' is
computed on the agent *as it is when the edit arrives* (like the LM sees the edits in order), for the
target probability ``data.agent.target`` the world's cases were built with (world.md section 6).

The stream is replayable from its list of applied edits, which is all a resumed run needs to restore
it exactly (the list goes into the sequential run's Lightning checkpoint).
"""

from __future__ import annotations

from dataclasses import replace

from editlab.world.agent import Agent
from editlab.world.gold import Ids, case_gold
from editlab.world.loading import World


class AgentStream:
    """The agent that accumulates a stream's edits, replayable from the list of edits (resume).

    Args:
        base: the fitted agent before any edit.
        ids: name -> id maps of subjects, relations, objects.
        weight_rule: evidence weight per edit: ``"n_prime"`` (n' on the accumulated agent), ``"case"``
            (the case record's n', computed on the fitted agent) or a number.
        target: n''s target probability, ``data.agent.target`` (see :meth:`from_world`).
    """

    def __init__(self, base: Agent, ids: Ids, weight_rule: str | float, target: float) -> None:
        self.base, self.ids, self.weight_rule, self.target = base, ids, weight_rule, target
        self.agent = base
        self.applied: list[tuple[int, int, int, float]] = []
        self.edited: set[tuple[int, int]] = set()

    @staticmethod
    def from_world(world: World, weight_rule: str | float) -> AgentStream:
        """The stream of ``world``'s agent, with ``data.agent.target`` as the world recorded it.

        The target is part of the world's config hash (world.json ``config``), so it is the value of the
        run's ``data.agent.target`` and the one the case records' n' were computed with.
        """
        target = float(world.info["config"]["agent"]["target"])
        return AgentStream(world.agent, (world.subject_id, world.relation_id, world.object_id), weight_rule, target)

    def weight(self, case: dict) -> float:
        i = case["ids"]
        if self.weight_rule == "n_prime":  # n' on the agent as it is now, like the LM sees edits in order
            return float(self.agent.n_prime(i["subject"], i["relation"], i["requested_object"], self.target)[0])
        if self.weight_rule == "case":
            return float(case["edit_weight"])
        return float(self.weight_rule)

    def add(self, case: dict) -> None:
        i = case["ids"]
        self.push(i["subject"], i["relation"], i["requested_object"], self.weight(case))

    def push(self, s: int, r: int, o: int, w: float) -> None:
        # drop the parent: a 1000-edit stream never reverts, and each parent would stay alive otherwise
        self.agent = replace(self.agent.edit(s, r, o, w), parent=None)
        self.applied.append((s, r, o, w))
        self.edited.add((s, r))

    def replay(self, applied: list) -> None:
        self.agent, self.applied, self.edited = self.base, [], set()
        for s, r, o, w in applied:
            self.push(int(s), int(r), int(o), float(w))

    def gold(self, case: dict) -> list[float]:
        return case_gold(self.agent, self.ids, case, self.edited)
