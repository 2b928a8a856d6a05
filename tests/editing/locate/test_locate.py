"""The locate-then-edit core and ROME / MEMIT / AlphaEdit (methods.md, "Locate-then-edit").

On the tests' fixture model (tests/conftest.py ``tiny_lm``) with small statistics (5k tokens):

- ROME's update has rank one and maps the template-averaged key k* to v* = W k* + delta;
- MEMIT with one edit and one layer equals the ROME-style closed form r (C^-1 k)^T / (lambda + k^T C^-1 k);
- AlphaEdit leaves the module's output unchanged for keys in the preserved space (P k0 = 0), to float
  precision, and keeps the keys of committed (not restored) edits as state;
- the fast target optimisation (only the tails above the edited module, :class:`TailPass`) gives the plain
  full-pass target vectors, keys and outputs to float precision, on Mistral, GPT-2 and Llama;
- the key pass (cut after the read position, stopped after the last read module) reads what the full
  forward pass reads, and never runs the output head;
- cached statistics give bit-identical edits (and are not recomputed); a corrupt or singular cache,
  a layer outside the model, a missing subject and a non-finite target give one clear error and leave
  the weights untouched; inside a sequential stream a failed edit is recorded and the stream goes on.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from editlab.editing import registry
from editlab.editing.base import EditContext, EditFailed, EditRequest
from editlab.editing.locate import passes, stats, targets
from editlab.editing.locate.hooks import read_at
from editlab.editing.locate.keys import average_io, rows_io
from editlab.editing.locate.passes import TailPass, frozen_blocks, tail_groups
from editlab.editing.locate.prefixes import corpus_prefixes
from editlab.editing.locate.rows import build_rows
from editlab.editing.locate.solve import alphaedit_update, memit_system, memit_update, null_space_projector
from editlab.editing.locate.targets import TargetSpec, optimise_targets
from editlab.editing.weights import get_module, linear_weight
from editlab.errors import EditlabError
from tests.editing.fixture_hparams import fixture_hparams

N_TOK = 5000


def _method(name: str, **kw):
    return registry.get_method(name, {**fixture_hparams(name), "stats_tokens": N_TOK, **kw})


@pytest.fixture
def setup(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    ctx = EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_lm.world.dir, model_id="")
    req = EditRequest.from_case(tiny_lm.world.cases[0])
    return model, ctx, req


def _weight(model, name: str) -> torch.Tensor:
    return linear_weight(get_module(model, name)).detach().clone()


def test_prefixes_are_deterministic_nonempty_and_counted_in_tokens(tiny_lm):
    tok, wd = tiny_lm.tok, tiny_lm.world.dir
    got = corpus_prefixes(tok, wd, [[5, 3], [10, 2]])
    assert got == corpus_prefixes(tok, wd, [[5, 3], [10, 2]]) and len(got) == 5
    assert all(p.strip(". ") for p in got)
    lens = [len(tok(p.rstrip("."), add_special_tokens=False)["input_ids"]) for p in got]
    assert all(n <= 6 for n in lens[:3]) and all(n >= 6 for n in lens[3:])  # decoded 5 vs 10 corpus tokens


def test_rome_update_is_rank_one_and_maps_the_averaged_key_to_the_target(setup):
    model, ctx, req = setup
    m = _method("rome")
    m.prepare(model, ctx)
    (name,) = m._names
    w0 = _weight(model, name)
    # the kernel's own key and delta on the unedited model (the edit is deterministic: the method sees the same)
    tgt = optimise_targets(model, get_module(model, name), ctx.tokenizer, [req], m._templates, m.spec)
    handle = m.apply(model, [req], ctx)
    delta_w = (_weight(model, name) - w0).double()
    s = torch.linalg.svdvals(delta_w)
    assert s[0] > 0 and s[1] / s[0] < 1e-5  # rank one (up to fp32 storage of the weight)
    k = tgt.key[0].double()
    v_star = w0.double() @ k + tgt.delta[0].double()  # v* = W k* + delta
    assert torch.allclose(_weight(model, name).double() @ k, v_star, rtol=1e-4, atol=1e-4 * float(v_star.norm()))
    # the same averaged key in every term: the key read after the edit (same layer input) is k*
    (k_after, _), = average_io(model, [get_module(model, name)], ctx.tokenizer, [req], m._templates, m.fact_token)
    assert torch.allclose(k_after[0], tgt.key[0], atol=1e-5)
    handle.restore()
    assert torch.equal(_weight(model, name), w0)


def test_memit_one_edit_one_layer_is_the_rome_closed_form(setup):
    model, ctx, req = setup
    lam = 50.0
    m = _method("memit", layers=[1], mom2_update_weight=lam)
    m.prepare(model, ctx)
    (name,) = m._names
    w0 = _weight(model, name).double()
    block = m.block(model, 1)
    tgt = optimise_targets(model, block, ctx.tokenizer, [req], m._templates, m.spec)
    (k, _), = average_io(model, [get_module(model, name)], ctx.tokenizer, [req], m._templates, m.fact_token,
                         groups=m._groups)  # MEMIT's key: the mean of the template groups' means
    assert m.key_average == "groups" and m._groups == [0, 1, 1]
    m.apply(model, [req], ctx)
    cov, k, r = m._cov[name], k[0].double(), tgt.delta[0].double()
    u = torch.linalg.solve(cov, k)  # C^-1 k
    expected = r[:, None] * u[None, :] / (lam + u @ k)  # Sherman-Morrison of (lam C + k k^T)^-1
    got = _weight(model, name).double() - w0
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


def _random_arch(kind: str, tok) -> torch.nn.Module:
    """An untrained GPT-2 (Conv1D) or Llama of the fixture's width (the equality below needs no training)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "gpt2":
            return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_inner=64, n_layer=3, n_head=2,
                                              n_positions=128, tie_word_embeddings=False, **ids)).eval()
        return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
                                            max_position_embeddings=128, **ids)).eval()


@pytest.mark.parametrize("kind", ["mistral", "gpt2", "llama"])
def test_fast_target_optimisation_equals_the_full_pass(tiny_lm, kind, monkeypatch):
    """TailPass (prefix cache, rows aligned at the subject, frozen blocks replayed, head only where read) is the
    same computation as the full forward: same delta, h and key for the MLP output (ROME) and the residual stream
    (MEMIT), at the subject's last token and at the prompt's last token, over requests of different lengths.
    The steps take the lean path (the blocks called directly) on all three architectures, with the rows
    grouped by tail length (the essence rows read one position, the rewrite rows several)."""
    lean: list[bool] = []
    first = TailPass._first

    def spy(self):
        out = first(self)
        lean.append(self.lean)
        return out

    monkeypatch.setattr(TailPass, "_first", spy)
    monkeypatch.setattr(passes, "GROUP_OVERHEAD", 0)  # a pass per tail length, even for these few rows
    tok = tiny_lm.tok
    model = tiny_lm.model if kind == "mistral" else _random_arch(kind, tok)
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:3]]
    assert len({len(tok(r.subject)["input_ids"]) for r in reqs} | {len(tok(r.target)["input_ids"]) for r in reqs}) > 1
    templates = ["", *corpus_prefixes(tok, tiny_lm.world.dir, [[5, 1], [10, 1]])]
    blocks = model.get_submodule("transformer.h" if kind == "gpt2" else "model.layers")
    mlp_out = blocks[1].mlp.c_proj if kind == "gpt2" else blocks[1].mlp.down_proj
    assert frozen_blocks(model, mlp_out) == [blocks[0]] and frozen_blocks(model, blocks[1]) == list(blocks[:2])
    for module in (mlp_out, blocks[1]):
        for fact_token in ("subject_last", "last"):
            spec = TargetSpec(lr=0.5, steps=4, stop_loss=0.0, fact_token=fact_token)
            fast = optimise_targets(model, module, tok, reqs, templates, spec)
            full = optimise_targets(model, module, tok, reqs, templates, spec, fast=False)
            assert float(fast.delta.norm()) > 0
            for a, b in ((fast.delta, full.delta), (fast.h, full.h), (fast.key, full.key)):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max())), (kind, fact_token)
    assert len(lean) > 4 and all(lean)  # rows grouped by tail length: several TailPasses per optimisation


def test_finished_requests_leave_the_pass_and_nothing_else_changes(tiny_lm, monkeypatch):
    """``REBUILD_BELOW``: once requests stop (NLL < stop_loss), the step pass is rebuilt on those still optimising;
    every request's target is the one the pass over all requests gives (Adam is per row, rows independent)."""
    tok, model = tiny_lm.tok, tiny_lm.model
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:8]]
    module = model.model.layers[1]
    templates = ["", *corpus_prefixes(tok, tiny_lm.world.dir, [[5, 2]])]
    seen: list[tuple[int, torch.Tensor]] = []  # (requests in the pass, their NLL) per step
    call = targets._LossPass.__call__

    def spy(self, delta, tie):
        out = call(self, delta, tie)
        if delta is not None:
            seen.append((self.sub.shape[0], out[0].detach().clone()))
        return out

    monkeypatch.setattr(targets._LossPass, "__call__", spy)
    monkeypatch.setattr(targets, "REBUILD_BELOW", 0.0)  # never rebuild: every step computes all 8 requests
    optimise_targets(model, module, tok, reqs, templates, TargetSpec(steps=6, stop_loss=0.0, fact_token="last"))
    assert [n for n, _ in seen] == [8] * 6
    mid = seen[2][1].sort().values[3:5]
    stop = float(mid.mean())  # half the requests are below it after 3 steps (half-way between two NLLs: a request
    # exactly at the threshold would stop in one run and not in the other, on float rounding)
    assert float(seen[0][1].min()) < float(seen[0][1].max()) and stop > 0
    spec = TargetSpec(steps=6, stop_loss=stop, fact_token="last")
    seen.clear()
    whole = optimise_targets(model, module, tok, reqs, templates, spec)
    assert [n for n, _ in seen] == [8] * len(seen)
    seen.clear()
    monkeypatch.setattr(targets, "REBUILD_BELOW", 1.0)  # rebuild as soon as one request stops
    lean = optimise_targets(model, module, tok, reqs, templates, spec)
    sizes = [n for n, _ in seen]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0], sizes  # the passes shrink
    for a, b in ((lean.delta, whole.delta), (lean.h, whole.h), (lean.key, whole.key)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert lean.info["steps"] == whole.info["steps"]
    assert abs(lean.info["target_nll_final"] - whole.info["target_nll_final"]) < 1e-5


def test_tail_groups_weigh_padding_against_passes(monkeypatch):
    monkeypatch.setattr(passes, "GROUP_OVERHEAD", 64)
    # a MEMIT chunk: 128 essence rows of tail 1 beside 768 rewrite rows of tails 4..6: every length pays its pass
    big = torch.tensor([1] * 128 + [4] * 256 + [5] * 256 + [6] * 256)
    assert tail_groups(big) == [[1], [4], [5], [6]]
    # a single ROME edit: 6 rewrite rows of tail 3 and one essence row: padding 2 positions < one pass
    assert tail_groups(torch.tensor([3] * 6 + [1])) == [[1, 3]]
    # by hand, cost = 64 per group + rows x the group's longest tail:
    # 100 x 1, 10 x 2, 100 x 8: separate 192 + 100 + 20 + 800 = 1112; [1, 2] [8] 128 + 220 + 800 = 1148;
    # [1] [2, 8] 128 + 100 + 880 = 1108 (the 10 rows pad to 8 rather than pay a pass); one group 64 + 1680
    assert tail_groups(torch.tensor([1] * 100 + [2] * 10 + [8] * 100)) == [[1], [2, 8]]
    # 2 x 1, 100 x 2, 100 x 8: [1, 2] [8] 128 + 204 + 800 = 1132 beats separate 1194 and [1] [2, 8] 1730
    assert tail_groups(torch.tensor([1] * 2 + [2] * 100 + [8] * 100)) == [[1, 2], [8]]  # 2 rows x 1 saved < 64


def test_key_pass_stops_early_and_reads_what_the_full_pass_reads(tiny_lm):
    model, tok = tiny_lm.model, tiny_lm.tok
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:5]]
    rows = build_rows(tok, reqs, ["", *corpus_prefixes(tok, tiny_lm.world.dir, [[5, 2]])], with_object=True)
    blocks = model.get_submodule("model.layers")
    modules = [blocks[0].mlp.down_proj, blocks[1]]
    head_calls: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda *_: head_calls.append(1))
    try:
        got = rows_io(model, modules, rows)
    finally:
        handle.remove()
    assert not head_calls  # the pass ended after block 1
    at = torch.arange(rows.ids.shape[0])
    with torch.no_grad(), read_at(modules[0], at, rows.subj) as a, read_at(modules[1], at, rows.subj) as b:
        model(input_ids=rows.ids, attention_mask=rows.mask)  # whole rows (object tokens too), every block, the head
    for (k, v), ref in zip(got, (a, b), strict=True):
        assert torch.allclose(k, ref["input"], atol=1e-5) and torch.allclose(v, ref["output"], atol=1e-5)


def test_solvers_rank_one_memit_and_null_space():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g, dtype=torch.float64) * torch.logspace(0, -4, 12, dtype=torch.float64)
    cov = x.T @ x / 500
    keys = torch.randn(3, 12, generator=g, dtype=torch.float64)
    resid = torch.randn(3, 7, generator=g, dtype=torch.float64)
    # MEMIT: the update solves (lambda C + K K^T) Delta^T = K R^T
    d = memit_update(memit_system(cov, keys, 2.0), keys, resid)
    assert torch.allclose((2.0 * cov + keys.T @ keys) @ d.T, keys.T @ resid, atol=1e-9)
    # AlphaEdit: Delta k0 = 0 for every k0 the projector annihilates (the preserved keys)
    proj, null = null_space_projector(cov, 1e-3, "relative")
    assert 0 < null < 12
    d = alphaedit_update(proj, keys, resid, torch.zeros(12, 12, dtype=torch.float64), 1.0)
    vals, vecs = torch.linalg.eigh(cov)
    keep = vecs[:, vals >= 1e-3 * vals.max()]
    assert torch.allclose(d @ keep, torch.zeros(7, keep.shape[1], dtype=torch.float64), atol=1e-10)


def test_alphaedit_keeps_preserved_outputs_and_commits_keys(setup, tiny_lm):
    model, ctx, req = setup
    m = _method("alphaedit")
    m.prepare(model, ctx)
    module = get_module(model, m._names[-1])
    vals, vecs = torch.linalg.eigh(m._cov[m._names[-1]])
    assert m.nullspace_scale == "absolute"  # AlphaEdit's code: eigenvalues below the threshold itself
    keep = vecs[:, vals >= m.nullspace_threshold].float().T  # keys in the preserved space
    assert 0 < keep.shape[0] < vals.shape[0]
    with torch.no_grad():
        before = module(keep)
    handle = m.apply(model, [req], ctx)
    assert handle.info["null_space_dim"][-1] == vals.shape[0] - keep.shape[0]
    with torch.no_grad():
        after = module(keep)
        changed = float((_weight(model, m._names[-1]) - linear_weight(module).detach()).abs().max())
    assert torch.allclose(after, before, atol=1e-5 * float(before.abs().max()))
    assert m.state_dict() == {}  # nothing joins the preserved keys before a commit
    handle.restore()
    assert m.state_dict() == {} and changed == 0.0
    m.apply(model, [req], ctx).commit()
    state = m.state_dict()
    assert sorted(state) == [f"key_gram.{layer}" for layer in m._layers]
    assert all(v.dtype == torch.float64 and torch.linalg.matrix_rank(v) == 1 for v in state.values())


def test_cached_statistics_give_bit_identical_edits(setup, tmp_path, monkeypatch):
    model, ctx, req = setup
    ctx = replace(ctx, cache_dir=tmp_path, model_id="fixture")
    m = _method("rome")
    m.prepare(model, ctx)
    (name,) = m._names
    path = stats.cache_path(ctx, name, N_TOK)
    assert path is not None and path.is_file() and not list(path.parent.glob(".*tmp"))
    first = m.apply(model, [req], ctx)
    w_first = _weight(model, name)
    first.restore()

    def no_recompute(*a, **k):
        raise AssertionError("cached statistics were recomputed")

    monkeypatch.setattr(stats, "compute", no_recompute)
    again = _method("rome")
    again.prepare(model, ctx)
    again.apply(model, [req], ctx)
    assert torch.equal(_weight(model, name), w_first)
    assert stats.cache_path(EditContext(tokenizer=ctx.tokenizer, cache_dir=tmp_path), name, N_TOK) is None  # no id


def test_bad_statistics_are_one_clear_error(setup, tmp_path):
    model, ctx, _ = setup
    ctx = replace(ctx, cache_dir=tmp_path, model_id="fixture")
    m = _method("rome")
    name = f"model.layers.{m.layers[0]}.mlp.down_proj"
    path = stats.cache_path(ctx, name, N_TOK)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(EditlabError, match=r"unreadable.*delete"):
        m.prepare(model, ctx)
    d = linear_weight(get_module(model, name)).shape[1]
    save_file({"mom2": torch.zeros(d, d, dtype=torch.float64)}, str(path),
              metadata={"format": stats.FORMAT, "module": name, "n_tokens": str(N_TOK)})
    with pytest.raises(EditlabError, match="singular"):
        m.prepare(model, ctx)
    with pytest.raises(EditlabError, match="out of range"):
        _method("rome", layers=[9]).prepare(model, ctx)
    with pytest.raises(EditlabError, match=r"world_dir|tokens\.bin"):
        _method("memit").prepare(model, EditContext(tokenizer=ctx.tokenizer))


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
def test_failed_edits_leave_the_weights_untouched(setup, name):
    model, ctx, req = setup
    m = _method(name)
    m.prepare(model, ctx)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EditFailed, match="subject"):
        m.apply(model, [EditRequest(" ", req.relation, req.target, "bad")], ctx)
    norm = model.get_submodule("model.norm")
    with torch.no_grad():
        norm.weight[0] = float("nan")  # the model's outputs, hence the target vector, are not finite
    with pytest.raises(EditFailed, match="non-finite"):
        m.apply(model, [req], ctx)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != "model.norm.weight")
    assert all(torch.isfinite(linear_weight(get_module(model, n))).all() for n in m._names)


def test_a_failed_edit_in_a_sequential_stream_is_recorded_and_the_stream_goes_on(tiny_world, ckpt, tmp_path,
                                                                                   monkeypatch):
    from editlab.editing.methods import rome
    from editlab.runs.config import EditRun, EditsConfig, MetricsConfig
    from editlab.runs.edit import edit_run
    from editlab.world.loading import World
    from tests.editing.test_toy_protocols import _trainer

    calls = []
    real = rome.optimise_targets

    def nan_on_second(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            out.delta = torch.full_like(out.delta, float("nan"))
        return out

    monkeypatch.setattr(rome, "optimise_targets", nan_on_second)
    method = registry.get_method("rome", {"layers": [0], "stats_tokens": 2000, "prefixes": [[5, 2]], "steps": 2})
    run = tmp_path / "run"
    edit_run(EditRun(world=World.open(tiny_world.dir), checkpoint=ckpt, method=method,
                     edits=EditsConfig(n=3, mode="sequential", eval_every=3),
                     metrics=MetricsConfig(n_locality=5, n_samples=0), run_dir=run, seed=0, run_config={"t": 1},
                     device="cpu", progress=False, trainer=_trainer(), cache_root=tmp_path / "stats"))
    recs = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and [("failed" in r["info"]) for r in recs] == [False, True, False]
    assert "non-finite" in recs[1]["info"]["failed"] and recs[1]["method"] == "rome"
    from editlab.lm.checkpoint import load_weights

    assert all(torch.isfinite(p).all() for p in load_weights(run / "model").parameters())


def test_stop_value_is_the_nll_or_romes_total():
    nll, kl, decay = torch.tensor([0.04, 0.2]), torch.tensor([0.5, 0.0]), torch.tensor([0.01, 0.03])
    assert torch.equal(targets.stop_value(TargetSpec(stop_on="nll"), nll, kl, decay), nll)
    total = targets.stop_value(TargetSpec(kl_factor=0.0625), nll, kl, decay)  # the default: the reference's total
    assert total.tolist() == pytest.approx([0.04 + 0.0625 * 0.5 + 0.01, 0.2 + 0.03])
    for field in ("stop_on", "stop_check", "kl_direction", "target_init", "key_average"):
        with pytest.raises(EditlabError, match=field):
            _method("rome", **{field: "loss"})


def test_stop_on_total_stops_later_than_on_the_nll(tiny_lm):
    """ROME's reference rule adds the KL and the decay term (both > 0 once delta moves), so on the same threshold a
    request stops later than on its NLL alone. On this request the NLL per token falls from 0.36 to 0.197 by step
    10 while NLL + KL + decay stays above 0.208 for 25 steps (measured with the kernel's earlier choices, pinned
    here: the check one update late, KL(init || new), h averaged over the templates)."""
    tok, model = tiny_lm.tok, tiny_lm.model
    reqs = [EditRequest.from_case(tiny_lm.world.cases[1])]
    module = model.model.layers[1]
    templates = ["", *corpus_prefixes(tok, tiny_lm.world.dir, [[5, 2]])]
    run = lambda **kw: optimise_targets(model, module, tok, reqs, templates,  # noqa: E731
                                        TargetSpec(steps=15, fact_token="last", stop_loss=0.2, stop_check="previous",
                                                   kl_direction="init_new", target_init="mean", **kw))
    nll, total = run(stop_on="nll"), run(stop_on="total")
    assert 0 < nll.info["steps"] < total.info["steps"] == 15
    assert _method("rome", stop_on="nll").spec.stop_on == "nll" and _method("rome").spec.stop_on == "total"
