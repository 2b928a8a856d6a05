"""One test per bug of the paper's public code (world.md section 8), each showing it is absent.

Bugs 3 and 4 (logical metrics at editing time) are covered on the gold side in test_cases.py
(``test_logical_gold_uses_each_cases_own_operands``); their LM-side counterparts belong to the
metrics. Bug 6 (weight decay on every parameter) is tested in tests/lm/test_optim.py.
"""

from __future__ import annotations

import json

import numpy as np

from editlab.world.corpus import AND
from editlab.world.evidence import _WEIGHTS
from editlab.world.generative import lift_mode
from tests.conftest import data_config, load_built
from tests.world.toy import Q, Y, toy_agent


def test_bug1_and_evidence_reaches_the_agent(tiny_world):
    # toy: a single true "and" sentence moves both conjuncts
    agent = toy_agent([(AND, 1, Q, 2, Y, 1)])
    np.testing.assert_allclose(agent.direct(0, 1), [1 / 6, 2 / 3, 1 / 6], atol=1e-15)
    np.testing.assert_allclose(agent.direct(1, 0), [0.25, 0.75], atol=1e-15)
    # world: total evidence mass equals the sum over all sentences, "and" included
    z = np.load(tiny_world.dir / "sentences.npz")
    mass = 0.0
    for (kind, label), (pos, spread) in _WEIGHTS.items():
        n = int(((z["kind"] == kind) & (z["label"] == label)).sum())
        operands = 2 if kind in (2, 3) else 1
        mass += n * operands * (pos + spread)
    agent = tiny_world.agent
    total = sum(agent.counts(i).sum() for i in range(len(agent.fact_s)))
    assert abs(total - tiny_world.cfg.corpus.resamples * mass) < 1e-6 * total
    assert int((z["kind"] == AND).sum()) == tiny_world.stats["true_atomic_facts"]


def test_bug2_downstream_change_filter_filters(tiny_world):
    agent = tiny_world.agent
    subj, rel, obj = tiny_world.ids()
    down = [c for c in tiny_world.cases if c["request_type"] == "downstream_change"]
    assert len(down) >= 50
    for c in down:
        s1, r1, o = subj[c["subject"]], rel[c["relation"]], obj[c["requested_object"]]
        r2 = c["ids"]["relation2"]
        assert agent.upstream[r2] == r1
        assert agent.edit(s1, r1, o, c["edit_weight"]).argmax(s1, r2) != agent.argmax(s1, r2)
        assert c["downstream_changes"]
    # and the flag is computed, not constant: some other cases do not change the downstream answer
    assert not all(c["downstream_changes"] for c in tiny_world.cases)


def test_bug5_weight_1000_is_really_1000(tmp_path):
    from editlab.world.build import build_world
    from editlab.world.config import world_config

    cfg = world_config(data_config(["data.agent.weight=1000", "data.kg.n_subjects=150", "data.cases.n_cases=40",
                                    "data.cases.n_meta_cases=10", "data.tokenizer.train_docs=500",
                                    "data.tokenizer.vocab_size=400"]))
    w = load_built(build_world(cfg, tmp_path, progress=False).directory, cfg)
    subj, rel, obj = w.ids()
    for c in w.cases:
        assert c["edit_weight"] == 1000.0
        s1, r1, o = subj[c["subject"]], rel[c["relation"]], obj[c["requested_object"]]
        cnt = w.agent.counts(w.agent.row(s1, r1))
        j = w.agent.local(r1, o)
        p = next(p for p in c["probes"] if p["kind"] == "s1r1" and p["target"] == "requested")
        assert abs(p["p_post"] - (1 / len(cnt) + cnt[j] + 1000) / (1 + cnt.sum() + 1000)) < 1e-12


def test_bug7_ties_break_by_sorted_order():
    # two objects tie at the mode: the lower id (sorted name order) wins, whatever the input order
    _objs, p, mode = lift_mode(np.array([3, 5, 8]), np.array([2.0, 2.0, 1.0]), 0.6)
    assert mode == 3
    np.testing.assert_allclose(p, [0.6, 0.4 * 2 / 3, 0.4 / 3])
    # no lift needed when the mode already reaches mgtp
    _, p, mode = lift_mode(np.array([1, 2]), np.array([1.0, 3.0]), 0.6)
    assert mode == 2 and list(p) == [0.25, 0.75]


def test_bug8_distractors_and_false_objects_are_type_consistent(tiny_world):
    support = {r["name"]: set(r["support"]) for r in tiny_world.world["relations"]}
    for line in (tiny_world.dir / "facts.jsonl").read_text().splitlines():
        f = json.loads(line)
        if f["distractor"] is not None:
            assert f["distractor"] in support[f["relation"]]
        assert {o for o, _ in f["distribution"]} <= support[f["relation"]]
    for c in tiny_world.cases + tiny_world.meta_cases:
        assert c["requested_object"] in support[c["relation"]]
        for p in c["probes"]:
            for _s, r, o in p.get("facts", []):
                assert o in support[r]
    # every object mentioned by any sentence is in its fact's relation support
    z = np.load(tiny_world.dir / "sentences.npz")
    agent = tiny_world.agent
    for fa, oa in ((z["fact_a"], z["obj_a"]), (z["fact_b"], z["obj_b"])):
        keep = fa >= 0
        for r in range(10):
            sel = keep & (agent.fact_r[np.maximum(fa, 0)] == r)
            assert np.isin(oa[sel], agent.support[r]).all()


