"""The facts an edit implies (world/implied.py): the subject's downstream answer exactly when the case records say
it moves, and, over the whole graph, every fact whose argmax moves (other subjects' too: the learner's dependency
table is refitted with the edit)."""

from __future__ import annotations

from editlab.world.implied import Implications
from editlab.world.loading import World


def test_the_subject_s_implied_fact_is_the_case_s_downstream_change(tiny_world):
    world = World.open(tiny_world.dir)
    implied = Implications.from_world(world)
    for case in world.cases()[:300]:
        own = [f for f in implied.of_case(case) if f[0] == case["subject"]]
        assert bool(own) == case["downstream_changes"], case["case_id"]
        if own:
            (fact,) = own
            new = next(p for p in case["probes"] if p["kind"] == "s1r2" and p["target"] == "new_argmax")
            assert fact[:3] == (case["subject"], new["relation"], new["object"])
            assert fact.p == new["p_post"] and 0 < fact.p < 1  # the edited agent's credence in its new argmax


def test_the_implied_facts_are_every_fact_that_moves_in_the_whole_graph(tiny_world):
    """Ten edits, every fact of the graph compared: the candidates the implementation queries miss none."""
    world = World.open(tiny_world.dir)
    agent, implied = world.agent, Implications.from_world(world)
    sid, rid, oid = world.subject_id, world.relation_id, world.object_id
    facts = [(sid[f["subject"]], rid[f["relation"]]) for f in world.facts]
    cases = [c for c in world.cases() if c["downstream_changes"]][:5] + [c for c in world.cases()
                                                                        if not c["downstream_changes"]][:5]
    others = 0
    for case in cases:
        i = case["ids"]
        edited = agent.edit(i["subject"], i["relation"], i["requested_object"], float(case["edit_weight"]))
        moved = {(s, r, edited.argmax(s, r)) for s, r in facts if edited.argmax(s, r) != agent.argmax(s, r)}
        moved.discard((i["subject"], i["relation"], edited.argmax(i["subject"], i["relation"])))
        assert moved == {(sid[s], rid[r], oid[o]) for s, r, o, _ in implied.of_case(case)}, case["case_id"]
        others += sum(s != i["subject"] for s, _, _ in moved)
    assert others > 0  # the refitted dependency table moves other subjects' answers too
