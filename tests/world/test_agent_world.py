"""The agent on the tiny world: incremental edits equal a refit, storage, persistence."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from editlab.world.agent import Agent, fit_agent


def test_incremental_edits_equal_refit(tiny_world, rng):
    agent = tiny_world.agent
    up = agent.upstream
    pair_rels = sorted(set(up) | set(up.values()))
    # edit facts on relations that sit in pairs, so tables must be refreshed
    cand = [i for i in range(len(agent.fact_s)) if int(agent.fact_r[i]) in pair_rels]
    chosen = rng.choice(cand, size=6, replace=False)
    edited = agent
    extra = sp.lil_matrix(agent.D.shape)
    for i in chosen.tolist():
        s, r = int(agent.fact_s[i]), int(agent.fact_r[i])
        o = int(agent.support[r][int(rng.integers(len(agent.support[r])))])
        w, _ = edited.n_prime(s, r, o)
        edited = edited.edit(s, r, o, w)
        extra[i, agent.local(r, o)] += w
    refit = fit_agent(agent.fact_s, agent.fact_r, agent.support, agent.U, (agent.D + extra.tocsr()).tocsr(),
                      agent.upstream, agent.weighting)
    for d in up:
        a, b = edited.tables[d], refit.tables[d]
        np.testing.assert_allclose(a.z, b.z, rtol=1e-12)
        np.testing.assert_allclose(a.S.toarray(), b.S.toarray(), rtol=0, atol=1e-12)
    subjects = np.unique(agent.fact_s[chosen])
    for s in subjects.tolist():
        for r in range(agent.n_relations):
            if agent.row(s, r) >= 0:
                np.testing.assert_allclose(edited.answer(s, r), refit.answer(s, r), rtol=0, atol=1e-12)
    # a subject untouched by the edits still sees the refreshed tables
    other = int(agent.fact_s[agent.fact_r == next(iter(up))][0])
    d = next(iter(up))
    np.testing.assert_allclose(edited.answer(other, d), refit.answer(other, d), rtol=0, atol=1e-12)


def test_posteriors_are_distributions(tiny_world):
    agent = tiny_world.agent
    for i in range(0, len(agent.fact_s), 7):
        s, r = int(agent.fact_s[i]), int(agent.fact_r[i])
        for p in (agent.direct(s, r), agent.answer(s, r)):
            assert np.all(p > 0)
            assert abs(p.sum() - 1) < 1e-12


def test_save_load_roundtrip(tiny_world, tmp_path):
    agent = tiny_world.agent
    agent.save(str(tmp_path / "a.npz"))
    again = Agent.load(str(tmp_path / "a.npz"))
    for d in agent.upstream:
        assert np.array_equal(agent.tables[d].z, again.tables[d].z)
    s, r = int(agent.fact_s[5]), int(agent.fact_r[5])
    assert np.array_equal(agent.answer(s, r), again.answer(s, r))
