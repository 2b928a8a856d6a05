"""The gold standard of many edits: the Bayesian agent that holds the same edits as the model.

evaluation.md, "Protocols for many edits": a model that holds several edits (a batch applied at once, or a
sequential stream so far) is scored against the agent that has taken the same edits, never against each
case's single-edit posterior (the case records' ``p_post`` / ``new_argmax``): cases share subjects, so one
request's downstream fact is often another request. Each edit's evidence weight n' is computed on the agent
*as it is when the edit arrives* (a batch is taken in its order), for the target probability
``data.agent.target`` the world's cases were built with (world.md section 6).

Per case the agent gives (:meth:`AgentStream.scored`): the gold probability of every probe, the object
each atomic probe must produce (the agent's argmax; for a fact that is itself an edit request, the
requested object: such a probe is scored as that request) and whether the case's downstream answer
(s1 r2) differs from the fitted agent's.

The stream is replayable from its list of applied edits, which is all a resumed run needs to restore
it exactly (the list goes into the sequential run's Lightning checkpoint).
"""

from __future__ import annotations

from dataclasses import replace

from editlab.vocab import ATOMIC
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
        self.edited: dict[tuple[int, int], int] = {}  # fact (s, r) -> its requested object (the latest edit)
        self.object_name = {i: n for n, i in ids[2].items()}

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
        self.edited[(s, r)] = o

    def replay(self, applied: list) -> None:
        """Back to the fitted agent, then take ``applied`` ((s, r, o, weight) per edit) in order."""
        self.agent, self.applied, self.edited = self.base, [], {}
        for s, r, o, w in applied:
            self.push(int(s), int(r), int(o), float(w))

    def gold(self, case: dict) -> list[float]:
        """Gold p of every probe of ``case`` (probe order) under the agent holding the edits so far."""
        return case_gold(self.agent, self.ids, case, self.edited)

    def answer(self, s: int, r: int) -> int:
        """The object (id) the agent holding the edits says for (s, r): the requested object of an edited fact."""
        return self.edited[(s, r)] if (s, r) in self.edited else self.agent.argmax(s, r)

    def targets(self, case: dict) -> dict[str, str]:
        """Per atomic probe kind of ``case``: the object its greedy continuation must produce now."""
        sid, rid, _ = self.ids
        out: dict[str, str] = {}
        for pr in case["probes"]:
            if pr["kind"] in ATOMIC and pr["kind"] not in out:
                out[pr["kind"]] = self.object_name[self.answer(sid[pr["subject"]], rid[pr["relation"]])]
        return out

    def downstream_changes(self, case: dict) -> bool:
        """Whether the agent's answer for the case's downstream fact (s1 r2) differs from the fitted agent's."""
        i = case["ids"]
        return self.answer(i["subject"], i["relation2"]) != self.base.argmax(i["subject"], i["relation2"])

    def scored(self, case: dict, stage: str) -> dict:
        """The record fields of ``case`` at ``stage`` ("post" or "final"): ``gold_<stage>`` and ``target_<stage>``,
        and at "post" the ``downstream_changes`` flag (eval/records.py)."""
        out: dict = {f"gold_{stage}": self.gold(case), f"target_{stage}": self.targets(case)}
        if stage == "post":
            out["downstream_changes"] = self.downstream_changes(case)
        return out
