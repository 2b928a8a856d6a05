"""Gold recomputation from an agent state reproduces the stored case values exactly."""

from __future__ import annotations

import numpy as np

from editlab.world.gold import case_gold


def test_case_gold_reproduces_p_pre_and_p_post(tiny_world):
    ids = tiny_world.ids()
    agent = tiny_world.agent
    for case in tiny_world.cases[:200]:
        i = case["ids"]
        s, r, o = i["subject"], i["relation"], i["requested_object"]
        pre = case_gold(agent, ids, case, edited=())
        post = case_gold(agent.edit(s, r, o, case["edit_weight"]), ids, case, edited={(s, r)})
        np.testing.assert_allclose(pre, [p["p_pre"] for p in case["probes"]], rtol=0, atol=1e-12)
        np.testing.assert_allclose(post, [p["p_post"] for p in case["probes"]], rtol=0, atol=1e-12)


def test_case_gold_moves_with_a_second_edit_on_the_upstream_fact(tiny_world):
    """After a later edit of s1's upstream fact, the downstream (s1 r2) gold follows the new upstream."""
    ids = tiny_world.ids()
    case = next(c for c in tiny_world.cases if c["request_type"] == "downstream_change")
    i = case["ids"]
    one = tiny_world.agent.edit(i["subject"], i["relation"], i["requested_object"], case["edit_weight"])
    two = one.edit(i["subject"], i["relation"], i["o_true"], 5 * case["edit_weight"])
    g1 = case_gold(one, ids, case, {(i["subject"], i["relation"])})
    g2 = case_gold(two, ids, case, {(i["subject"], i["relation"])})
    k = next(j for j, p in enumerate(case["probes"]) if p["kind"] == "s1r2" and p["target"] == "original")
    assert g2[k] > g1[k]  # evidence back on the original upstream object raises the original downstream answer
