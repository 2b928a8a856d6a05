"""The protocols own the model; the per-edit step hook is an argument of ``apply``, never a mutation of the
shared context (a test-only method, not registered in the product)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, snapshot
from editlab.eval.locality import LocalityState, locality_facts
from editlab.eval.probes import max_object_tokens, score_cases
from editlab.lm.presets import Arch, build_model
from editlab.runs.protocols import RestoringProtocol
from editlab.runs.results import ResultsWriter
from editlab.runs.session import Session
from editlab.vocab import PromptEncoder


@dataclass
class _Steps(EditMethod):
    """Three fixed updates of one weight, calling ``on_step`` after each (the new contract's argument)."""

    name = "test_steps"
    calls: int = 0

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: Callable[[int, nn.Module], None] | None = None) -> EditHandle:
        assert getattr(ctx, "on_step", None) is None, "the hook must come as an argument, not on the shared context"
        self.calls += 1
        name = "model.layers.0.mlp.down_proj.weight"
        touched = snapshot(model, [name])
        param = dict(model.named_parameters())[name]
        for step in (1, 2, 3):
            with torch.no_grad():
                param.add_(0.05)
            if on_step is not None:
                on_step(step, model)
        return EditHandle(model, touched=touched)


def test_restoring_protocol_owns_the_base_and_traces_through_the_hook_argument(tiny_world, tmp_path):
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    torch.manual_seed(0)
    model = build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2), len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model.eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    enc, mx = PromptEncoder(tok), max_object_tokens(tok, tiny_world.world["objects"])
    cases = tiny_world.cases[:3]
    loc = locality_facts(_facts(tiny_world), tiny_world.cases, 5, 0)
    method = _Steps()
    ctx = EditContext(tokenizer=tok)
    session = Session(method, ctx, enc, mx, loc, LocalityState.score(model, enc, loc, mx), n_samples=0, trace=2)
    pre = score_cases(model, enc, cases, mx)
    writer = ResultsWriter(tmp_path, resume=False)
    protocol = RestoringProtocol(session, model, "single", 1)
    protocol.run(cases, pre, [{} for _ in cases], writer, progress=False)
    assert method.calls == 3 and protocol.model is model
    assert all(torch.equal(v, base[k]) for k, v in protocol.model.state_dict().items())  # restored bit-exactly
    recs = writer.records
    assert [("trace" in r) for r in recs] == [True, True, False]  # the first ``trace`` cases of the stream
    for r in recs[:2]:
        assert r["trace"]["step"] == [0, 1, 2, 3]
        # step 0 is the model before the first update; the last step is the edited model the record scores
        # (equal up to the scorer's float tolerance: tracing packs probes without the greedy prompts)
        assert r["trace"]["p"][0] == pytest.approx(r["pre"]["p"], rel=1e-5, abs=1e-12)
        assert r["trace"]["p"][-1] == pytest.approx(r["post"]["p"], rel=1e-5, abs=1e-12)
        assert r["trace"]["p"][1] != r["trace"]["p"][0]


def _facts(world) -> list[dict]:
    import json

    return [json.loads(x) for x in (world.dir / "facts.jsonl").read_text().splitlines()]
