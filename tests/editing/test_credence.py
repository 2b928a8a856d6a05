"""Credence targets (editing/loss.py, ``edits.target=credence``): the loss is the Bernoulli divergence KL(c || p) of
the object's probability p from the request's credence c, the NLL itself when c = 1; fine-tuners and the target
vectors of ROME / MEMIT / AlphaEdit end at p = c, not at certainty. Each check is shown to fail on a broken loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from editlab.editing import loss, registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.loss import TargetBatch, credence_gap, credence_loss, fit, target_batch
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder
from tests.editing.test_methods import Bigram


def reference_kl(c: float, p: float) -> float:
    """KL(Bernoulli(c) || Bernoulli(p)) written out, 0 log 0 = 0."""
    out = c * math.log(c / p) if c > 0 else 0.0
    return out + ((1 - c) * math.log((1 - c) / (1 - p)) if c < 1 else 0.0)


def check_credence_loss(fn) -> None:
    """``fn(nll, c)`` is KL(c || exp(-nll)) on a grid, minimal (0) at p = c, and exactly the NLL where c = 1."""
    nll = torch.tensor([0.01, 0.2, 0.7, 1.5, 4.0], dtype=torch.float64)
    assert torch.equal(fn(nll, torch.ones(5, dtype=torch.float64)), nll), "not the NLL itself at c = 1"
    for c in (0.3, 0.6, 0.95):
        got = fn(nll, torch.full((5,), c, dtype=torch.float64))
        want = torch.tensor([reference_kl(c, math.exp(-x)) for x in nll.tolist()], dtype=torch.float64)
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), f"not KL(c || p) at c={c}: {got} vs {want}"
        at_c = fn(torch.tensor([-math.log(c)], dtype=torch.float64), torch.tensor([c], dtype=torch.float64))
        assert abs(float(at_c)) < 1e-12, f"the loss at p = c = {c} is {float(at_c):.3g}, not its minimum 0"


def test_credence_loss_is_the_bernoulli_divergence_and_the_nll_when_certain():
    check_credence_loss(credence_loss)
    assert torch.equal(credence_loss(torch.tensor([0.5]), None), torch.tensor([0.5]))  # no credences: the NLL
    for broken in (lambda nll, c: c * nll,  # the NLL weighted by c: its minimum is still p = 1
                   lambda nll, c: torch.where(c < 1, (nll + torch.log(c)) ** 2, nll)):  # minimal at c, not the KL
        with pytest.raises(AssertionError, match="not KL"):
            check_credence_loss(broken)


def test_the_stop_reads_the_log_distance_from_the_credence():
    nll = torch.tensor([0.2, 0.2, 0.05])
    c = torch.tensor([1.0, 0.5, 0.95])
    want = torch.tensor([0.2, abs(0.2 + math.log(0.5)), abs(0.05 + math.log(0.95))])
    assert torch.allclose(credence_gap(nll, c), want) and credence_gap(nll, c)[0] == nll[0]


def _fit_to(credence: float | None, loss_fn=None) -> float:
    """p(object) after fitting a one-token object (BOS=1, prompt [3], object [5]) with Adam; ``loss_fn`` replaces
    the credence loss (a broken variant)."""
    torch.manual_seed(0)
    model = Bigram(torch.randn(6, 6))
    ids = torch.tensor([[1, 3, 5]])
    batch = TargetBatch(ids, torch.ones_like(ids), torch.tensor([[False, False, True]]), torch.tensor([1]),
                        None if credence is None else torch.tensor([credence], dtype=torch.float64))
    with pytest.MonkeyPatch.context() as mp:
        if loss_fn is not None:
            mp.setattr(loss, "credence_loss", loss_fn)
        fit(model, batch, [model.table], torch.optim.Adam([model.table], lr=0.05), 400)
    return float(torch.softmax(model.table.detach()[3], -1)[5])


def test_fine_tuning_ends_at_the_credence_not_at_certainty():
    assert _fit_to(None) > 0.99
    for c in (0.3, 0.8):
        assert abs(_fit_to(c) - c) < 0.01, c
    assert _fit_to(0.3, lambda nll, c: nll) > 0.99  # broken: credences ignored -> certainty


def test_target_batch_carries_credences_only_when_one_is_below_one(tiny_lm):
    enc = PromptEncoder(tiny_lm.tok)
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:3]]
    assert target_batch(enc, reqs).credence is None
    soft = [reqs[0], EditRequest(reqs[1].subject, reqs[1].relation, reqs[1].target, credence=0.9), reqs[2]]
    assert target_batch(enc, soft).credence.tolist() == [1.0, 0.9, 1.0]


def _p_object(model, tok, req: EditRequest, module: nn.Module | None = None,
              delta: torch.Tensor | None = None) -> float:
    """p_LM(o* | BOS "s r"), teacher-forced over the object's tokens; with ``delta`` added to ``module``'s output at
    the prompt's last token (where the target vectors below are read, ``fact_token="last"``)."""
    batch = target_batch(PromptEncoder(tok), [req])
    hook = None
    if delta is not None:
        def add(_m, _args, out):
            out = out.clone()
            out[0, int(batch.last_prompt[0])] += delta
            return out

        hook = module.register_forward_hook(add)
    try:
        with torch.no_grad():
            return math.exp(-float(loss.request_nll(model, batch)[0]))
    finally:
        if hook is not None:
            hook.remove()


def _unlikely_request(tiny_lm, model) -> EditRequest:
    """The first case whose object is one token and has p < 0.1 before the edit."""
    enc = PromptEncoder(tiny_lm.tok)
    return next(r for r in map(EditRequest.from_case, tiny_lm.world.cases)
                if len(enc.objects([r.target])[0]) == 1 and _p_object(model, tiny_lm.tok, r) < 0.1)


def test_target_vectors_end_at_the_credence(tiny_lm):
    """ROME / MEMIT / AlphaEdit's target vector for a credence c gives p(o*) = c on the bare prompt (no prefixes, no
    KL or norm terms: the loss is the credence divergence alone), above or below the model's p before the edit (0.07);
    the certain one goes as high as the fixture's output head lets it (~0.21: its final RMSNorm bounds the logits).
    Broken: credences ignored."""
    from editlab.editing.locate.targets import TargetSpec, optimise_targets

    model, tok = tiny_lm.model, tiny_lm.tok
    module = model.model.layers[1].mlp.down_proj
    certain = _unlikely_request(tiny_lm, model)
    spec = TargetSpec(lr=0.5, steps=60, kl_factor=0.0, weight_decay=0.0, clamp_norm_factor=50.0, stop_loss=1e-3,
                      fact_token="last", stop_on="nll")

    def p_after(c: float) -> float:
        req = EditRequest(certain.subject, certain.relation, certain.target, credence=c)
        tgt = optimise_targets(model, module, tok, [req], [""], spec)
        return _p_object(model, tok, req, module, tgt.delta[0])

    assert p_after(1.0) > 0.2
    for c in (0.02, 0.15):
        assert abs(p_after(c) - c) < 0.002 * c / 0.02, c
    with pytest.MonkeyPatch.context() as mp:
        from editlab.editing.locate import targets

        mp.setattr(targets, "credence_loss", lambda nll, c: nll)
        assert p_after(0.15) > 0.2  # broken: the credence ignored, the vector aims at certainty


def test_lora_ends_near_the_credence(tiny_lm):
    """The fine-tuning loop on the fixture model: LoRA aims at c and lands there, the certain edit above it (as high as
    the fixture's output head lets it)."""
    from tests.editing.fixture_hparams import fixture_hparams

    model, tok = copy.deepcopy(tiny_lm.model), tiny_lm.tok
    ctx = EditContext(tokenizer=tok)
    certain = _unlikely_request(tiny_lm, model)
    m = registry.get_method("lora", {**fixture_hparams("lora"), "steps": 60})
    got = {}
    for c in (1.0, 0.15):
        req = EditRequest(certain.subject, certain.relation, certain.target, credence=c)
        handle = m.apply(model, [req], ctx)
        got[c] = _p_object(handle.model, tok, req)
        handle.restore()
    assert abs(got[0.15] - 0.15) < 0.01 and got[1.0] > 0.2, got


def test_a_method_without_a_target_loss_refuses_credence():
    from editlab.runs.edit import check_target

    check_target(registry.get_method("lora", {}), "credence")
    with pytest.raises(EditlabError, match=r"edits\.target=certain"):
        check_target(registry.get_method("ice", {}), "credence")
