"""The cores of ROME, MEMIT and AlphaEdit against independent references, each check shown to fail on a broken core.

Each ``check_*`` compares an implementation with a reference written out here (a constrained least squares solved
by its KKT system, a direct E[k k^T], the reference code's loss terms, what MEMIT's layer spread and AlphaEdit's
accumulated keys guarantee exactly). Every test runs its check on the real core and on a deliberately broken
variant of it, and asserts that the check fails on the broken one, so a check that cannot fail is caught too:

a. ROME's update is the change of least E||Delta k||^2 = tr(Delta C Delta^T) that maps k* to v* (broken: k* in
   place of C^-1 k*, the least Frobenius-norm change);
b. the covariance is E[k k^T] over the real tokens of the corpus (broken: padding included; the n - 1 normaliser);
c. the target loss: NLL per object token, KL(edited || unedited) on the essence prompt, the norm penalty
   ``weight_decay * ||delta|| / ||h||^2`` and the clamp ``clamp_norm_factor * ||h||`` with ``h`` the bare prompt's
   output (broken: the KL reversed, the bound on ||h||^2, no norm penalty);
d. MEMIT over two layers: the first layer realises half the residual at its keys, and after the last layer the
   residual reaches z* (broken: the whole residual at every layer; the residual not re-read between layers);
e. AlphaEdit: a second edit keeps the first edit's outputs, and no edit moves a key the projection annihilates
   (broken: the earlier edits' keys dropped; no projection).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.locate import stats, targets
from editlab.editing.locate.keys import average_io
from editlab.editing.locate.prefixes import corpus_prefixes
from editlab.editing.locate.rows import build_rows
from editlab.editing.locate.solve import cholesky, rome_update
from editlab.editing.locate.targets import TargetSpec, optimise_targets
from editlab.editing.methods import alphaedit, memit
from editlab.editing.weights import get_module, linear_weight
from editlab.lm.packing import Corpus
from tests.editing.fixture_hparams import fixture_hparams

F64 = torch.float64


# a. ROME: the least-change update in the metric of the key covariance


def check_rome(update) -> None:
    """``update(c_factor, k, r)`` is the minimiser of tr(D C D^T) = E_k ||D k||^2 subject to D k = r.

    Solved independently over vec(D) (row-major: D[i, j] at i * d_in + j) from its KKT system
    [[2 Q, A^T], [A, 0]] [x; mu] = [0; r] with Q = I (x) C and A = I (x) k^T.
    """
    g = torch.Generator().manual_seed(0)
    d_in, d_out = 6, 4
    x = torch.randn(400, d_in, generator=g, dtype=F64) * torch.logspace(0, -1.5, d_in, dtype=F64)
    c = x.T @ x / 400  # an anisotropic second moment: the metric matters
    k, r = torch.randn(d_in, generator=g, dtype=F64), torch.randn(d_out, generator=g, dtype=F64)
    q = torch.kron(torch.eye(d_out, dtype=F64), c)
    a = torch.kron(torch.eye(d_out, dtype=F64), k[None, :])
    kkt = torch.cat([torch.cat([2 * q, a.T], 1), torch.cat([a, torch.zeros(d_out, d_out, dtype=F64)], 1)])
    rhs = torch.cat([torch.zeros(d_out * d_in, dtype=F64), r])
    expected = torch.linalg.solve(kkt, rhs)[: d_out * d_in].reshape(d_out, d_in)
    got = update(cholesky(c, "C"), k, r)
    assert torch.allclose(got @ k, r, atol=1e-10), "the update does not map k* to v* - W k*"
    err = float((got - expected).abs().max())
    assert err < 1e-9 * float(expected.abs().max()), (
        f"not the least-change update in the C metric: max |Delta - Delta_KKT| = {err:.3g}; tr(D C D^T) "
        f"{float(torch.trace(got @ c @ got.T)):.6g} vs the minimum {float(torch.trace(expected @ c @ expected.T)):.6g}")


def test_rome_update_is_the_least_change_in_the_covariance_metric():
    check_rome(rome_update)
    with pytest.raises(AssertionError, match="least-change"):
        check_rome(lambda factor, k, r: r[:, None] * (k / (k @ k))[None, :])  # k* in place of C^-1 k*


# b. the key covariance


@pytest.fixture
def model_ctx(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    return model, EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_lm.world.dir, model_id="")


def check_covariance(compute, model, world_dir, name: str, n_docs: int = 5) -> None:
    """``compute(model, [name], world_dir, n)`` is E[k k^T] over the ``n`` real tokens of the first ``n_docs``
    documents of the seeded order (BOS + document), read here one unpadded document at a time."""
    corpus = Corpus.open(world_dir)
    order = np.random.default_rng(0).permutation(corpus.n_docs)
    seqs = [[corpus.bos_id, *corpus.tokens[corpus.offsets[d]: corpus.offsets[d + 1]].tolist()][: stats.MAX_LEN]
            for d in order[:n_docs]]
    assert len(set(map(len, seqs))) > 1  # ragged: a batch of them is padded
    n = sum(map(len, seqs))
    keys: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, args, _o: keys.append(args[0][0]))
    try:
        with torch.no_grad():
            for s in seqs:
                model(input_ids=torch.tensor([s]), use_cache=False)
    finally:
        handle.remove()
    k = torch.cat(keys).double()
    direct = k.T @ k / n
    got = compute(model, [name], world_dir, n, progress=False)[name]
    err = float((got - direct).abs().max())
    assert err < 1e-5 * float(direct.abs().max()), (
        f"the statistic is not E[k k^T] over the real tokens: max |C - C_direct| = {err:.3g} "
        f"(max |C_direct| = {float(direct.abs().max()):.3g})")


def test_covariance_is_the_second_moment_over_real_tokens(model_ctx, monkeypatch):
    model, ctx = model_ctx
    monkeypatch.setattr(stats, "BATCH_DOCS", 5)  # one batch of exactly the 5 documents: padding, no cut
    name = "model.layers.1.mlp.down_proj"
    check_covariance(stats.compute, model, ctx.world_dir, name)

    def over_n_minus_1(model, names, world_dir, n, **kw):
        return {m: c * n / (n - 1) for m, c in stats.compute(model, names, world_dir, n, **kw).items()}

    with pytest.raises(AssertionError, match="real tokens"):
        check_covariance(over_n_minus_1, model, ctx.world_dir, name)
    real = stats.outer_sum
    monkeypatch.setattr(stats, "outer_sum", lambda x, mask: real(x, torch.ones_like(mask)))  # padding included
    with pytest.raises(AssertionError, match="real tokens"):
        check_covariance(stats.compute, model, ctx.world_dir, name)


# c. the target loss and clamp


def reference_terms(model, module, tok, req, templates, spec, delta) -> dict[str, torch.Tensor]:
    """ROME's ``compute_v`` / MEMIT's ``compute_z`` loss terms at ``delta``, written out on a plain forward pass
    (``module`` returns a tensor): ``delta`` added at the fact token of every row, NLL per object token averaged
    over the templates, ``F.kl_div(init, new, log_target=True, reduction="batchmean")`` on the essence prompt,
    ``weight_decay * ||delta|| / ||target_init||^2`` with ``target_init`` the bare prompt's output."""
    rew = build_rows(tok, [req], templates, with_object=True, fact_token=spec.fact_token)
    ess = build_rows(tok, [req], [""], relation=spec.essence, fact_token=spec.fact_token)

    def run(rows, add):
        got = {}

        def hook(_m, _a, out):
            got["h"] = out[torch.arange(out.shape[0]), rows.subj].detach().clone()
            if add is None:
                return None
            out = out.clone()
            out[torch.arange(out.shape[0]), rows.subj] += add
            return out

        handle = module.register_forward_hook(hook)
        try:
            logits = model(input_ids=rows.ids, attention_mask=rows.mask, use_cache=False).logits
        finally:
            handle.remove()
        return torch.log_softmax(logits.float(), -1), got["h"]

    with torch.no_grad():
        _, h = run(rew, None)
        init, _ = run(ess, None)
    target_init = h[rew.tpl == 0][0]  # the bare prompt's row
    lp, _ = run(rew, delta)
    tok_lp = lp[:, :-1].gather(-1, rew.ids[:, 1:, None])[..., 0] * rew.target[:, :-1]
    nll = (-tok_lp.sum(1) / rew.target.sum(1)).mean()
    new, _ = run(ess, delta)
    at = torch.arange(ess.ids.shape[0]), ess.subj
    kl = F.kl_div(init[at], new[at], log_target=True, reduction="batchmean")
    decay = spec.weight_decay * delta.norm() / target_init.norm() ** 2
    return {"nll": nll, "kl": kl, "decay": decay, "bound": spec.clamp_norm_factor * target_init.norm()}


def check_target_loss(model, tok, req, templates) -> None:
    """One Adam step of the kernel (reference settings): its loss terms at the stepped delta equal
    :func:`reference_terms`, the step leaves delta on the reference's clamp bound, and it is the reference's step
    (Adam's first update of the reference loss at delta = 0, then the clamp)."""
    module = model.model.layers[1].mlp.down_proj
    spec = TargetSpec(lr=1.0, steps=2, kl_factor=1.0, clamp_norm_factor=0.5, stop_loss=0.0, fact_token="last")
    seen: list[tuple] = []
    real_stop = targets.stop_value

    def spy(spec, nll, kl, decay):  # the terms the kernel reads at each pass
        seen.append((nll.detach(), kl.detach(), decay.detach()))
        return real_stop(spec, nll, kl, decay)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(targets, "stop_value", spy)
        tgt = optimise_targets(model, module, tok, [req], templates, spec)
    assert tgt.info["steps"] == 1 and len(seen) == 2  # steps = 2 passes: one update, the last pass only evaluates
    delta = tgt.delta[0]
    with torch.no_grad():
        ref = reference_terms(model, module, tok, req, templates, spec, delta)
    for i, term in enumerate(("nll", "kl", "decay")):
        got, want = float(seen[-1][i][0]), float(ref[term])
        assert abs(got - want) <= 1e-3 * abs(want) + 1e-6, f"the {term} term is {got:.6g}, the reference's {want:.6g}"
    norm, bound = float(delta.norm()), float(ref["bound"])
    assert abs(norm - bound) <= 1e-5 * bound, f"||delta|| = {norm:.6g} after the step; the reference bound: {bound:.6g}"
    zero = torch.zeros_like(delta, requires_grad=True)
    at0 = reference_terms(model, module, tok, req, templates, spec, zero)
    step = torch.zeros_like(delta, requires_grad=True)
    (step.grad,) = torch.autograd.grad(at0["nll"] + spec.kl_factor * at0["kl"] + at0["decay"], [zero])
    torch.optim.Adam([step], lr=spec.lr).step()
    stepped = step.detach() * min(1.0, float(ref["bound"] / step.detach().norm()))
    off = float((delta - stepped).norm() / stepped.norm())
    assert off < 1e-4, f"the kernel's first step is {off:.3g} (relative) off the reference's Adam step"


_KL, _BOUND = targets.kl_divergence, targets.norm_bound
BROKEN_LOSS = {  # name: (the kernel's function replaced, its broken version, what the check reports)
    "kl reversed": ("kl_divergence", lambda s, i, n: _KL(dataclasses.replace(s, kl_direction="init_new"), i, n),
                    "the kl term"),
    "bound on ||h||^2": ("norm_bound", lambda s, h: _BOUND(s, h ** 2), "bound"),
    "no norm penalty": ("norm_penalty", lambda s, d, h: torch.zeros_like(h), "the decay term"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_LOSS))
def test_target_loss_terms_and_clamp_are_the_references(tiny_lm, broken, monkeypatch):
    tok, model = tiny_lm.tok, tiny_lm.model
    req = EditRequest.from_case(tiny_lm.world.cases[1])
    templates = ["", *corpus_prefixes(tok, tiny_lm.world.dir, [[5, 2]])]
    check_target_loss(model, tok, req, templates)
    attr, fn, match = BROKEN_LOSS[broken]
    monkeypatch.setattr(targets, attr, fn)
    with pytest.raises(AssertionError, match=match):
        check_target_loss(model, tok, req, templates)


# d. MEMIT's spread of the residual over two layers


def check_memit_spread(model, ctx, reqs) -> None:
    """After MEMIT's update of blocks 0 and 1: block 0's update realises (z* - h) / 2 at its keys (its share of the
    two layers), and the residual after block 1 reaches z* (block 1 writes what is left, read after block 0).

    Exact with a near-zero lambda (the least squares interpolates the two keys) and with keys and residuals both
    averaged flat over the templates (the template mean of the edited residual is then what the solver fits).
    """
    m = registry.get_method("memit", {**fixture_hparams("memit"), "layers": [0, 1], "mom2_update_weight": 1e-4,
                                      "key_average": "flat", "target_init": "mean", "steps": 5})
    m.prepare(model, ctx)
    last, first = m.block(model, 1), get_module(model, m._names[0])
    tgt = optimise_targets(model, last, ctx.tokenizer, reqs, m._templates, m.spec, tpl_groups=m._groups)
    z, h = tgt.h + tgt.delta, tgt.h
    w0 = linear_weight(first).detach().clone().double()
    m.apply(model, reqs, ctx)
    (k0, _), (_, h_after) = average_io(model, [first, last], ctx.tokenizer, reqs, m._templates, m.fact_token)
    share = (k0.double() @ (linear_weight(first).detach().double() - w0).T).float()
    scale = float((z - h).norm(dim=1).max())
    err_share = float((share - (z - h) / 2).norm(dim=1).max())
    assert err_share < 1e-3 * scale, f"block 0 realised {err_share / scale:.3g} (relative) off its half of z* - h"
    err_z = float((h_after - z).norm(dim=1).max())
    assert err_z < 1e-3 * scale, f"the residual after block 1 misses z* by {err_z / scale:.3g} (relative)"


BROKEN_SPREAD = {
    "whole residual per layer": (lambda z, h, left: z - h, "half of z"),
    "residual not re-read": (None, "misses z"),  # built per run: it keeps the residual of the first layer
}


@pytest.mark.parametrize("broken", sorted(BROKEN_SPREAD))
def test_memit_spreads_the_residual_and_reaches_the_target(model_ctx, tiny_lm, broken, monkeypatch):
    model, ctx = model_ctx
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:2]]
    pristine = copy.deepcopy(model)
    check_memit_spread(model, ctx, reqs)
    fn, match = BROKEN_SPREAD[broken]
    if fn is None:
        kept: dict[str, torch.Tensor] = {}

        def fn(z, h, left):
            return (z - kept.setdefault("h", h)) / left

    monkeypatch.setattr(memit, "residual_share", fn)
    with pytest.raises(AssertionError, match=match):
        check_memit_spread(pristine, ctx, reqs)


# e. AlphaEdit: the projection and the earlier edits' keys


def check_alphaedit(model, ctx, first: EditRequest, second: EditRequest) -> None:
    """Two committed AlphaEdit edits of block 1: the second changes the output at the first one's keys by < 1e-2 of
    what it changes at its own, and neither changes the output at a key the projection annihilates (P k0 = 0)."""
    m = registry.get_method("alphaedit", {**fixture_hparams("alphaedit"), "layers": [1], "alpha": 1e-3,
                                          "nullspace_scale": "relative", "nullspace_threshold": 0.5})
    m.prepare(model, ctx)
    (name,) = m._names
    w = [linear_weight(get_module(model, name)).detach().clone().double()]
    for req in (first, second):
        m.apply(model, [req], ctx).commit()
        w.append(linear_weight(get_module(model, name)).detach().clone().double())
    (k1, _), = average_io(model, [get_module(model, name)], ctx.tokenizer, [first], m._templates, m.fact_token,
                         groups=m._groups)
    (k2, _), = average_io(model, [get_module(model, name)], ctx.tokenizer, [second], m._templates, m.fact_token,
                         groups=m._groups)
    at_first, at_own = float(((w[2] - w[1]) @ k1[0].double()).norm()), float(((w[2] - w[1]) @ k2[0].double()).norm())
    assert at_own > 0 and at_first < 1e-2 * at_own, (
        f"the second edit moved the first edit's output by {at_first / at_own:.3g} of its own change")
    vals, vecs = torch.linalg.eigh(m._cov[name])
    kept = vecs[:, vals >= m.nullspace_threshold * vals.max()]  # the keys P annihilates
    moved = float(((w[2] - w[0]) @ kept).norm() / (w[2] - w[0]).norm())
    assert kept.shape[1] > 0 and moved < 1e-4, f"the edits moved the preserved keys' outputs by {moved:.3g} (relative)"


def test_alphaedit_keeps_earlier_edits_and_the_preserved_space(model_ctx, tiny_lm, monkeypatch):
    model, ctx = model_ctx
    first, second = (EditRequest.from_case(c) for c in tiny_lm.world.cases[:2])
    pristine = copy.deepcopy(model)
    check_alphaedit(model, ctx, first, second)
    with monkeypatch.context() as mp:  # the earlier edits' keys never reach the solver
        mp.setattr(alphaedit.AlphaEdit, "gram", lambda self, layer, d: torch.zeros(d, d, dtype=F64))
        with pytest.raises(AssertionError, match="first edit's output"):
            check_alphaedit(copy.deepcopy(pristine), ctx, first, second)
    monkeypatch.setattr(alphaedit, "null_space_projector",  # no projection: P = I
                        lambda cov, threshold, scale: (torch.eye(cov.shape[0], dtype=F64), cov.shape[0]))
    with pytest.raises(AssertionError, match="preserved keys"):
        check_alphaedit(pristine, ctx, first, second)
