"""The scorer never bypasses a wrapper: a wrapped model is scored through its own forward and generate.

Memory/wrapper editors (SERAC, GRACE) hand back a module whose forward differs from the base decoder's. The toy
wrapper below adds a fixed bias to one token's logits and decodes greedily by its own forward; it also exposes
its base model's ``config``, ``get_decoder`` and ``get_output_embeddings``, as delegating wrappers do, so a scorer
that looked for a decoder + head would take the fast path and miss the bias.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import MistralForCausalLM

from editlab.eval.fast_scoring import fast_parts
from editlab.eval.probes import score_cases
from editlab.eval.scoring import greedy_continuations, object_scores
from editlab.vocab import PromptEncoder


class BiasWrapper(nn.Module):
    """forward = base logits + ``bias`` on ``token``; greedy generate follows that forward."""

    def __init__(self, base: nn.Module, token: int, bias: float) -> None:
        super().__init__()
        self.base, self.token, self.bias = base, token, bias
        self.config = base.config

    def get_decoder(self) -> nn.Module:
        return self.base.get_decoder()

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    def forward(self, input_ids, attention_mask):
        logits = self.base(input_ids=input_ids, attention_mask=attention_mask).logits.clone()
        logits[..., self.token] += self.bias
        return SimpleNamespace(logits=logits)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, output_scores=False,
                 return_dict_in_generate=True, do_sample=False):
        assert not do_sample and return_dict_in_generate
        rows, scores = [], []
        for ids, mask in zip(input_ids, attention_mask, strict=True):  # one row at a time: no padding to handle
            seq, new, first = ids[mask.bool()][None], [], None
            for _ in range(max_new_tokens):
                logits = self(seq, torch.ones_like(seq)).logits[0, -1]
                first = logits if first is None else first
                nxt = logits.argmax()
                new.append(nxt.item())
                if nxt.item() == eos_token_id:
                    break
                seq = torch.cat([seq, nxt.view(1, 1)], 1)
            rows.append(new + [pad_token_id] * (max_new_tokens - len(new)))
            scores.append(first)
        seqs = torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], 1)
        return SimpleNamespace(sequences=seqs, scores=(torch.stack(scores),) if output_scores else None)


def _probes(lm, n_cases: int = 4):
    enc = PromptEncoder(lm.tok)
    probes = [p for c in lm.world.cases[:n_cases] for p in c["probes"] if "object" in p]
    prompts = enc.prompts([("", p["prompt"]) for p in probes])
    return enc, prompts, enc.objects([p["object"] for p in probes])


def _biased_logp(model, prompts, objects, token: int, bias: float) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for p, o in zip(prompts, objects, strict=True):
            logits = model(torch.tensor([p + o])).logits[0].double()
            logits[:, token] += bias
            lsm = torch.log_softmax(logits, -1)
            out.append(sum(lsm[len(p) - 1 + k, t].item() for k, t in enumerate(o)))
    return torch.tensor(out, dtype=torch.float64)


def test_wrapper_is_scored_through_its_forward(tiny_lm):
    model, tok = tiny_lm.model, tiny_lm.tok
    _, prompts, objects = _probes(tiny_lm)
    token = objects[0][0]
    wrapped = BiasWrapper(model, token, bias=3.0)
    assert fast_parts(model) is not None and fast_parts(wrapped) is None
    got, _ = object_scores(wrapped, prompts, objects, tok.pad_token_id, batch_size=5)
    want = _biased_logp(model, prompts, objects, token, 3.0)
    plain, _ = object_scores(model, prompts, objects, tok.pad_token_id)
    assert (got.exp() - want.exp()).abs().max() <= 1e-5 and (got - want).abs().max() <= 1e-4
    assert (got - plain).abs().max() > 0.5  # the bias shows: scoring the base decoder would fail the check above


def test_wrapper_greedy_follows_its_generate(tiny_lm):
    model, tok, n = tiny_lm.model, tiny_lm.tok, tiny_lm.max_new_tokens
    _, prompts, objects = _probes(tiny_lm, n_cases=2)
    token = objects[0][0]
    conts = greedy_continuations(BiasWrapper(model, token, bias=100.0), tok, prompts, n, batch_size=3)
    assert set(conts) == {tok.decode([token] * n)}  # the bias wins every step
    assert set(greedy_continuations(model, tok, prompts, n)) != set(conts)


def test_wrapper_through_score_cases_and_plain_subclass(tiny_lm):
    """score_cases (the edit/eval scoring core) honours the wrapper; an editor's subclass of a HF model
    that overrides forward is a wrapper too."""
    model, tok, n = tiny_lm.model, tiny_lm.tok, tiny_lm.max_new_tokens
    cases = tiny_lm.world.cases[:2]
    wrapped = BiasWrapper(model, PromptEncoder(tok).objects(["true"])[0][0], bias=4.0)
    plain = score_cases(model, PromptEncoder(tok), cases, n)
    biased = score_cases(wrapped, PromptEncoder(tok), cases, n)
    for p, b in zip(plain, biased, strict=True):
        assert all(y > x for x, y, f in zip(p.p, b.p, p.p_false, strict=True) if f is not None)  # p(" true") up

    class Edited(MistralForCausalLM):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    assert fast_parts(Edited(model.config)) is None


def test_progress_bar_counts_forwards_and_changes_no_number(tiny_lm):
    """score_cases' progress bar reaches its total (one tick per forward batch) on the fast and the generic
    path, and the scores are those of a run without it."""
    from tqdm import tqdm

    model, tok, n = tiny_lm.model, tiny_lm.tok, tiny_lm.max_new_tokens
    cases, enc = tiny_lm.world.cases[:3], PromptEncoder(tok)
    for m in (model, BiasWrapper(model, 5, bias=1.0)):
        ticks: list[tuple[int, int]] = []

        class Recording(tqdm):
            log = ticks

            def update(self, k=1):
                super().update(k)
                self.log.append((self.n, self.total))

        import editlab.eval.probes as probes

        real, probes.tqdm = probes.tqdm, Recording
        try:
            shown = score_cases(m, enc, cases, n, batch_size=4, progress="scores")
        finally:
            probes.tqdm = real
        quiet = score_cases(m, enc, cases, n, batch_size=4)
        assert [s.to_json() for s in shown] == [s.to_json() for s in quiet]
        assert len(ticks) >= 2 and ticks[-1][0] == ticks[-1][1] == len(ticks)
