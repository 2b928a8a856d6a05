"""Shared-key targets of MEMIT / AlphaEdit (``shared_keys``, editlab.editing.locate.targets).

Two requests on one subject have the same key at the subject's last token, so a linear update can give
that key only one value. With ``shared_keys=False`` (MEMIT's per-request targets) MEMIT's least squares
reaches the mean of the two targets; with ``shared_keys=True`` the two requests share one target, which
MEMIT reaches exactly; requests of other subjects are optimised as before.
"""

from __future__ import annotations

import copy

import pytest
import torch

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.locate.keys import average_io
from editlab.editing.locate.targets import CHUNK_REQUESTS, _chunks_of_groups, _key_groups, optimise_targets
from tests.editing.fixture_hparams import fixture_hparams


@pytest.fixture
def two_on_one_subject(tiny_lm):
    """Model, context, and [a, b, c]: a and b on one subject (other relation and object), c on another subject."""
    cases = tiny_lm.world.cases
    a = EditRequest.from_case(cases[0])
    other = next(c for c in cases if c["relation"] != a.relation and c["requested_object"] != a.target)
    b = EditRequest(a.subject, other["relation"], other["requested_object"], "b")
    c = EditRequest.from_case(next(c for c in cases if c["subject"] != a.subject))
    ctx = EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_lm.world.dir, model_id="")
    return copy.deepcopy(tiny_lm.model), ctx, [a, b, c]


def test_key_groups_follow_the_fact_token_and_chunks_never_split_a_group():
    reqs = [EditRequest("s", "r1", "o1"), EditRequest("t", "r1", "o2"), EditRequest("s", "r2", "o3"),
            EditRequest("s", "r1", "o4")]
    assert _key_groups(reqs, "subject_last") == [0, 1, 0, 0]
    assert _key_groups(reqs, "last") == [0, 1, 2, 0]
    c = CHUNK_REQUESTS
    group = [i // 3 for i in range(3 * c + 8)]  # groups of 3: a chunk of c (no multiple of 3) would cut one
    assert c % 3
    chunks = _chunks_of_groups(group)
    assert sorted(i for ch in chunks for i in ch) == list(range(3 * c + 8))
    assert all(len({group[i] for i in a} & {group[i] for i in b}) == 0 for a in chunks for b in chunks if a is not b)
    assert _chunks_of_groups(list(range(2 * c + 2))) == [list(range(c)), list(range(c, 2 * c)), [2 * c, 2 * c + 1]]


@pytest.mark.parametrize("shared", [False, True])
def test_memit_reaches_the_shared_target_and_only_the_mean_of_separate_ones(two_on_one_subject, shared):
    model, ctx, reqs = two_on_one_subject
    # keys and residuals both averaged flat over the templates: the edit then reaches the target exactly
    m = registry.get_method("memit", {**fixture_hparams("memit"), "fact_token": "subject_last", "layers": [1],
                                      "mom2_update_weight": 1e-4, "shared_keys": shared, "steps": 5,
                                      "key_average": "flat", "target_init": "mean"})
    m.prepare(model, ctx)
    last = m.block(model, 1)
    tgt = optimise_targets(model, last, ctx.tokenizer, reqs, m._templates, m.spec, shared_keys=shared)
    z = tgt.h + tgt.delta
    assert torch.allclose(tgt.h[0], tgt.h[1], rtol=1e-5, atol=1e-5)  # one key, one current value (read in two
    # passes when the requests' tails differ in length: equal up to float rounding)
    assert torch.equal(tgt.delta[0], tgt.delta[1]) == shared
    m.apply(model, reqs, ctx)
    (_, h), = average_io(model, [last], ctx.tokenizer, reqs, m._templates, m.fact_token)
    reached = (z[0] + z[1]) / 2  # separate targets: least squares over one key gives their mean
    tol = 1e-3 * float(tgt.delta.norm(dim=1).max())
    assert torch.allclose(h[0], reached, atol=tol) and torch.allclose(h[1], reached, atol=tol)
    assert torch.allclose(h[2], z[2], atol=tol)  # the other subject's own target
    if not shared:
        assert not torch.allclose(h[0], z[0], atol=tol)  # so neither request gets its own target
