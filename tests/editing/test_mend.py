"""MEND (editing/methods/mend.py) and its hypernetwork blocks (editing/hyper/).

What "identity at initialisation" means here, precisely (Mitchell et al. 2022, Sec. 3.1): every residual
low-rank block starts with ``U = 0``, zero bias and shift, unit scale, so the editor network returns its
input exactly, for every layer mode; the running normaliser is the identity until it has seen data.
So the untrained editor's first edit of layer ``l`` is ``W' = W - alpha_l * sum_i delta_i u_i^T``, i.e.
the base weights minus ``alpha_l`` times the plain gradient of the edit loss (checked against autograd,
for Mistral's ``nn.Linear`` and GPT-2's ``Conv1D``), and with ``alpha = 0`` the edited weights equal the
base weights bit for bit. A trained normaliser makes it the normalised-factor update of the paper. That
meta-training raises held-out edit success is tests/editing/test_meta_training.py.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.hyper.factors import record_factors
from editlab.editing.hyper.mlp import BLOCKS, EditorMLP
from editlab.editing.hyper.norm import RunningNorm
from editlab.editing.loss import target_batch, target_nll
from editlab.editing.methods.mend import MendTrainer, edited_weights
from editlab.editing.trainable import EDITOR_INFO, EditorTraining, MetaDataModule, save_editor
from editlab.editing.weights import get_module, linear_weight, weight_param_name
from editlab.errors import EditlabError
from editlab.lm.presets import Arch, build_model
from editlab.runs.train_editor import fit_editor
from editlab.vocab import PromptEncoder


def _tok(world):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(world.dir)


def _random(kind: str, tok) -> torch.nn.Module:
    """A small random model of ``kind`` (mistral: nn.Linear; gpt2: Conv1D weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "gpt2":
            cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_inner=64, n_layer=3, n_head=4, n_positions=128,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            return GPT2LMHeadModel(cfg).eval()
        arch = Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2)
        return build_model(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id).eval()


@pytest.mark.parametrize("block", BLOCKS)
def test_editor_network_and_normaliser_are_the_identity_at_initialisation(block):
    torch.manual_seed(0)
    net = EditorMLP(dim=40, rank=8, n_modes=3, n_hidden=1, block=block)
    z = torch.randn(17, 40)
    for mode in range(3):
        assert torch.equal(net(z, mode), z)
    norm = RunningNorm(40).eval()
    assert torch.equal(norm(z), z)  # eval mode, nothing seen yet


def test_running_norm_matches_the_batch_statistics():
    torch.manual_seed(0)
    norm = RunningNorm(5).train()
    parts = [torch.randn(n, 5) * 3 + 2 for n in (1, 7, 30)]
    for p in parts:
        norm(p)
    allx = torch.cat(parts).double()
    assert float(norm.count) == 38
    assert torch.allclose(norm.mean, allx.mean(0)) and torch.allclose(norm.std(), allx.std(0))
    norm.eval()
    x = torch.randn(4, 5)
    assert torch.allclose(norm(x), ((x.double() - allx.mean(0)) / (allx.std(0) + 1e-7)).float(), atol=1e-6)
    assert float(norm.count) == 38  # frozen outside training


@pytest.mark.parametrize(("kind", "reduction"), [("mistral", "mean"), ("gpt2", "mean"), ("mistral", "sum")])
def test_untrained_edit_is_the_plain_gradient_step(kind, reduction, tiny_world):
    """Hooks give sum_i delta_i u_i^T == dL/dW, and the untrained editor's edited weights are W - alpha * dL/dW,
    with L the sum over requests of each one's target NLL under the method's ``loss_reduction``."""
    tok = _tok(tiny_world)
    model = _random(kind, tok)
    method = registry.get_method("mend", {"rank": 8, "alpha_init": 0.3, "loss_reduction": reduction})
    names = method.module_names(model)
    assert len(names) == (9 if kind == "mistral" else 6)  # gate+up+down / c_fc+c_proj of the last 3 blocks
    reqs = [EditRequest.from_case(c) for c in tiny_world.cases[:2]]
    batch = target_batch(PromptEncoder(tok), reqs)
    weights = [get_module(model, n).weight for n in names]
    with torch.enable_grad():
        model.requires_grad_(True)
        grads = torch.autograd.grad(target_nll(model, batch, reduction=reduction) * len(reqs), weights)
    editor = method.build_editor(model).eval()
    factors = record_factors(model, names, batch, reduction)
    for row in (None, 0):
        new = edited_weights(editor, model, names, factors, row)
        if row is not None:  # one request's own gradient
            with torch.enable_grad():
                one = target_batch(PromptEncoder(tok), reqs[:1])
                grads = torch.autograd.grad(target_nll(model, one, reduction=reduction), weights)
        for name, w, g in zip(names, weights, grads, strict=True):
            assert torch.allclose(new[weight_param_name(name)], w - 0.3 * g, atol=1e-6, rtol=1e-4), name
    editor.alpha.data.zero_()
    zero = edited_weights(editor, model, names, factors, None)
    assert all(torch.equal(zero[weight_param_name(n)], w) for n, w in zip(names, weights, strict=True))


def test_gpt2_meta_trains_saves_loads_and_edits(tiny_world, tmp_path):
    tok = _tok(tiny_world)
    model = _random("gpt2", tok)
    hp = {"rank": 8, "alpha_init": 1e-2, "lr": 1e-3, "lr_alpha": 1e-3}
    method = registry.get_method("mend", hp)
    training = EditorTraining(max_steps=3, batch_size=4, val_fraction=0.2, val_every=3)
    state, metrics = fit_editor(method, copy.deepcopy(model), tok, tiny_world.meta_cases[:40], training, seed=0)
    assert metrics["steps"] == 3 and {"train/loss", "val/edit_success", "val/locality"} <= set(metrics)
    out = save_editor(tmp_path / "ed", method, state, "gpt2-test", {}, metrics)
    ctx = EditContext(tokenizer=tok, model_id="gpt2-test", editor_path=out)
    edits = [registry.get_method("mend", hp) for _ in range(2)]
    for m in edits:
        m.prepare(model, ctx)
    assert all(torch.equal(v, edits[1].editor.state_dict()[k]) for k, v in edits[0].editor.state_dict().items())
    assert all(torch.equal(v, state[k]) for k, v in edits[0].editor.state_dict().items())
    req = EditRequest.from_case(tiny_world.cases[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = edits[0].apply(model, [req], ctx)
    assert handle.info["loss_final"] < handle.info["loss_initial"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {weight_param_name(n) for n in edits[0].module_names(model)}
    after_first = {k: v.clone() for k, v in model.state_dict().items()}
    handle.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    edits[1].apply(model, [req], ctx)  # the reloaded editor edits identically
    assert all(torch.equal(v, after_first[k]) for k, v in model.state_dict().items())


def test_mend_refuses_without_editor_or_for_other_layers(tiny_world, tmp_path):
    tok = _tok(tiny_world)
    model = _random("mistral", tok)
    method = registry.get_method("mend", {"rank": 8})
    with pytest.raises(EditlabError, match="needs a trained editor"):
        method.prepare(model, EditContext(tokenizer=tok, model_id="m"))
    with pytest.raises(EditlabError, match="no trained editor"):
        method.apply(model, [EditRequest.from_case(tiny_world.cases[0])], EditContext(tokenizer=tok))
    state = {k: v for k, v in method.build_editor(model).state_dict().items()}
    out = save_editor(tmp_path / "ed", method, state, "m", {}, {})
    other = registry.get_method("mend", {"rank": 8, "layers": [-1]})
    with pytest.raises(EditlabError, match="does not fit this model's layers"):
        other.prepare(model, EditContext(tokenizer=tok, model_id="m", editor_path=out))
    with pytest.raises(EditlabError, match="rank >= 1"):
        registry.get_method("mend", {"rank": 0})


def test_an_editor_meta_trained_with_another_block_or_loss_reduction_is_refused(tiny_world, tmp_path):
    tok = _tok(tiny_world)
    model = _random("mistral", tok)
    tuned = {"rank": 8, "block": "bottleneck_relu", "loss_reduction": "sum"}
    method = registry.get_method("mend", tuned)
    out = save_editor(tmp_path / "ed", method, method.build_editor(model).state_dict(), "m", {}, {})
    ctx = EditContext(tokenizer=tok, model_id="m", editor_path=out)
    registry.get_method("mend", tuned).prepare(model, ctx)
    with pytest.raises(EditlabError, match=r"meta-trained with block=bottleneck_relu.*method\.hparams\.block="):
        registry.get_method("mend", {"rank": 8}).prepare(model, ctx)  # the reference block would not even load
    # an editor.json written before these options: what every editor was meta-trained with then
    info = json.loads((out / EDITOR_INFO).read_text())
    del info["hparams"]["block"], info["hparams"]["loss_reduction"]
    (out / EDITOR_INFO).write_text(json.dumps(info))
    registry.get_method("mend", tuned).prepare(model, ctx)
    with pytest.raises(EditlabError, match="loss_reduction=sum"):
        registry.get_method("mend", {**tuned, "loss_reduction": "mean"}).prepare(model, ctx)


def test_meta_training_step_leaves_the_base_model_untouched(tiny_world):
    tok = _tok(tiny_world)
    model = _random("mistral", tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = MendTrainer(registry.get_method("mend", {"rank": 8, "alpha_init": 1e-2}), model, tok)
    dm = MetaDataModule(tiny_world.meta_cases[:40], 4, 0.2, 0)
    module.train()
    loss = module.meta_loss(next(iter(dm.train_dataloader())))[0]
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert module.editor.alpha.grad is not None and module.editor.nets["64x32"].blocks[0].u.grad.abs().sum() > 0
    assert linear_weight(get_module(model, module.modules_[0])).shape == (64, 32)
