"""The batched scoring core against unbatched computation and hand cases."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from editlab.eval.scoring import encode_pairs, greedy_continuations, object_logprobs
from editlab.lm.presets import Arch, build_model
from editlab.vocab import hit_exact, hit_paper


def _model(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2), vocab_size=vocab).eval()


def _pairs(tiny_world, n: int = 23):
    tok = PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))
    probes = [p for c in tiny_world.cases[:20] for p in c["probes"] if "object" in p][:n]
    prompts, objects = encode_pairs(tok, [p["prompt"] for p in probes], [p["object"] for p in probes])
    return tok, prompts, objects


def test_object_logprobs_equal_unbatched_sums(tiny_world):
    tok, prompts, objects = _pairs(tiny_world)
    assert all(p[0] == tok.bos_token_id for p in prompts)
    model = _model(len(tok))
    batched = object_logprobs(model, prompts, objects, tok.pad_token_id, batch_size=5)  # padding + sorting
    for i, (p, o) in enumerate(zip(prompts, objects, strict=True)):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + o])).logits[0].double(), -1)
        want = sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(o))
        assert abs(batched[i].item() - want) < 1e-4, i


def test_greedy_batched_equals_one_by_one(tiny_world):
    tok, prompts, _ = _pairs(tiny_world, n=9)
    model = _model(len(tok))
    batched = greedy_continuations(model, tok, prompts, max_new_tokens=4, batch_size=4)
    for i, p in enumerate(prompts):
        ids = torch.tensor([p])
        with torch.no_grad():
            for _ in range(4):
                nxt = model(ids).logits[0, -1].argmax()
                if nxt.item() == tok.eos_token_id:
                    break
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        assert batched[i] == tok.decode(ids[0, len(p) :], skip_special_tokens=True), i


def test_hit_rules():
    assert hit_paper(" Port Vamo. Rest", "port vamo") and hit_paper(" St. Ives College", "St Ives College")
    assert not hit_paper(" Port Vam", "Port Vamo")
    assert hit_exact(" Port Vamo. Kela", "Port Vamo") and hit_exact(' Port Vamo" is', "Port Vamo")
    assert not hit_exact(" Port Vamora", "Port Vamo") and not hit_exact(" the Port Vamo", "Port Vamo")
