"""MALMEN (editing/methods/malmen.py) and its ridge aggregation (editing/hyper/ridge.py).

- the closed-form backward of the ridge solve equals autograd through ``torch.linalg.solve`` (and passes
  ``gradcheck`` in float64);
- the whole split backward pass (dL/dS* chunk by chunk, then through the closed form into the recomputed
  hypernetwork chunk by chunk) gives the same editor gradients as one autograd graph over everything;
- identity at initialisation: the untrained network passes the factors through, so the shift is the ridge
  regression of ``-alpha ||u||^2 delta`` on the keys (checked against an independent least-squares solve),
  and ``alpha = 0`` leaves the weights bit for bit;
- peak memory of a meta-training step stays flat from 10 to many edits (CPU allocator, torch profiler);
- save/load, a meta-training run, bad input.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import PreTrainedTokenizerFast

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.hyper.factors import record_keys
from editlab.editing.hyper.meta_loss import meta_losses, without_edited_facts
from editlab.editing.hyper.ridge import ridge_solve
from editlab.editing.loss import target_batch
from editlab.editing.meta_data import MetaBatch, MetaDataOptions, meta_examples
from editlab.editing.methods.malmen import MalmenTrainer
from editlab.editing.trainable import EditorTraining, read_editor, save_editor
from editlab.editing.weights import get_module, is_transposed, linear_weight, weight_param_name
from editlab.errors import EditlabError
from editlab.lm.presets import Arch, build_model
from editlab.runs.train_editor import fit_editor
from editlab.vocab import PromptEncoder

HP = {"rank": 8, "layers": [-2, -1], "alpha_init": 1.0e-2, "lm_batch": 3, "net_batch": 5}


def _tok(world):
    return PreTrainedTokenizerFast.from_pretrained(world.dir)


def _model(tok, layers: int = 3) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        arch = Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                    num_key_value_heads=2)
        return build_model(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id).eval()


class _Ridge(torch.autograd.Function):
    """``S*(D, log_lambda)`` with MALMEN's closed-form backward (RidgeSolution.backward), for gradcheck."""

    @staticmethod
    def forward(ctx, d, log_lambda, keys):
        sol = ridge_solve(keys.T @ keys, keys.T @ d, log_lambda)
        ctx.sol, ctx.keys = sol, keys
        return sol.shift

    @staticmethod
    def backward(ctx, grad):
        m, g_lam = ctx.sol.backward(grad)
        return ctx.keys @ m, g_lam.reshape(()), None


def test_closed_form_backward_matches_autograd_through_solve():
    torch.manual_seed(0)
    keys = torch.randn(7, 4, dtype=torch.float64)
    d = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Ridge.apply, (d, lam, keys))
    g = torch.randn(4, 3, dtype=torch.float64)
    a = keys.T @ keys + lam.exp() * torch.eye(4, dtype=torch.float64)
    ref = torch.linalg.solve(a, keys.T @ d)
    ref_d, ref_lam = torch.autograd.grad((ref * g).sum(), (d, lam))
    sol = ridge_solve(keys.T @ keys, keys.T @ d.detach(), lam)
    assert torch.allclose(sol.shift, ref.detach(), rtol=1e-10, atol=1e-12)
    m, g_lam = sol.backward(g)
    assert torch.allclose(keys @ m, ref_d, rtol=1e-9, atol=1e-12)
    assert torch.allclose(g_lam, ref_lam, rtol=1e-9, atol=1e-12)


def test_split_backward_matches_one_autograd_graph(tiny_world):
    """Editor gradients of the split pass (chunks of 3 examples / 5 token rows) == autograd through everything."""
    tok = _tok(tiny_world)
    model = _model(tok)
    method = registry.get_method("malmen", HP)
    module = MalmenTrainer(method, model, tok)
    with torch.no_grad():  # a non-trivial network, not the identity
        for p in module.editor.nets.parameters():
            p.add_(0.05 * torch.randn_like(p))
    naive = copy.deepcopy(module.editor)
    examples = meta_examples(tiny_world.meta_cases[:40], MetaDataOptions(2), 0)[:7]
    module.train()
    loss, _ = module.meta_step(MetaBatch(examples), backward=True)
    split = {n: p.grad.clone() for n, p in module.editor.named_parameters()}

    names = module.modules_
    batch = target_batch(PromptEncoder(tok), [ex.request for ex in examples])
    keys, grads = record_keys(model, names, batch, chunk=100, reduction=method.loss_reduction)
    params = {}
    for i, n in enumerate(names):  # layers of one shape share their statistics: all rows first, as aggregate()
        naive.observe(i, keys[n], grads[n])
    for i, n in enumerate(names):
        k = keys[n].double()
        d = naive.value_shifts(i, keys[n], grads[n]).double()
        a = k.T @ k + naive.log_lambda[i].double().exp() * torch.eye(k.shape[1], dtype=torch.float64)
        s = torch.linalg.solve(a, k.T @ d).T.float()
        w = get_module(model, n).weight
        params[weight_param_name(n)] = w + (s.T if is_transposed(get_module(model, n)) else s)
    losses, _ = meta_losses(model, params, PromptEncoder(tok), without_edited_facts(examples), method.c_edit,
                            method.c_loc, "cpu", method.loss_reduction)
    ref_loss = torch.stack(losses).mean()
    ref_loss.backward()
    assert loss == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    for n, p in naive.named_parameters():
        assert p.grad is not None and split[n] is not None, n
        scale = float(p.grad.abs().max())
        assert torch.allclose(split[n], p.grad, rtol=1e-3, atol=1e-4 * scale + 1e-12), n
    assert float(split["log_lambda"].abs().sum()) > 0 and float(split["alpha"].abs().sum()) > 0


def test_last_prompt_keys_are_one_row_per_edit_the_first_answer_row(tiny_world):
    """``key_tokens=last_prompt``: one key per edit, the answer rows' first (the position predicting the object's
    first token), with the same value gradient; an unknown choice is refused."""
    tok = _tok(tiny_world)
    model = _model(tok)
    reqs = [EditRequest.from_case(c) for c in tiny_world.cases[:6]]
    batch = target_batch(PromptEncoder(tok), reqs)
    names = registry.get_method("malmen", HP).module_names(model)
    keys, grads = record_keys(model, names, batch, chunk=4)
    last_k, last_g = record_keys(model, names, batch, chunk=4, key_tokens="last_prompt")
    n_tok = batch.target.sum(1)
    assert int(n_tok.min()) >= 1 and int(n_tok.max()) > 1  # several answer rows for some edits
    first = torch.cat([torch.zeros(1, dtype=torch.long), n_tok.cumsum(0)[:-1]])  # each edit's first answer row
    for n in names:
        assert keys[n].shape[0] == int(n_tok.sum()) and last_k[n].shape[0] == len(reqs)
        assert torch.equal(last_k[n], keys[n][first]) and torch.equal(last_g[n], grads[n][first])
    with pytest.raises(EditlabError, match="key_tokens"):
        registry.get_method("malmen", {**HP, "key_tokens": "subject"})


def test_untrained_shift_is_the_ridge_regression_of_scaled_gradients(tiny_world):
    """Identity network and normaliser: the shift solves min ||K S + alpha diag(|u|^2) Delta||^2 + lambda ||S||^2
    (checked with torch.linalg.lstsq on the augmented system), and alpha = 0 leaves the weights bit for bit."""
    tok = _tok(tiny_world)
    model = _model(tok)
    method = registry.get_method("malmen", HP)
    method.editor = method.build_editor(model).eval()
    z = torch.randn(5, 32 + 64)
    assert torch.equal(method.editor.nets["32x64"](z, 0), z)
    reqs = [EditRequest.from_case(c) for c in tiny_world.cases[:6]]
    names = method.module_names(model)
    keys, grads = record_keys(model, names, target_batch(PromptEncoder(tok), reqs), chunk=2,
                              reduction=method.loss_reduction)
    before = {n: linear_weight(get_module(model, n)).clone() for n in names}
    handle = method.apply(model, reqs, EditContext(tokenizer=tok))
    for n in names:
        k, d = keys[n].double(), -HP["alpha_init"] * (keys[n].double() ** 2).sum(-1, keepdim=True) * grads[n].double()
        aug_k = torch.cat([k, torch.eye(k.shape[1], dtype=torch.float64)])  # lambda = exp(0) = 1
        aug_d = torch.cat([d, torch.zeros(k.shape[1], d.shape[1], dtype=torch.float64)])
        ref = torch.linalg.lstsq(aug_k, aug_d).solution.T.float()
        assert torch.allclose(linear_weight(get_module(model, n)) - before[n], ref, atol=1e-6, rtol=1e-4), n
    assert handle.info["loss_final"] < handle.info["loss_initial"]
    handle.restore()
    method.editor.alpha.data.zero_()
    method.apply(model, reqs, EditContext(tokenizer=tok))
    assert all(torch.equal(linear_weight(get_module(model, n)), before[n]) for n in names)


def _peak_bytes(fn) -> int:
    """Peak CPU-allocator bytes allocated by ``fn()`` above what was allocated when it started."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    total = peak = 0
    mem = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for e in sorted(mem, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak


def _memory_profile(tiny_world, sizes: tuple[int, ...]) -> tuple[dict[int, int], dict[int, int], int]:
    tok = _tok(tiny_world)
    model = _model(tok, layers=2)
    pool = meta_examples(tiny_world.meta_cases, MetaDataOptions(1), 0)
    examples = list(itertools.islice(itertools.cycle(pool), max(sizes)))  # the tiny world has 800 meta cases
    hp = {**HP, "lm_batch": 8, "net_batch": 64}
    module = MalmenTrainer(registry.get_method("malmen", hp), model, tok).train()
    names = module.modules_
    peaks, cache = {}, {}
    for n in sizes:
        batch = MetaBatch(examples[:n])
        module.editor.zero_grad()
        peaks[n] = _peak_bytes(lambda b=batch: module.meta_step(b, backward=True))
        keys, grads = record_keys(model, names, target_batch(module.enc, [ex.request for ex in batch]), 8)
        cache[n] = sum(4 * (keys[x].numel() + grads[x].numel()) for x in names)  # the recorded token rows
    # the same step with one LM chunk for all edits (no split): the measure must see its graph grow
    one = MalmenTrainer(registry.get_method("malmen", {**hp, "lm_batch": 40}), model, tok).train()
    whole = _peak_bytes(lambda: one.meta_step(MetaBatch(examples[:40]), backward=True))
    return peaks, cache, whole


def _check_flat(peaks: dict[int, int], cache: dict[int, int], whole: int) -> None:
    small = min(peaks)
    print({n: f"{p / 2**20:.1f} MiB (rows {cache[n] / 2**20:.2f} MiB)" for n, p in peaks.items()},
          f"one 40-edit LM chunk: {whole / 2**20:.1f} MiB")
    for n, p in peaks.items():
        # beyond the recorded rows (kept, concatenated once), nothing grows with the number of edits
        assert p <= peaks[small] + 3 * cache[n] + 2**20, (n, p, peaks[small], cache[n])
    assert whole > 2 * peaks[small]  # an unsplit pass over 40 edits already costs more than the split one over all


def test_peak_memory_is_flat_in_the_number_of_edits(tiny_world):
    """Meta-training step (the split backward included), 10 vs 250 edits: the peak grows only by the recorded
    token rows (slow variant, measured: 15.4 MiB at 10 edits, 16.5 at 100, 13.9 at 1000 with 1.8 MiB of rows;
    one unsplit LM pass over 40 edits: 80.4 MiB)."""
    _check_flat(*_memory_profile(tiny_world, (10, 250)))


@pytest.mark.slow
def test_peak_memory_is_flat_up_to_1000_edits(tiny_world):
    _check_flat(*_memory_profile(tiny_world, (10, 100, 1000)))


def test_meta_trains_saves_loads_and_edits_gpt2(tiny_world, tmp_path):
    """A random GPT-2 (Conv1D weights) meta-trains, saves, loads and batch-edits; the reloaded editor edits
    identically; restore is bit-exact."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tok(tiny_world)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_inner=64, n_layer=3, n_head=4,
                                           n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id)).eval()
    hp = {**HP, "lr": 1.0e-3, "lr_alpha": 1.0e-3}
    method = registry.get_method("malmen", hp)
    training = EditorTraining(max_steps=3, batch_size=8, val_fraction=0.2, val_every=3)
    state, metrics = fit_editor(method, copy.deepcopy(model), tok, tiny_world.meta_cases[:60], training, seed=0)
    assert metrics["steps"] == 3 and {"train/loss", "val/edit_success", "val/locality"} <= set(metrics)
    assert "log_lambda" in state and float((state["log_lambda"] - hp.get("log_lambda_init", 0.0)).abs().sum()) > 0
    out = save_editor(tmp_path / "ed", method, state, "gpt2-test", {}, metrics)
    ctx = EditContext(tokenizer=tok, model_id="gpt2-test", editor_path=out)
    edits = [registry.get_method("malmen", hp) for _ in range(2)]
    for m in edits:
        m.prepare(model, ctx)
    assert all(torch.equal(v, state[k]) for k, v in edits[0].editor.state_dict().items())
    reqs = [EditRequest.from_case(c) for c in tiny_world.cases[:5]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = edits[0].apply(model, reqs, ctx)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {weight_param_name(n) for n in edits[0].module_names(model)}
    after = {k: v.clone() for k, v in model.state_dict().items()}
    handle.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    edits[1].apply(model, reqs, ctx)
    assert all(torch.equal(v, after[k]) for k, v in model.state_dict().items())


def test_bad_input_is_one_clear_error(tiny_world, tmp_path):
    tok = _tok(tiny_world)
    model = _model(tok)
    method = registry.get_method("malmen", HP)
    with pytest.raises(EditlabError, match="needs a trained editor"):
        method.prepare(model, EditContext(tokenizer=tok, model_id="m"))
    with pytest.raises(EditlabError, match="no trained editor"):
        method.apply(model, [EditRequest.from_case(tiny_world.cases[0])], EditContext(tokenizer=tok))
    out = save_editor(tmp_path / "ed", method, dict(method.build_editor(model).state_dict()), "model-a", {}, {})
    with pytest.raises(EditlabError, match="trained on model model-a, but this run edits model model-b") as exc:
        method.prepare(model, EditContext(tokenizer=tok, model_id="model-b", editor_path=out))
    assert "\n" not in str(exc.value)
    with pytest.raises(EditlabError, match="trained for method malmen, not mend"):
        read_editor(out, "mend", "model-a")
    other = registry.get_method("malmen", {**HP, "layers": [-1]})
    with pytest.raises(EditlabError, match="does not fit this model's layers"):
        other.prepare(model, EditContext(tokenizer=tok, model_id="model-a", editor_path=out))
    training = EditorTraining(max_steps=1, batch_size=64, val_fraction=0.2, val_every=1)
    with pytest.raises(EditlabError, match=r"fewer than editor\.batch_size=64") as exc:
        fit_editor(method, model, tok, tiny_world.meta_cases[:40], training, seed=0)
    assert "\n" not in str(exc.value)
    with pytest.raises(EditlabError, match="lm_batch >= 1"):
        registry.get_method("malmen", {"lm_batch": 0})


def test_batch_drops_locality_facts_it_edits(tiny_world):
    """A locality fact that another edit of the same batch changes is no locality fact of that batch."""
    examples = meta_examples(tiny_world.meta_cases[:60], MetaDataOptions(4), 0)
    edited = {ex.request.prompt for ex in examples}
    clashing = sum(t.prompt in edited for ex in examples for t in ex.locality)
    kept = without_edited_facts(examples)
    assert clashing > 0  # the meta split has few facts per subject: a batch of 60 meets its own edits
    assert all(t.prompt not in edited for ex in kept for t in ex.locality)
    assert sum(len(ex.locality) for ex in kept) == sum(len(ex.locality) for ex in examples) - clashing
    assert [ex.request for ex in kept] == [ex.request for ex in examples]
