"""method=propagate: the base method gets the request and its implied facts as one batch, in order, each fact once;
the base must edit several requests at once."""

from __future__ import annotations

import pytest

from editlab.editing.base import EditContext, EditHandle, EditRequest
from editlab.editing.registry import get_method
from editlab.errors import EditlabError


def _req(s: str, r: str, o: str, implied=()) -> EditRequest:
    return EditRequest(s, r, o, f"{s}/{r}", tuple(implied))


def test_the_base_gets_requests_then_their_implied_facts_once(tiny_lm):
    method = get_method("propagate", {"base": "lora", "base_hparams": {"steps": 1}})
    seen: list[list[EditRequest]] = []

    def record(model, requests, ctx, on_step=None):
        seen.append(list(requests))
        return EditHandle(model, info={"loss": 0.0})

    method.base_method.apply = record
    a_implied = _req("a", "country", "X")
    reqs = [_req("a", "sport", "s", [a_implied]), _req("b", "sport", "t", [_req("a", "country", "Y")]),
            _req("c", "sport", "u", [_req("b", "sport", "z")])]  # b sport is requested already: the request wins
    handle = method.apply(tiny_lm.model, reqs, EditContext(tokenizer=tiny_lm.tok))
    assert seen == [[*reqs, a_implied]] and handle.info == {"loss": 0.0, "implied": 1}
    assert [r.implied for r in method.with_implied([_req("d", "sport", "v")])] == [()]  # nothing implied: the request


@pytest.mark.parametrize(("base", "message"), [("rome", "edits one request at a time"),
                                                ("propagate", "cannot be propagate")])
def test_a_base_that_cannot_take_the_batch_is_refused(base, message):
    with pytest.raises(EditlabError, match=message):
        get_method("propagate", {"base": base})


def test_edit_run_gives_each_request_the_agent_s_implications(tiny_world):
    from editlab.runs.edit import implications_of
    from editlab.world.loading import World

    world = World.open(tiny_world.dir)
    implied = implications_of(world)
    for case in world.cases()[:40]:
        got = implied(case)
        assert sum(r.subject == case["subject"] for r in got) == int(case["downstream_changes"])
        assert all(r.case_id == f"{case['case_id']}/implied" and not r.implied for r in got)
