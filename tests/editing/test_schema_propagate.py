"""method=schema_propagate: the consequence of "s1 r_u o*" read from the model (its answers on r_d for the subjects
it answers o* for on r_u), applied with the request; no agent at edit time."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest, RelationSchema
from editlab.editing.loss import request_nll, target_batch
from editlab.editing.methods import schema_propagate
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder
from tests.conftest import world_schema
from tests.editing.fixture_hparams import fixture_hparams

SUBJECTS = ("s1", "s2", "s3", "s4")
SCHEMA = RelationSchema(downstream={"u": "d"}, objects={"u": ("A", "B"), "d": ("X", "Y", "Z")},
                        subjects={"u": SUBJECTS, "d": SUBJECTS})
GREEDY = {"s1": "A", "s2": "B", "s3": "B", "s4": "A"}  # the model's upstream answers: s2 and s3 answer B
DOWN = {"s1": [0.7, 0.1, 0.1], "s2": [0.1, 0.6, 0.1], "s3": [0.2, 0.3, 0.4], "s4": [0.8, 0.05, 0.05]}


def _method(implied_target: str = "conditional", greedy: dict | None = None, estimate: str = "probability"):
    m = registry.get_method("schema_propagate", {"base": "lora", "implied_target": implied_target,
                                                 "estimate": estimate})
    m.schema, m.answers = SCHEMA, {"u": dict(greedy or GREEDY)}
    return m


def _probs(down: dict):
    return lambda model, enc, subjects, r, objects, batch: torch.tensor([down[s] for s in subjects],
                                                                        dtype=torch.float64)


def test_the_consequence_is_the_mode_among_the_subjects_answering_the_new_object(monkeypatch):
    """References s2 and s3 (their greedy answer on u is B; s1 itself never is one): their mean on d is
    (0.15, 0.45, 0.25), so Y, asked for with q = c 0.45 + (1 - c) p_0(Y), p_0 = s1's 0.1. Every subject as a
    reference (the edit's object ignored) would give (0.45, 0.26, 0.16): X."""
    monkeypatch.setattr(schema_propagate, "sequence_probs", _probs(DOWN))
    for c, q in ((1.0, 0.45), (0.9, 0.9 * 0.45 + 0.1 * 0.1)):
        got = _method().consequence(None, EditRequest("s1", "u", "B", "e", credence=c))
        assert (got.subject, got.relation, got.target, got.case_id) == ("s1", "d", "Y", "e/implied"), got
        assert got.credence == pytest.approx(q)
    # estimate=frequency: s2's most probable object is Y, s3's Z: Y (the first of the tie) with q = 1/2
    freq = _method(estimate="frequency").consequence(None, EditRequest("s1", "u", "B", "e"))
    assert freq.target == "Y" and freq.credence == pytest.approx(0.5)
    certain = _method("certain").consequence(None, EditRequest("s1", "u", "B", "e"))
    assert certain.target == "Y" and certain.credence == 1.0
    # nothing to propagate: no downstream relation; nobody else answers the object
    assert _method().consequence(None, EditRequest("s1", "d", "Y", "e")) is None
    assert _method().consequence(None, EditRequest("s1", "u", "C", "e")) is None
    assert _method(greedy={**GREEDY, "s2": "A", "s3": "A"}).consequence(None, EditRequest("s1", "u", "B", "e")) is None
    # certain: a consequence s1 already answers is not re-asserted
    monkeypatch.setattr(schema_propagate, "sequence_probs", _probs({**DOWN, "s1": [0.1, 0.8, 0.1]}))
    assert _method("certain").consequence(None, EditRequest("s1", "u", "B", "e")) is None


def test_without_a_schema_or_a_credence_base_it_says_what_to_do(tiny_lm):
    with pytest.raises(EditlabError, match="relation schema"):
        registry.get_method("schema_propagate", {}).prepare(tiny_lm.model, EditContext(tokenizer=tiny_lm.tok))
    with pytest.raises(EditlabError, match="implied_target=certain"):
        registry.get_method("schema_propagate", {"base": "mend"})
    registry.get_method("schema_propagate", {"base": "mend", "implied_target": "certain"})


def test_on_the_fixture_the_consequence_is_read_from_the_model_and_edited_with_the_request(tiny_lm):
    """On the fixture: the upstream answers read in prepare are the model's greedy answers, a consequence's q is the
    mean of the references' probabilities (one checked against separate passes), and the edit adds the implied fact
    to the base's batch, asking for q."""
    model, tok = copy.deepcopy(tiny_lm.model), tiny_lm.tok
    ctx = EditContext(tokenizer=tok, world_dir=tiny_lm.world.dir, schema=world_schema(tiny_lm.world.dir))
    m = registry.get_method("schema_propagate", {**fixture_hparams("schema_propagate"), "max_subjects": 200})
    m.prepare(model, ctx)
    enc = PromptEncoder(tok)
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases if c["relation"] in ctx.schema.downstream]
    found = ((r, m.consequence(model, r)) for r in reqs)
    req, implied = next((r, x) for r, x in found if x is not None)  # the fixture answers most objects for nobody
    assert implied.relation == ctx.schema.downstream[req.relation] and implied.subject == req.subject
    refs = [s for s, a in m.answers[req.relation].items() if a == req.target and s != req.subject
            and s in ctx.schema.subjects[implied.relation]]
    with torch.no_grad():
        ps = [float(torch.exp(-request_nll(model, target_batch(enc, [replace(implied, subject=s)]))[0])) for s in refs]
    assert implied.credence == pytest.approx(sum(ps) / len(ps), rel=1e-4)

    seen = []
    real = m.base_method.apply
    m.base_method.apply = lambda mdl, batch, c, on_step=None: seen.append(list(batch)) or real(mdl, batch, c, on_step)
    handle = m.apply(model, [req], ctx)
    assert handle.info["implied"] == 1 and seen == [[replace(req, implied=(implied,)), implied]]
    handle.restore()
