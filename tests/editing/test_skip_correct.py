"""The run's one gate, ``edits.skip_correct`` (Session.step): with it on, a case whose pre-edit greedy s1r1
continuation already is o* never reaches the method and is recorded ``edited: false``; off, every case is
edited. A test-only method records which requests it is given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, snapshot
from editlab.errors import EditlabError
from editlab.eval.locality import LocalityState, locality_facts
from editlab.eval.probes import max_object_tokens, score_cases
from editlab.lm.presets import Arch, build_model
from editlab.runs.config import EditsConfig
from editlab.runs.session import Session
from editlab.vocab import PromptEncoder, hit_exact

WEIGHT = "model.layers.0.mlp.down_proj.weight"


@dataclass
class _Recorder(EditMethod):
    """Adds 0.05 to one weight per application and remembers the case ids of every application."""

    name = "test_recorder"
    given: list[list[str]] = field(default_factory=list)

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext, on_step=None) -> EditHandle:
        self.given.append([r.case_id for r in requests])
        touched = snapshot(model, [WEIGHT])
        with torch.no_grad():
            dict(model.named_parameters())[WEIGHT].add_(0.05)
        return EditHandle(model, touched=touched, info={"steps": 1})


@pytest.fixture(scope="module")
def setup(tiny_world):
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    torch.manual_seed(0)
    model = build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2), len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model.eval()
    enc, mx = PromptEncoder(tok), max_object_tokens(tok, tiny_world.world["objects"])
    cases = tiny_world.cases[:3]
    facts = [json.loads(x) for x in (tiny_world.dir / "facts.jsonl").read_text().splitlines()]
    loc = locality_facts(facts, tiny_world.cases, 5, 0)
    pre = score_cases(model, enc, cases, mx)
    assert not any(hit_exact(p.gen["s1r1"], c["requested_object"]) for p, c in zip(pre, cases, strict=True))
    return tok, model, enc, mx, cases, loc, pre


def _session(setup, skip: bool) -> Session:
    tok, model, enc, mx, _, loc, _ = setup
    return Session(_Recorder(), EditContext(tokenizer=tok), enc, mx, loc, LocalityState.score(model, enc, loc, mx),
                   n_samples=0, skip_correct=skip)


def _answered(pre, cases, which: set[int]):
    """``pre`` with the greedy s1r1 continuation of the cases at ``which`` set to their requested object."""
    return [replace(p, gen={**p.gen, "s1r1": f"{c['requested_object']}. And"}) if j in which else p
            for j, (p, c) in enumerate(zip(pre, cases, strict=True))]


@pytest.mark.parametrize("skip", [True, False])
def test_a_case_already_answered_is_skipped_only_under_skip_correct(setup, skip):
    _, model, _, _, cases, _, pre = setup
    base = dict(model.named_parameters())[WEIGHT].detach().clone()
    session = _session(setup, skip)
    one = cases[:1]
    handle, _, recs = session.step(model, one, 0, _answered(pre[:1], one, {0}), [{}], "single", 0, locality=False)
    assert recs[0]["edited"] is (not skip)
    if skip:
        assert session.method.given == []  # the method never saw it
        assert handle.model is model and handle.prefix == "" and recs[0]["info"] == {} and recs[0]["time_s"] == 0.0
        assert torch.equal(dict(model.named_parameters())[WEIGHT], base)
        assert recs[0]["post"]["p"] == pytest.approx(pre[0].p, rel=1e-6)  # scored on the unchanged model
    else:
        assert session.method.given == [[one[0]["case_id"]]] and recs[0]["info"] == {"steps": 1}
    assert handle.restore() is model
    assert torch.equal(dict(model.named_parameters())[WEIGHT], base)


def test_an_unchanged_handle_commits_the_model_as_it_is(setup):
    _, model, _, _, cases, _, pre = setup
    session = _session(setup, True)
    handle, _, recs = session.step(model, cases[:2], 0, _answered(pre[:2], cases[:2], {0, 1}), [{}, {}], "sequential",
                                   0, locality=False)
    assert [r["edited"] for r in recs] == [False, False] and session.method.given == []
    assert handle.commit() is model


def test_a_mixed_batch_gives_the_method_only_the_cases_to_edit(setup):
    _, model, enc, mx, cases, _, pre = setup
    base = dict(model.named_parameters())[WEIGHT].detach().clone()
    session = _session(setup, True)
    handle, _, recs = session.step(model, cases, 0, _answered(pre, cases, {1}), [{}] * 3, "batch", 0,
                                      locality=False)
    assert [r["edited"] for r in recs] == [True, False, True]
    assert session.method.given == [[cases[0]["case_id"], cases[2]["case_id"]]]  # one application, in order
    assert recs[1]["info"] == {} and recs[1]["time_s"] == 0.0 and recs[0]["info"] == {"steps": 1}
    # the skipped case is scored on the model holding the batch's other edits
    edited = score_cases(model, enc, cases[1:2], mx)[0]
    assert recs[1]["post"]["p"] == pytest.approx(edited.p, rel=1e-6) and edited.p != pytest.approx(pre[1].p,
                                                                                                   rel=1e-6)
    handle.restore()
    assert torch.equal(dict(model.named_parameters())[WEIGHT], base)
    # off: the same batch is edited whole
    off = _session(setup, False)
    handle, _, recs = off.step(model, cases, 0, _answered(pre, cases, {1}), [{}] * 3, "batch", 0, locality=False)
    assert [r["edited"] for r in recs] == [True] * 3 and off.method.given == [[c["case_id"] for c in cases]]
    handle.restore()


def test_skip_correct_must_be_a_bool():
    assert EditsConfig().skip_correct is False
    with pytest.raises(EditlabError, match="skip_correct"):
        EditsConfig(skip_correct="yes")
