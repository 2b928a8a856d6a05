"""world.md section 8, bug 6: weight decay must not apply to every parameter."""

from __future__ import annotations

import torch
from transformers import MistralConfig, MistralForCausalLM

from editlab.lm.optim import param_groups


def _tiny() -> MistralForCausalLM:
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    return MistralForCausalLM(cfg)


def test_bug6_norms_are_exempt_and_matrices_decay():
    model = _tiny()
    decay, no_decay = param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert no_decay_names, "the no-decay group must not be empty"
    assert all("norm" in n for n in no_decay_names)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= decay_names
    assert not any("norm" in n for n in decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_bug6_adamw_step_with_zero_grad_leaves_norms_untouched():
    model = _tiny()
    opt = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if "norm" in n:
            assert torch.equal(p, before[n]), n  # no decay on norm weights
        else:
            assert torch.allclose(p, before[n] * (1 - 0.1 * 0.5)), n  # decoupled decay on matrices
