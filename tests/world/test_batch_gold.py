"""Golds of a batch: the agent that holds every request of the batch, checked by hand on the toy world.

Two related requests in one batch, on subject s0: A = (s0, educated at) -> Y (upstream) and
B = (s0, occupation) -> R (its downstream relation), both with evidence weight 3. Case A's downstream
probe (s0, occupation) is request B itself, so in the batch it is scored as B (B's requested object, the
direct posterior that holds B's evidence); alone, A moves it only through the pair table.
"""

from __future__ import annotations

import numpy as np
import pytest

from editlab.world.stream import AgentStream
from tests.world.test_agent_posteriors import DOWN
from tests.world.toy import P, Q, R, X, Y, toy_agent

SUBJECTS = {"s0": 0, "s1": 1, "s2": 2}
RELATIONS = {"educated at": 0, "occupation": 1}
OBJECTS = {"X": X, "Y": Y, "P": P, "Q": Q, "R": R}
NAME = {v: k for k, v in OBJECTS.items()}


def _probe(kind: str, s: str, r: str, o: int, target: str) -> dict:
    return {"kind": kind, "subject": s, "relation": r, "object": NAME[o], "target": target}


def _case(cid: str, s1: str, r1: str, r2: str, o_req: int) -> dict:
    """A case whose probes ask (s1 r1), (s1 r2), (s1 r1) of s1 and (s1 r2) of s1 (objects: every support value)."""
    sup = {"educated at": (X, Y), "occupation": (P, Q, R)}
    probes = [_probe("s1r1", s1, r1, o_req, "requested")]
    probes += [_probe("s1r2", s1, r2, o, "new_argmax") for o in sup[r2]]
    probes += [_probe("s2r1", "s1", r1, o, "new_argmax") for o in sup[r1]]
    probes += [_probe("s2r2", "s1", r2, o, "new_argmax") for o in sup[r2]]
    ids = {"subject": SUBJECTS[s1], "relation": RELATIONS[r1], "requested_object": o_req,
           "relation2": RELATIONS[r2]}
    return {"case_id": cid, "ids": ids, "probes": probes, "edit_weight": 3.0}


A = _case("A", "s0", "educated at", "occupation", Y)
B = _case("B", "s0", "occupation", "educated at", R)


@pytest.fixture
def stream() -> AgentStream:
    return AgentStream(toy_agent(DOWN), (SUBJECTS, RELATIONS, OBJECTS), weight_rule=3.0, target=0.95)


def _conditional(tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p(. | occupation, X) and p(. | occupation, Y) from the pair table's rows T[X], T[Y] (alpha = 1/3)."""
    return (1 / 3 + tx) / (1 + tx.sum()), (1 / 3 + ty) / (1 + ty.sum())


def test_batch_of_two_related_requests_by_hand(stream):
    stream.add(A)
    stream.add(B)
    # direct posteriors: s0 educated at: c = [1, 0 + 3] -> (1/2 + c) / 5;
    # s0 occupation: c = [1, 0, 0 + 3] -> (1/3 + c) / 5
    u0 = np.array([0.5 + 1, 0.5 + 3]) / 5
    d0 = np.array([1 / 3 + 1, 1 / 3, 1 / 3 + 3]) / 5
    u1 = np.array([0.25, 0.75])  # s1 educated at: c = [0, 1] -> (1/2 + c) / 2, no edit
    # pair table over s0 (p_direct(s0, u) x c(s0, d) = [1, 0, 3]) and s1 ([1/4, 3/4] x [0, 1, 0])
    tx = u0[0] * np.array([1, 0, 3]) + u1[0] * np.array([0, 1, 0])
    ty = u0[1] * np.array([1, 0, 3]) + u1[1] * np.array([0, 1, 0])
    cx, cy = _conditional(tx, ty)
    s1_occupation = u1[0] * cx + u1[1] * cy  # s1's marginal
    want_a = [u0[1], *d0, *u1, *s1_occupation]  # A: s1r1 (Y), s1r2 = request B (direct), s2r1, s2r2
    np.testing.assert_allclose(stream.gold(A), want_a, rtol=0, atol=1e-15)
    want_b = [d0[2], *u0, *s1_occupation, *u1]  # B: s1r1 (R), s1r2 = request A (direct), s2r1 = s1 occupation
    np.testing.assert_allclose(stream.gold(B), want_b, rtol=0, atol=1e-15)
    # A's downstream probe is request B: scored as B (its requested object), not through the marginal
    assert stream.targets(A) == {"s1r1": "Y", "s1r2": "R", "s2r1": "Y", "s2r2": NAME[[P, Q, R][int(np.argmax(
        s1_occupation))]]}
    assert stream.targets(B) == {"s1r1": "R", "s1r2": "Y", "s2r1": stream.targets(A)["s2r2"], "s2r2": "Y"}
    assert stream.downstream_changes(A) and stream.downstream_changes(B)  # base: s0 occupation P, educated at X
    fields = stream.scored(A, "post")
    assert fields == {"gold_post": stream.gold(A), "target_post": stream.targets(A), "downstream_changes": True}


def test_alone_the_downstream_answer_follows_the_marginal(stream):
    """The single-edit gold of A's downstream probe: the marginal through the pair table (Q, not B's R)."""
    stream.add(A)
    u0 = np.array([0.5 + 1, 0.5 + 3]) / 5
    u1 = np.array([0.25, 0.75])
    tx = u0[0] * np.array([1, 0, 0]) + u1[0] * np.array([0, 1, 0])
    ty = u0[1] * np.array([1, 0, 0]) + u1[1] * np.array([0, 1, 0])
    cx, cy = _conditional(tx, ty)
    marginal = u0[0] * cx + u0[1] * cy
    np.testing.assert_allclose(stream.gold(A)[1:4], marginal, rtol=0, atol=1e-15)
    assert stream.targets(A)["s1r2"] == "Q" == NAME[[P, Q, R][int(np.argmax(marginal))]]
    stream.replay([])  # back to the fitted agent: no edit, the pre-edit answers
    assert stream.targets(A) == {"s1r1": "X", "s1r2": "P", "s2r1": "Y", "s2r2": "Q"}
    assert not stream.downstream_changes(A)


def _bench():
    from tests.conftest import load_bench

    return load_bench("batch_golds")


def test_bench_batch_golds_sees_no_shift_in_batches_of_one_and_some_in_batches(tiny_world):
    from editlab.world.loading import World

    bench, world = _bench(), World(tiny_world.dir)
    cases = world.cases("eval")[:60]
    one = bench.batch_shift(world, cases, 1)
    assert {k: v for k, v in one.items() if k != "batch_size"} == {
        "s1r2_is_another_request": 0.0, "s1r2_target_moved": 0.0, "any_atomic_target_moved": 0.0,
        "downstream_flag_moved": 0.0, "mean_abs_gold_shift": 0.0}
    ten = bench.batch_shift(world, cases, 10)
    assert ten["s1r2_is_another_request"] > 0.5 and ten["mean_abs_gold_shift"] > 0
