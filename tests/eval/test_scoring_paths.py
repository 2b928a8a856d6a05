"""The scorer's fast path (prefix tree + cached greedy loop) against unbatched computation and the generic path.

Covered: multi- and single-token objects, in-context prefixes, several tree rows and batches, EOS in greedy
decoding (rows finishing at different steps, the loop stopping early), the first-step log-distribution,
and the architectures the fast path accepts (tiny random Mistral/Llama/Qwen2/GPT-2 built from config).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from editlab.editing.base import EditRequest
from editlab.eval import fast_scoring
from editlab.eval.fast_scoring import fast_parts
from editlab.eval.scoring import greedy_continuations, object_scores, score_and_decode
from editlab.vocab import PromptEncoder


class PassThrough(nn.Module):
    """A non-Hugging-Face module around a model: forces the generic path, same numbers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    def generate(self, **kwargs):
        return self.inner.generate(**kwargs)


class EosAs:
    """The world's tokenizer with another token playing EOS; decodes to ids (padding dropped)."""

    def __init__(self, tok, eos: int) -> None:
        self.pad_token_id, self.eos_token_id = tok.pad_token_id, eos

    def batch_decode(self, seqs, skip_special_tokens=True) -> list[str]:
        return [" ".join(str(t) for t in s if t != self.pad_token_id) for s in seqs]


def _pairs(lm, n_cases: int = 6) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """(prompts, objects, greedy prompts) of the first cases' probes, half with an in-context prefix."""
    enc = PromptEncoder(lm.tok)
    cases = lm.world.cases[:n_cases]
    items, gen = [], []
    for j, c in enumerate(cases):
        pre = EditRequest.from_case(cases[-1 - j]).sentence if j % 2 else ""
        for pr in c["probes"]:
            for obj in ([pr["object"]] if "object" in pr else ["true", "false"]):
                items.append((pre, pr["prompt"], obj))
            if "object" in pr:
                gen.append((pre, pr["prompt"]))
    prompts = enc.prompts([(pre, p) for pre, p, _ in items])
    objects = enc.objects([o for _, _, o in items])
    return prompts, objects, enc.prompts(gen)


def _unbatched(model, prompts, objects) -> tuple[torch.Tensor, torch.Tensor]:
    logp, acc = [], []
    with torch.no_grad():
        for p, o in zip(prompts, objects, strict=True):
            lsm = torch.log_softmax(model(torch.tensor([p + o])).logits[0].double(), -1)
            logp.append(sum(lsm[len(p) - 1 + k, t].item() for k, t in enumerate(o)))
            acc.append(sum(int(lsm[len(p) - 1 + k].argmax().item() == t) for k, t in enumerate(o)) / len(o))
    return torch.tensor(logp, dtype=torch.float64), torch.tensor(acc, dtype=torch.float64)


def _greedy_one_by_one(model, prompts, n: int, eos: int) -> list[list[int]]:
    out = []
    with torch.no_grad():
        for p in prompts:
            ids, new = torch.tensor([p]), []
            for _ in range(n):
                nxt = model(ids).logits[0, -1].argmax()
                new.append(nxt.item())
                if nxt.item() == eos:
                    break
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            out.append(new)
    return out


@pytest.fixture
def small_rows(monkeypatch):
    """Prefix-tree rows of 48 tokens, so the fixtures span many rows and several batches."""
    monkeypatch.setattr(fast_scoring, "ROW_TOKENS", 48)


def test_fast_path_equals_unbatched_and_generic(tiny_lm, small_rows):
    model, tok = tiny_lm.model, tiny_lm.tok
    prompts, objects, _ = _pairs(tiny_lm)
    assert fast_parts(model) is not None and fast_parts(PassThrough(model)) is None
    assert {len(o) for o in objects} >= {1, 2, 3}  # single- and multi-token objects
    want_lp, want_acc = _unbatched(model, prompts, objects)
    for batch_size in (2, 256):  # 2: one 48-token row per forward; 256: every row in one forward
        lp, acc = object_scores(model, prompts, objects, tok.pad_token_id, batch_size=batch_size)
        assert (lp.exp() - want_lp.exp()).abs().max() <= 1e-5
        assert (lp - want_lp).abs().max() <= 1e-4  # log scale too: small probabilities must agree as well
        assert torch.equal(acc, want_acc)
    g_lp, g_acc = object_scores(PassThrough(model), prompts, objects, tok.pad_token_id, batch_size=7)
    assert (g_lp.exp() - want_lp.exp()).abs().max() <= 1e-5 and torch.equal(g_acc, want_acc)
    assert 0 < want_acc.mean() < 1 and want_lp.exp().max() > 0.3  # a trained model: the checks bite


def test_greedy_and_first_step_equal_one_by_one_and_generate(tiny_lm, small_rows):
    model, tok, n = tiny_lm.model, tiny_lm.tok, tiny_lm.max_new_tokens
    _, _, gen = _pairs(tiny_lm)
    fast, first = greedy_continuations(model, tok, gen, n, batch_size=2, first_logp=True)
    slow, g_first = greedy_continuations(PassThrough(model), tok, gen, n, batch_size=5, first_logp=True)
    assert fast == slow
    assert fast == tok.batch_decode(_greedy_one_by_one(model, gen, n, tok.eos_token_id), skip_special_tokens=True)
    assert (first.exp() - g_first.exp()).abs().max() <= 1e-5 and (first - g_first).abs().max() <= 1e-3
    assert len(set(fast)) > 5


def test_eos_stops_rows_at_different_steps(tiny_lm, small_rows):
    model, tok, n = tiny_lm.model, tiny_lm.tok, tiny_lm.max_new_tokens
    _, _, gen = _pairs(tiny_lm, n_cases=3)
    free = _greedy_one_by_one(model, gen, n, eos=-1)
    eos = free[0][1]  # the second token of the first continuation plays EOS: that row stops after 2 tokens
    want = _greedy_one_by_one(model, gen, n, eos)
    assert len(want[0]) == 2 and len({len(w) for w in want}) > 1  # rows finish at different steps
    proxy = EosAs(tok, eos)
    want_txt = proxy.batch_decode(want)
    assert greedy_continuations(model, proxy, gen, n, batch_size=3) == want_txt
    assert greedy_continuations(PassThrough(model), proxy, gen, n, batch_size=3) == want_txt
    # every row finishes early: the loop stops, and nothing after EOS is reported
    only = [p for p, w in zip(gen, want, strict=True) if len(w) < n]
    assert greedy_continuations(model, proxy, only, n) == proxy.batch_decode(_greedy_one_by_one(model, only, n, eos))


def test_score_and_decode_shares_one_pass(tiny_lm, small_rows):
    model, tok, n = tiny_lm.model, tiny_lm.tok, tiny_lm.max_new_tokens
    prompts, objects, gen = _pairs(tiny_lm)
    lp, acc, conts = score_and_decode(model, tok, prompts, objects, gen, n, batch_size=2)
    lp2, acc2 = object_scores(model, prompts, objects, tok.pad_token_id)
    assert (lp - lp2).abs().max() <= 1e-5 and torch.equal(acc, acc2)
    assert conts == greedy_continuations(PassThrough(model), tok, gen, n)


def _arch(name: str, vocab: int, attn: str) -> nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, **common)
    if name == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common))
    elif name == "llama":
        model = LlamaForCausalLM(LlamaConfig(**llama_like))
    elif name == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**llama_like))
    else:  # Mistral's default config has a 4096-token sliding window: longer than any probe, so fast
        model = MistralForCausalLM(MistralConfig(**llama_like))
    model.config._attn_implementation = attn
    return model.eval()


@pytest.mark.parametrize(("name", "attn"), [("mistral", "sdpa"), ("mistral", "eager"), ("llama", "sdpa"),
                                            ("qwen2", "sdpa"), ("gpt2", "sdpa"), ("gpt2", "eager")])
def test_architectures_fast_equals_generic(tiny_lm, small_rows, name, attn):
    tok = tiny_lm.tok
    model = _arch(name, len(tok), attn)
    assert fast_parts(model) is not None
    prompts, objects, gen = _pairs(tiny_lm, n_cases=3)
    lp, acc, conts = score_and_decode(model, tok, prompts, objects, gen, 4, batch_size=2)
    g_lp, g_acc, g_conts = score_and_decode(PassThrough(model), tok, prompts, objects, gen, 4)
    want_lp, _ = _unbatched(model, prompts, objects)
    assert (lp - want_lp).abs().max() <= 1e-4 and (g_lp - want_lp).abs().max() <= 1e-4  # random model: log scale
    assert torch.equal(acc, g_acc) and conts == g_conts


def test_sliding_window_shorter_than_the_probes_uses_the_models_own_mask(tiny_lm):
    tok = tiny_lm.tok
    model = _arch("mistral", len(tok), "sdpa")
    model.config.sliding_window = 4  # the window cuts every probe: a tree mask would lift it
    prompts, objects, _ = _pairs(tiny_lm, n_cases=2)
    want_lp, _ = _unbatched(model, prompts, objects)
    lp, _ = object_scores(model, prompts, objects, tok.pad_token_id)
    assert (lp - want_lp).abs().max() <= 1e-4
    model.config.sliding_window = None
    no_window, _ = _unbatched(model, prompts, objects)
    assert (no_window - want_lp).abs().max() > 1e-3  # the window matters, so the check bites


def test_peft_lora_model_takes_the_fast_path_with_its_adapters(tiny_lm, small_rows):
    from peft import LoraConfig, get_peft_model

    tok = tiny_lm.tok
    model = get_peft_model(_arch("mistral", len(tok), "sdpa"), LoraConfig(r=4, target_modules=["down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a trained adapter (B starts at zero, which would change nothing)
    model.eval()
    assert fast_parts(model) is not None
    prompts, objects, gen = _pairs(tiny_lm, n_cases=2)
    lp, _, conts = score_and_decode(model, tok, prompts, objects, gen, 4, batch_size=2)
    g_lp, _, g_conts = score_and_decode(PassThrough(model), tok, prompts, objects, gen, 4)
    assert (lp - g_lp).abs().max() <= 1e-4 and conts == g_conts
    with model.disable_adapter():
        base_lp, _ = object_scores(model, prompts, objects, tok.pad_token_id)
    assert (base_lp - lp).abs().max() > 1e-2  # the adapters matter, so the check bites
