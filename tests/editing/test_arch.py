"""Architecture adapters: chosen from the config class, roles resolve per architecture, orientation known."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from editlab.editing.weights import linear_weight, module_names, num_layers
from editlab.errors import EditlabError
from editlab.lm.arch import ADAPTERS, adapter_for


def _gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2, n_positions=32))


def _llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_roles_resolve_per_architecture():
    g, ll = _gpt2(), _llama()
    assert num_layers(g) == 3 and num_layers(ll) == 2
    assert module_names(g, ["mlp_out"], [-1]) == ["transformer.h.2.mlp.c_proj"]
    assert module_names(ll, ["mlp_in"], [0]) == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    assert module_names(ll, ["model.layers.{}.self_attn.o_proj"], [1]) == ["model.layers.1.self_attn.o_proj"]
    for model in (g, ll):  # every path of the adapter exists in the model
        a, mods = adapter_for(model), dict(model.named_modules())
        for role in a.ROLES:
            assert all(n in mods for n in module_names(model, [role], None))
        assert {a.final_norm, a.embed, a.lm_head, a.blocks} <= set(mods)
    with pytest.raises(EditlabError, match="unknown module role"):
        module_names(ll, ["mlp_down"], None)


def test_adapter_comes_from_the_config_class_not_the_name():
    class RenamedLlama(LlamaConfig):  # a subclass with a misleading name still gets the Llama adapter
        model_type = "gpt2_distilled"

    model = _llama()
    model.config = RenamedLlama(**model.config.to_dict())
    assert adapter_for(model) is ADAPTERS[LlamaConfig]
    assert adapter_for(_gpt2()).conv1d and not adapter_for(model).conv1d
    assert ADAPTERS[MistralConfig].mlp_out == "mlp.down_proj"


def test_unknown_architecture_names_the_fields_to_add():
    class OddConfig(PretrainedConfig):
        model_type = "llama"  # the name says llama; the class is not one

    model = torch.nn.Linear(2, 2)
    model.config = OddConfig()
    with pytest.raises(EditlabError) as err:
        adapter_for(model)
    msg = str(err.value)
    assert "OddConfig" in msg and "ADAPTERS" in msg and "mlp_out" in msg and "conv1d" in msg and "\n" not in msg


def test_conv1d_weight_is_seen_as_d_out_by_d_in():
    g = _gpt2()
    (name,) = module_names(g, ["mlp_out"], [0])
    conv = g.get_submodule(name)
    assert isinstance(conv, Conv1D)
    w = linear_weight(conv)
    x = torch.randn(4, 64)  # c_proj: d_in = 4 * n_embd = 64, d_out = 16
    assert w.shape == (16, 64)
    torch.testing.assert_close(conv(x), x @ w.T + conv.bias)
