"""The agent's posteriors against values computed by hand (world.md section 5).

Prior alpha = 1/K per object; posterior predictive (alpha + c) / (1 + C). In the toy world
support(0) = {X, Y} (K = 2, alpha = 1/2) and support(1) = {P, Q, R} (K = 3, alpha = 1/3).
"""

from __future__ import annotations

import numpy as np
import pytest

from editlab.world.corpus import AND, ATOMIC, NOT, OR, TF
from tests.world.toy import P, Q, R, X, Y, toy_agent

T, F = 1, 0


def test_atomic_and_prior():
    agent = toy_agent([(ATOMIC, 0, X, -1, -1, T)])
    # c = [1, 0], C = 1: ((1/2 + 1) / 2, (1/2) / 2)
    np.testing.assert_allclose(agent.direct(0, 0), [0.75, 0.25], rtol=0, atol=1e-15)
    # (1, 0) has no evidence at all in this corpus: row exists (fact), counts are zero -> prior
    np.testing.assert_allclose(agent.direct(1, 0), [0.5, 0.5], atol=1e-15)


def test_resamples_multiply_every_occurrence():
    agent = toy_agent([(ATOMIC, 0, X, -1, -1, T)], repeat=5)
    # c = [5, 0]: (5.5 / 6, 0.5 / 6)
    np.testing.assert_allclose(agent.direct(0, 0), [5.5 / 6, 0.5 / 6], atol=1e-15)


def test_tf_true_and_false():
    agent = toy_agent([(TF, 1, Q, -1, -1, T)])
    # c = [0, 1, 0]: (1/3, 4/3, 1/3) / 2
    np.testing.assert_allclose(agent.direct(0, 1), [1 / 6, 2 / 3, 1 / 6], atol=1e-15)
    agent = toy_agent([(TF, 1, Q, -1, -1, F)])
    # "Q is false": 1/(K-1) = 1/2 on P and R: c = [1/2, 0, 1/2], C = 1: (5/6, 1/3, 5/6) / 2
    np.testing.assert_allclose(agent.direct(0, 1), [5 / 12, 1 / 6, 5 / 12], atol=1e-15)


def test_or_true_and_false():
    # "A or B" is true with A = (0, occupation, Q), B = (1, educated at, Y)
    agent = toy_agent([(OR, 1, Q, 2, Y, T)])
    # on A: 2/3 on Q, 1/3 spread over P, R (1/6 each): c = [1/6, 2/3, 1/6], C = 1
    np.testing.assert_allclose(agent.direct(0, 1), [(1 / 3 + 1 / 6) / 2, (1 / 3 + 2 / 3) / 2, (1 / 3 + 1 / 6) / 2],
                               atol=1e-15)
    # on B: 2/3 on Y, 1/3 on X (K = 2): c = [1/3, 2/3]
    np.testing.assert_allclose(agent.direct(1, 0), [(0.5 + 1 / 3) / 2, (0.5 + 2 / 3) / 2], atol=1e-15)
    agent = toy_agent([(OR, 1, Q, 2, Y, F)])
    # each disjunct as "TF false": A: c = [1/2, 0, 1/2]; B: c = [1, 0]
    np.testing.assert_allclose(agent.direct(0, 1), [5 / 12, 1 / 6, 5 / 12], atol=1e-15)
    np.testing.assert_allclose(agent.direct(1, 0), [0.75, 0.25], atol=1e-15)


def test_and_true_and_false():
    agent = toy_agent([(AND, 1, Q, 2, Y, T)])
    # +1 on each conjunct
    np.testing.assert_allclose(agent.direct(0, 1), [1 / 6, 2 / 3, 1 / 6], atol=1e-15)
    np.testing.assert_allclose(agent.direct(1, 0), [0.25, 0.75], atol=1e-15)
    agent = toy_agent([(AND, 1, Q, 2, Y, F)])
    # 1/3 on the conjunct's object, 2/3 spread: A: c = [1/3, 1/3, 1/3]; B: c = [2/3, 1/3]
    np.testing.assert_allclose(agent.direct(0, 1), [1 / 3, 1 / 3, 1 / 3], atol=1e-15)
    np.testing.assert_allclose(agent.direct(1, 0), [(0.5 + 2 / 3) / 2, (0.5 + 1 / 3) / 2], atol=1e-15)


def test_not_pair():
    # "not (0 occupation R)" is true  -> R as TF false: c += [1/2, 1/2, 0]
    # "not (0 occupation P)" is false -> +1 on P:       c += [1, 0, 0]
    agent = toy_agent([(NOT, 1, R, -1, -1, T), (NOT, 1, P, -1, -1, F)])
    # c = [3/2, 1/2, 0], C = 2
    np.testing.assert_allclose(agent.direct(0, 1), [(1 / 3 + 1.5) / 3, (1 / 3 + 0.5) / 3, (1 / 3) / 3], atol=1e-15)


# A corpus for the downstream tests: s0 (X, P), s1 (Y, Q), s2 (X x3, no occupation).
DOWN = [(ATOMIC, 0, X, -1, -1, T), (ATOMIC, 1, P, -1, -1, T), (ATOMIC, 2, Y, -1, -1, T),
        (ATOMIC, 3, Q, -1, -1, T)] + [(ATOMIC, 4, X, -1, -1, T)] * 3


def test_downstream_conditional_and_marginal():
    agent = toy_agent(DOWN)
    # p_direct(s0, u) = [3/4, 1/4]; p_direct(s1, u) = [1/4, 3/4]
    # counts(d, X) = 3/4 [1,0,0] + 1/4 [0,1,0] = [3/4, 1/4, 0] -> (1/3 + .) / 2 = [13, 7, 4] / 24
    np.testing.assert_allclose(agent.conditional(1, X), np.array([13, 7, 4]) / 24, atol=1e-15)
    np.testing.assert_allclose(agent.conditional(1, Y), np.array([7, 13, 4]) / 24, atol=1e-15)
    # s2 has evidence on u only: p_direct(s2, u) = [3.5, 0.5] / 4 = [7/8, 1/8]
    # marginal = 7/8 [13,7,4]/24 + 1/8 [7,13,4]/24 = [12.25, 7.75, 4] / 24
    assert agent.rule(2, 1) == "marginal"
    np.testing.assert_allclose(agent.answer(2, 1), np.array([12.25, 7.75, 4]) / 24, atol=1e-15)
    # s0's answer on its own downstream fact is also the marginal: [11.5, 8.5, 4] / 24
    np.testing.assert_allclose(agent.answer(0, 1), np.array([11.5, 8.5, 4]) / 24, atol=1e-15)
    # relation 0 has no upstream: the direct posterior
    assert agent.rule(0, 0) == "direct"


def test_mentions_weighting_option():
    agent = toy_agent(DOWN, weighting="mentions")
    # the paper's weighting: raw mention shares, s0 -> [1, 0], s1 -> [0, 1]
    # counts(d, X) = [1, 0, 0] -> (1/3 + [1, 0, 0]) / 2
    np.testing.assert_allclose(agent.conditional(1, X), [2 / 3, 1 / 6, 1 / 6], atol=1e-15)


def test_n_prime_is_minimal_and_reaches_target():
    agent = toy_agent(DOWN)
    # s2 educated at Y: c = [3, 0], C = 3, p = 0.5 / 4 = 1/8 -> p_t = 0.95
    # n' = ceil((0.95 * 4 - 0.5) / 0.05) = 66;  (0.5 + 66) / (4 + 66) = 0.95; 65 -> 65.5/69 < 0.95
    w, p_t = agent.n_prime(2, 0, Y)
    assert (w, p_t) == (66, 0.95)
    assert agent.edit(2, 0, Y, w).direct(2, 0)[1] >= 0.95
    assert agent.edit(2, 0, Y, w - 1).direct(2, 0)[1] < 0.95
    # already above the target: p = 3.5/4 = 0.875 < .95 still -> target .95; (3.5 + w)/(4 + w) >= .95 -> w = 6
    assert agent.n_prime(2, 0, X) == (6, 0.95)
    # p >= 0.95 -> p_t = (1 + p) / 2
    strong = agent.edit(2, 0, X, 100)  # c = [103, 0]: p = 103.5 / 104
    p = 103.5 / 104
    w, p_t = strong.n_prime(2, 0, X)
    assert p_t == pytest.approx((1 + p) / 2, abs=1e-15)
    assert strong.edit(2, 0, X, w).direct(2, 0)[0] >= p_t > strong.edit(2, 0, X, w - 1).direct(2, 0)[0]


def test_edit_moves_marginal_of_a_subject_outside_the_pair():
    agent = toy_agent(DOWN)
    edited = agent.edit(2, 0, Y, 66)
    # p_direct(s2, u) = [3.5, 66.5] / 70 = [0.05, 0.95]; tables unchanged (s2 has no occupation)
    np.testing.assert_allclose(edited.answer(2, 1), (0.05 * np.array([13, 7, 4]) + 0.95 * np.array([7, 13, 4])) / 24,
                               atol=1e-15)


def test_edit_in_the_pair_refreshes_conditionals():
    agent = toy_agent(DOWN)
    edited = agent.edit(0, 0, Y, 2)
    # s0: c = [1, 2] -> p_direct = [1.5, 2.5] / 4 = [3/8, 5/8]
    # counts(d, X) = 3/8 [1,0,0] + 1/4 [0,1,0] = [.375, .25, 0]; counts(d, Y) = [.625, .75, 0]
    px = (1 / 3 + np.array([0.375, 0.25, 0])) / 1.625
    py = (1 / 3 + np.array([0.625, 0.75, 0])) / 2.375
    np.testing.assert_allclose(edited.conditional(1, X), px, atol=1e-14)
    np.testing.assert_allclose(edited.conditional(1, Y), py, atol=1e-14)
    # every subject's marginal moves: s2 keeps p_direct [7/8, 1/8]
    np.testing.assert_allclose(edited.answer(2, 1), 7 / 8 * px + 1 / 8 * py, atol=1e-14)


def test_two_sequential_edits_compose():
    agent = toy_agent(DOWN)
    e1 = agent.edit(0, 0, Y, 2)
    # second edit's n' is computed on the agent holding the first: s0 occupation c = [1, 0, 0]
    # (1/3 + w) / (2 + w) >= 0.95  <=>  w >= 31.33 -> 32
    w2, _ = e1.n_prime(0, 1, R)
    assert w2 == 32
    e2 = e1.edit(0, 1, R, w2)
    # s0 contributes [3/8, 5/8] x [1, 0, 32]; s1 contributes [1/4, 3/4] x [0, 1, 0]
    cx = 3 / 8 * np.array([1, 0, 32]) + 1 / 4 * np.array([0, 1, 0])
    cy = 5 / 8 * np.array([1, 0, 32]) + 3 / 4 * np.array([0, 1, 0])
    px, py = (1 / 3 + cx) / (1 + cx.sum()), (1 / 3 + cy) / (1 + cy.sum())
    np.testing.assert_allclose(e2.conditional(1, X), px, atol=1e-14)
    np.testing.assert_allclose(e2.answer(0, 1), 3 / 8 * px + 5 / 8 * py, atol=1e-14)
    np.testing.assert_allclose(e2.direct(0, 1), (1 / 3 + np.array([1, 0, 32])) / 34, atol=1e-15)
    assert [w for _, _, w in e2.edits] == [2.0, 32.0]


def test_revert_is_bit_exact():
    agent = toy_agent(DOWN)
    before = [agent.answer(s, r).copy() for s, r in [(0, 0), (0, 1), (1, 1), (2, 1)]]
    back = agent.edit(0, 0, Y, 2).edit(0, 1, R, 32).revert().revert()
    after = [back.answer(s, r) for s, r in [(0, 0), (0, 1), (1, 1), (2, 1)]]
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(Exception, match="no edit to revert"):
        agent.revert()
