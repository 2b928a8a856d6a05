"""Edit cases (world.md section 6): fields, splits, request rules and gold values recomputed."""

from __future__ import annotations

import json

import numpy as np

from editlab.world.logic import p_and, p_not, p_or

ATOMIC_FIELDS = {"kind", "prompt", "object", "subject", "relation", "target", "gold_rule", "p_pre", "p_post"}
LOGICAL_FIELDS = {"kind", "prompt", "facts", "p_pre", "p_post"}
CASE_FIELDS = {"case_id", "split", "subject", "relation", "o_true", "requested_object", "request_type",
               "edit_weight", "p_target", "downstream_changes", "probes"}


def test_counts_fields_and_disjoint_splits(tiny_world):
    cases, meta = tiny_world.cases, tiny_world.meta_cases
    assert len(cases) == tiny_world.cfg.cases.n_cases >= 1000
    assert len(meta) == tiny_world.cfg.cases.n_meta_cases
    assert len({c["case_id"] for c in cases + meta}) == len(cases) + len(meta)
    assert {c["split"] for c in cases} == {"eval"} and {c["split"] for c in meta} == {"meta"}
    assert not {c["subject"] for c in cases} & {c["subject"] for c in meta}
    for c in cases[:50] + meta[:50]:
        assert set(c) >= CASE_FIELDS
        kinds = [p["kind"] for p in c["probes"]]
        for k in ("s1r1", "s1r2", "s2r1", "s2r2", "tf_A", "not_A", "and_AB", "and_BA", "or_BA", "tf_B", "atomic_A"):
            assert k in kinds
        for p in c["probes"]:
            assert (ATOMIC_FIELDS if p["kind"][:2] in ("s1", "s2") else LOGICAL_FIELDS) <= set(p)
            assert 0 <= p["p_pre"] <= 1 and 0 <= p["p_post"] <= 1


def test_meta_split_holds_at_least_300_subjects(tiny_world):
    from editlab.world.build import STREAM
    from editlab.world.cases import split_subjects

    names = tiny_world.world["subjects"]
    rng = np.random.default_rng([tiny_world.cfg.seed, STREAM["cases"]])
    eval_ids, meta_ids = split_subjects(len(names), tiny_world.cfg.cases.meta_fraction, rng)
    assert len(meta_ids) >= 300 and not set(eval_ids.tolist()) & set(meta_ids.tolist())
    assert tiny_world.stats["meta_split_subjects"] == len(meta_ids)
    assert tiny_world.stats["meta_case_subjects"] == len({c["subject"] for c in tiny_world.meta_cases})
    assert {c["subject"] for c in tiny_world.meta_cases} <= {names[i] for i in meta_ids.tolist()}
    assert {c["subject"] for c in tiny_world.cases} <= {names[i] for i in eval_ids.tolist()}


def test_request_rules(tiny_world):
    facts = {}
    for line in (tiny_world.dir / "facts.jsonl").read_text().splitlines():
        f = json.loads(line)
        facts[(f["subject"], f["relation"])] = f
    types = {c["request_type"] for c in tiny_world.cases}
    assert types == {"reinforce", "contradict", "downstream_change"}
    for c in tiny_world.cases:
        f = facts[(c["subject"], c["relation"])]
        assert c["o_true"] == f["modal"]
        if c["request_type"] == "reinforce":
            assert c["requested_object"] == c["o_true"]
        else:
            assert c["requested_object"] != c["o_true"]
        if c["request_type"] == "contradict" and f["distractor"] is not None:
            assert c["requested_object"] == f["distractor"]


def test_n_prime_edit_reaches_target_for_requested_object(tiny_world):
    for c in tiny_world.cases:
        p = next(p for p in c["probes"] if p["kind"] == "s1r1" and p["target"] == "requested")
        assert p["p_post"] >= c["p_target"] - 1e-12
        assert p["p_post"] > p["p_pre"] or c["edit_weight"] == 0


def test_gold_values_recomputed_from_the_agent(tiny_world):
    agent = tiny_world.agent
    subj, rel, obj = tiny_world.ids()
    for c in tiny_world.cases[::25]:
        s1, r1, o = subj[c["subject"]], rel[c["relation"]], obj[c["requested_object"]]
        edited = agent.edit(s1, r1, o, c["edit_weight"])
        for p in c["probes"]:
            if "object" in p and p["kind"] != "atomic_A":
                s, r, x = subj[p["subject"]], rel[p["relation"]], obj[p["object"]]
                assert p["p_pre"] == agent.prob(s, r, x)
                post = edited.direct(s, r)[agent.local(r, x)] if p["kind"] == "s1r1" else edited.prob(s, r, x)
                assert p["p_post"] == post
                if p["target"] == "new_argmax":
                    dist = edited.direct(s, r) if p["kind"] == "s1r1" else edited.answer(s, r)
                    assert x == agent.support[r][int(np.argmax(dist))]
        s2 = [p["subject"] for p in c["probes"] if p["kind"] in ("s2r1", "s2r2")]
        assert c["subject"] not in s2


def test_logical_gold_uses_each_cases_own_operands(tiny_world):
    """Paper bugs 3 and 4: labels of another item, and p(label | A) instead of p(true | A)."""
    agent = tiny_world.agent
    subj, rel, obj = tiny_world.ids()
    for c in tiny_world.cases[::10]:
        pr = {p["kind"]: p for p in c["probes"]}
        (sa, ra, oa), = pr["tf_A"]["facts"]
        (sb, rb, ob), = pr["tf_B"]["facts"]
        assert sa == c["subject"] and ra == c["relation"]
        pa = agent.prob(subj[sa], rel[ra], obj[oa])
        pb = agent.prob(subj[sb], rel[rb], obj[ob])
        assert pr["tf_A"]["p_pre"] == pa and pr["tf_B"]["p_pre"] == pb
        assert pr["not_A"]["p_pre"] == p_not(pa)
        assert pr["and_AB"]["p_pre"] == pr["and_BA"]["p_pre"] == p_and(pa, pb, False)
        assert abs(pr["or_BA"]["p_pre"] - p_or(pb, pa, False)) < 1e-15
        assert pr["atomic_A"]["object"] == oa and pr["atomic_A"]["p_pre"] == pa
        assert pr["tf_A"]["label"] == "true"
        assert pr["tf_A"]["prompt"] == f'"{sa} {ra} {oa}" is'


def test_same_fact_logic_is_exclusive():
    assert p_and(0.3, 0.4, True) == 0.0
    assert p_or(0.3, 0.4, True) == 0.7
    assert p_or(0.3, 0.4, False) == 0.3 + 0.4 - 0.12
