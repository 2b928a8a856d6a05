"""Target-vector optimisation: ROME's ``compute_v`` and MEMIT's ``compute_z``, one kernel.

For each request a vector ``delta`` is added to the output of one module at the subject's last token
(ROME: the edited MLP's output, ROME Sec. 3.1 Eq. 4; MEMIT/AlphaEdit: the residual stream, i.e. the
output of the last edited block, MEMIT Sec. 4.2 Eq. 16) in every context template, and optimised with
Adam on

    L(delta) = mean_j NLL(o* | x_j + s r)                       (the requested object, teacher-forced)
             + kl_factor * KL(p_delta(. | s) || p(. | s))        (the "essence" prompt keeps what s is)
             + weight_decay * ||delta|| / ||h||^2                 (ROME's norm penalty, as in its code)

with ``delta`` clamped to ``||delta|| <= clamp_norm_factor * ||h||`` after every step. A request with a credence
c < 1 (``EditRequest.credence``, editing/loss.py) has each template's NLL replaced by its Bernoulli divergence
KL(c || p(o* | x_j + s r)) (:func:`~editlab.editing.loss.credence_loss`; the NLL itself at c = 1), and the stopping
rule reads |log p - log c| in place of its NLL (:func:`~editlab.editing.loss.credence_gap`). The NLL of a
template is the object's summed token NLL divided by its length (ROME's ``nll_loss_each``), averaged flat over the
templates; the KL is read at the ``fact_token`` position of the essence prompt ``"{subject} <essence>"``
(ROME's ``"{} is a"``). Each term is one function here (:func:`kl_divergence`, :func:`norm_penalty`,
:func:`norm_bound`, :func:`stop_value`). Where the reference codes (``rome/compute_v.py``,
``memit/compute_z.py``, AlphaEdit's copy of the latter) differ from what this kernel did first, the
difference is a :class:`TargetSpec` field whose default is the reference:

- ``kl_direction``: ``new_init`` = KL(p_delta || p), the reference's ``F.kl_div(kl_distr_init,
  kl_log_probs, log_target=True)`` (``kl_div`` takes the expectation under its *second* argument);
  ``init_new`` = KL(p || p_delta);
- ``target_init``: ``h`` is the bare prompt's output (``bare``, the reference's ``target_init``, recorded on
  ``context_templates[0] = "{}"``) or the mean of the outputs over the templates (``mean``);
- ``stop_on``: a request is done once its stop value is below ``stop_loss`` (ROME: 5e-2); ``total`` = its
  whole loss, NLL + kl_factor KL + the decay term (the reference's ``if loss < 5e-2: break``), ``nll`` = its
  NLL per object token, the rule every optimisation-based editor shares (editing/loss.py, methods.md
  "Early stopping");
- ``stop_check``: ``current`` (the reference): each step computes the loss of the current ``delta``, a request
  whose stop value is below ``stop_loss`` keeps that ``delta``, the others take an Adam step, and the last of
  the ``steps`` passes only evaluates (``if it == v_num_grad_steps - 1: break``: at most ``steps - 1``
  updates); ``previous``: the check reads the value computed before the previous update, so a request is
  frozen one update after its value fell below ``stop_loss``, and each of the ``steps`` passes updates.

Many requests are optimised together (MEMIT computes thousands of targets): each request has its own
``delta`` row and its own loss terms, the total loss is their sum and Adam is element-wise, so this is
exactly independent optimisation per request (a finished request's row is frozen), at the cost of
one batched forward pass per step instead of one per request. That pass computes only what ``delta``
changes: the rows' tails from the subject position on, above the edited module, with the output head
only where the loss reads it, rows grouped by tail length (:mod:`editlab.editing.locate.passes`). Requests
that have stopped leave that pass (:data:`REBUILD_BELOW`), so later steps cost what the requests still
optimising cost.

``shared_keys=True`` (MEMIT/AlphaEdit on a world with several facts per subject): requests whose key is
the same token sequence (the same prefix + subject up to ``fact_token``; at ``subject_last`` that is the
same subject) get one shared ``delta``, optimised on the sum of their losses. A linear update maps one key
to one value, so separate targets for one key would only be averaged by the solver (each then misses its
own object); the shared target is the one value that serves all of them. With distinct keys (MEMIT's
evaluation samples edits with distinct subjects) both settings are the same optimisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditFailed, EditRequest
from editlab.editing.locate.keys import TARGET_INITS, bare_rows, per_request_mean, template_mean
from editlab.editing.locate.passes import FullPass, tail_pass
from editlab.editing.locate.rows import FACT_TOKENS, Rows, build_rows, concat
from editlab.editing.loss import credence_gap, credence_loss, credences
from editlab.errors import EditlabError

CHUNK_REQUESTS = 128
"""Requests optimised together in one batched forward pass (1000 MEMIT edits on mistral_tiny, one AVX512 thread:
64 -> 80 s, 128 -> 68 s, 256 -> 67..72 s, 512 -> 80 s and 2.3 GB peak)."""


@dataclass(frozen=True)
class TargetSpec:
    """Hyper-parameters of the target optimisation (ROME's ``v_*`` / MEMIT's ``z_*`` values); the defaults are the
    reference codes' (the module docstring lists the alternatives and what they change)."""

    lr: float = 0.5
    steps: int = 20
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    stop_loss: float = 5e-2
    essence: str = "is a"
    fact_token: str = "subject_last"
    stop_on: str = "total"
    kl_direction: str = "new_init"
    target_init: str = "bare"
    stop_check: str = "current"


STOP_ON = ("total", "nll")
KL_DIRECTIONS = ("new_init", "init_new")
STOP_CHECKS = ("current", "previous")


def check_spec(spec: TargetSpec) -> None:
    """EditlabError naming the first field of ``spec`` outside its choices."""
    for field, choices in (("stop_on", STOP_ON), ("kl_direction", KL_DIRECTIONS), ("target_init", TARGET_INITS),
                           ("stop_check", STOP_CHECKS), ("fact_token", FACT_TOKENS)):
        if getattr(spec, field) not in choices:
            raise EditlabError(f"{field}={getattr(spec, field)!r} must be one of {', '.join(choices)}")


def kl_divergence(spec: TargetSpec, init_lp: torch.Tensor, new_lp: torch.Tensor) -> torch.Tensor:
    """Per request, the essence KL between the unedited (``init_lp``) and current (``new_lp``) log-probabilities
    (m, V) -> (m,): KL(new || init) for ``kl_direction="new_init"`` (the reference), else KL(init || new)."""
    if spec.kl_direction == "init_new":
        return (init_lp.exp() * (init_lp - new_lp)).sum(-1)
    return (new_lp.exp() * (new_lp - init_lp)).sum(-1)


def norm_penalty(spec: TargetSpec, delta: torch.Tensor, h_norm: torch.Tensor) -> torch.Tensor:
    """Per request, ``weight_decay * ||delta|| / ||h||^2`` (m,): the reference's form (the norm, not its square,
    over the squared norm of ``target_init``; ``rome/compute_v.py`` keeps the squared form commented out)."""
    return spec.weight_decay * delta.norm(dim=1) / h_norm ** 2


def norm_bound(spec: TargetSpec, h_norm: torch.Tensor) -> torch.Tensor:
    """Per request, the largest ``||delta||`` after a step: ``clamp_norm_factor * ||h||`` (the reference's
    ``max_norm``)."""
    return spec.clamp_norm_factor * h_norm


def stop_value(spec: TargetSpec, nll: torch.Tensor, kl: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """Per request, what is compared with ``spec.stop_loss``: the NLL per object token (``stop_on="nll"``, the
    shared rule) or the reference's total, ``nll + kl_factor * kl + decay`` (``stop_on="total"``); detached."""
    if spec.stop_on == "nll":
        return nll.detach()
    return (nll + spec.kl_factor * kl + decay).detach()


@dataclass
class Targets:
    """Result per request: ``delta`` (n, d), the current output ``h`` (n, d) it starts from (``target_init``: the bare
    prompt's or the template mean), the template-averaged key of the hooked module ``key`` (n, d_in), diagnostics."""

    delta: torch.Tensor
    h: torch.Tensor
    key: torch.Tensor
    info: dict


def optimise_targets(model: nn.Module, module: nn.Module, tok: PreTrainedTokenizerBase,
                     requests: Sequence[EditRequest], templates: Sequence[str], spec: TargetSpec,
                     fast: bool = True, shared_keys: bool = False, tpl_groups: Sequence[int] | None = None
                     ) -> Targets:
    """``delta`` per request on ``module``'s output at the subject's last token (see the module docstring).

    ``templates[0]`` is the bare prompt ``""`` (``target_init="bare"`` reads it). ``fast`` computes each step's
    forward pass with :func:`~editlab.editing.locate.passes.tail_pass` (only what ``delta`` changes);
    ``fast=False`` with the plain full pass. Same math, same result up to float rounding. ``shared_keys``: one
    ``delta`` per distinct key, optimised on all its requests' losses. ``tpl_groups``: how the returned key is
    averaged over the templates (:func:`~editlab.editing.locate.keys.template_mean`; None: flat).
    """
    check_spec(spec)
    if spec.target_init == "bare" and (not templates or templates[0] != ""):
        raise EditlabError("target_init='bare' reads template 0, which must be the bare prompt ''")
    group = _key_groups(requests, spec.fact_token) if shared_keys else list(range(len(requests)))
    chunks = _chunks_of_groups(group)
    parts = [_chunk(model, module, tok, [requests[i] for i in idx], templates, spec, fast, [group[i] for i in idx],
                    tpl_groups) for idx in chunks]
    order = torch.tensor([i for idx in chunks for i in idx]).argsort()  # back to the requests' order
    delta, h, key, nll = (torch.cat([p[i] for p in parts])[order.to(parts[0][i].device)] for i in range(4))
    bad = [r.case_id or r.prompt for r, ok in zip(requests, torch.isfinite(delta).all(1).tolist(), strict=True)
           if not ok]
    if bad or not torch.isfinite(h).all() or not torch.isfinite(key).all():
        raise EditFailed(f"non-finite target vector for edit(s) {bad[:3] or 'of this batch'}; the model's outputs are "
                         "not finite there (check the checkpoint, or lower the method's lr)")
    norm, cap = delta.norm(dim=1), norm_bound(spec, h.norm(dim=1))
    info = {"target_nll_final": float(nll.mean()), "delta_norm": float(norm.mean()),
            "clamped": float((norm >= 0.999 * cap).float().mean()),  # share held at the norm clamp (diagnostic)
            "steps": max(p[4] for p in parts)}
    return Targets(delta.detach(), h, key, info)


def _key_groups(requests: Sequence[EditRequest], fact_token: str) -> list[int]:
    """Per request, the index of the first request with the same key (subject; and relation at ``last``)."""
    first: dict[tuple, int] = {}
    return [first.setdefault((r.subject,) if fact_token == "subject_last" else (r.subject, r.prompt), i)
            for i, r in enumerate(requests)]


def _chunks_of_groups(group: list[int]) -> list[list[int]]:
    """Request indices in chunks of about CHUNK_REQUESTS that never split a key group (one group, one chunk)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        members.setdefault(g, []).append(i)
    chunks: list[list[int]] = [[]]
    for idx in members.values():
        if chunks[-1] and len(chunks[-1]) + len(idx) > CHUNK_REQUESTS:
            chunks.append([])
        chunks[-1].extend(idx)
    return chunks


REBUILD_BELOW = 0.5
"""A step's pass is rebuilt on the requests not yet settled (see :func:`_chunk`) once they are fewer than this
share of the requests its current pass computes (rebuilding costs about one forward pass without gradients; most
requests of a MEMIT batch stop well before the last step)."""


class _LossPass:
    """The forward pass of the rows of requests ``sub`` (sorted chunk-local indices): their rewrite rows (every
    prefix) and essence rows, and how to read each request's NLL and essence log-probs off its logits.

    Rows are independent sequences and each loss term reads only its own request's rows, so the terms of
    ``sub`` computed here are the terms a pass over all requests computes for them (up to float rounding).
    """

    def __init__(self, model: nn.Module, module: nn.Module, rew: Rows, ess: Rows, sub: torch.Tensor, n: int,
                 pad_id: int, fast: bool, credence: torch.Tensor | None = None) -> None:
        device = next(model.parameters()).device
        in_sub = torch.zeros(n, dtype=torch.bool)
        in_sub[sub.cpu()] = True
        rew, ess = rew.select(in_sub[rew.req].nonzero(as_tuple=True)[0]), ess.select(in_sub[ess.req].nonzero(
            as_tuple=True)[0])
        rows = concat(rew, ess, pad_id).to(device)
        n_rew = rew.ids.shape[0]
        self.sub, self.req = sub.to(device), rows.req
        local = torch.full((n,), -1, dtype=torch.long, device=device)
        local[self.sub] = torch.arange(sub.shape[0], device=device)
        # the positions the loss reads: those predicting an object token (teacher forcing), then the essence's
        # subject (one essence row per request, in ``sub``'s order)
        self.t_rows, t_cols = rows.target[:n_rew].nonzero(as_tuple=True)
        self.gold = rows.ids[self.t_rows, t_cols + 1]
        read_rows = torch.cat([self.t_rows, torch.arange(ess.ids.shape[0], device=device) + n_rew])
        read_cols = torch.cat([t_cols, rows.subj[n_rew:]])
        self.n_tok = rows.target[:n_rew].sum(1)
        self.rew_req = rows.req[:n_rew]  # the request (chunk-local index) of each rewrite row
        self.rew_tpl = rows.tpl[:n_rew]  # and its template (0: the bare prompt)
        self.rew_local = local[self.rew_req]
        self.n_rew = n_rew
        self.credence = None if credence is None else credence.to(device)[self.rew_req]  # per rewrite row
        self.run = (tail_pass if fast else FullPass)(model, module, rows, read_rows, read_cols)

    def __call__(self, delta: torch.Tensor | None, tie: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(the target loss of each request of ``sub`` (m,): its NLL, or the credence divergence; the NLL the stopping
        rule reads (m,): the same, or the credence gap; its essence log-probs (m, V); what the hook read).
        ``delta`` (n, d) holds every request's row (``tie``: request -> its key group's row)."""
        logits, got = self.run(None if delta is None else delta[tie[self.req]])
        logp = torch.log_softmax(logits.float(), dim=-1)
        n_t = self.t_rows.shape[0]
        tok_lp = logp[:n_t].gather(-1, self.gold[:, None])[:, 0]
        summed = -torch.zeros(self.n_rew, dtype=tok_lp.dtype, device=tok_lp.device).index_add(0, self.t_rows, tok_lp)
        per_row = torch.stack([credence_loss(summed, self.credence), credence_gap(summed, self.credence)], 1)
        loss, stop = (per_request_mean(per_row / self.n_tok[:, None], self.rew_local, self.sub.shape[0])).unbind(1)
        return loss, stop, logp[n_t:], got


def _chunk(model: nn.Module, module: nn.Module, tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
           templates: Sequence[str], spec: TargetSpec, fast: bool, group: Sequence[int],
           tpl_groups: Sequence[int] | None) -> tuple[torch.Tensor, ...]:
    n = len(requests)
    device = next(model.parameters()).device
    # each request's delta row is its key group's first row (its own row when keys are distinct)
    first: dict[int, int] = {}
    tie = torch.tensor([first.setdefault(g, i) for i, g in enumerate(group)], device=device)
    rew = build_rows(tok, requests, templates, with_object=True, fact_token=spec.fact_token)
    if not bool(rew.target.any(1).all()):
        raise EditFailed(f"an edit of {[r.case_id or r.prompt for r in requests][:3]} has an empty target object; "
                         "give every request a non-empty target")
    ess = build_rows(tok, requests, [""], relation=spec.essence, fact_token=spec.fact_token)
    cred = credences(requests)
    run = _LossPass(model, module, rew, ess, torch.arange(n), n, tok.pad_token_id, fast, cred)
    with torch.no_grad():  # the unedited model: current outputs h, keys, essence distributions
        nll, stop, kl_init, got = run(None, tie)
        out, inp = got["output"][:run.n_rew].float(), got["input"][:run.n_rew].float()
        h = (per_request_mean(out, run.rew_req, n) if spec.target_init == "mean"
             else bare_rows(out, run.rew_req, run.rew_tpl, n))
        key = template_mean(inp, run.rew_req, run.rew_tpl, n, tpl_groups)
    opt = _Optimisation(spec, run, tie, kl_init, h, nll, stop,
                        lambda sub: _LossPass(model, module, rew, ess, sub, n, tok.pad_token_id, fast, cred))
    delta, nll, steps = opt.current() if spec.stop_check == "current" else opt.previous()
    return delta.detach()[tie], h, key, nll.detach(), steps


class _Optimisation:
    """The Adam loop over the ``delta`` rows of one chunk, under either ``stop_check`` (module docstring)."""

    def __init__(self, spec: TargetSpec, run: _LossPass, tie: torch.Tensor, kl_init: torch.Tensor, h: torch.Tensor,
                 nll: torch.Tensor, stop: torch.Tensor, pass_of) -> None:
        self.spec, self.run, self.tie, self.kl_init, self.nll = spec, run, tie, kl_init, nll
        self.n = tie.shape[0]
        self.pass_of = pass_of  # chunk-local request indices -> a _LossPass over them
        self.h_norm = h.norm(dim=1).clamp(min=1e-12)
        self.stop = stop.clone()  # at delta = 0 the KL and the decay term are 0: both rules read the NLL
        self.delta = torch.zeros_like(h, requires_grad=True)
        self.opt = torch.optim.Adam([self.delta], lr=spec.lr)

    def _done(self) -> torch.Tensor:
        """Per request, whether it is done: its stop value and those of its key group's requests are below
        ``stop_loss`` (a shared delta is done with all its requests; a NaN is not done)."""
        still = (~(self.stop < self.spec.stop_loss)).float()
        return torch.zeros(self.n, device=self.tie.device).index_add_(0, self.tie, still)[self.tie] == 0

    def _rebuild(self, active: torch.Tensor) -> None:
        """Settled requests leave the pass once the others are fewer than REBUILD_BELOW of it."""
        if active.shape[0] < REBUILD_BELOW * self.run.sub.shape[0]:
            self.run = self.pass_of(active.cpu())
            with torch.no_grad():
                self.run(None, self.tie)  # a TailPass records its unedited tail first

    def _terms(self) -> tuple[torch.Tensor, ...]:
        """(the requests of the pass, their target loss, the NLL their stop reads, KL and decay term at the current
        delta)."""
        sub = self.run.sub
        nll_sub, stop_sub, kl_lp, _ = self.run(self.delta, self.tie)
        kl = kl_divergence(self.spec, self.kl_init[sub], kl_lp)
        decay = norm_penalty(self.spec, self.delta[self.tie[sub]], self.h_norm[sub])
        return sub, nll_sub, stop_sub, kl, decay

    def _step(self, loss: torch.Tensor, done: torch.Tensor) -> None:
        """One Adam step of the rows not ``done`` on ``loss``, then the norm clamp."""
        delta = self.delta
        (delta.grad,) = torch.autograd.grad(loss, [delta])
        frozen = delta.detach()[done].clone()
        self.opt.step()
        with torch.no_grad():
            delta[done] = frozen
            norms = delta.norm(dim=1)
            cap = norm_bound(self.spec, self.h_norm)
            delta.mul_(torch.where(norms > cap, cap / norms.clamp(min=1e-12), torch.ones_like(norms))[:, None])

    def current(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``stop_check="current"``: check the loss of the current delta, then step the others; the last pass only
        evaluates. Returns (delta rows, NLL per request at its final delta, updates taken)."""
        spec, steps = self.spec, 0
        done = torch.zeros(self.n, dtype=torch.bool, device=self.tie.device)
        with torch.enable_grad():
            for it in range(spec.steps):
                sub, nll_sub, stop_sub, kl, decay = self._terms()
                self.nll = self.nll.detach().index_copy(0, sub, nll_sub.detach())
                self.stop = self.stop.index_copy(0, sub, stop_value(spec, stop_sub, kl, decay))
                done = done | self._done()  # a done request keeps its delta: it stays done
                if bool(done.all()) or it == spec.steps - 1:
                    break
                self._step((nll_sub + spec.kl_factor * kl + decay)[~done[sub]].sum(), done)
                steps += 1
                self._rebuild((~done).nonzero(as_tuple=True)[0])
        return self.delta, self.nll, steps

    def previous(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``stop_check="previous"``: check the value computed before the last update, then step every request not
        done; each pass updates. Returns (delta rows, NLL per request at the last pass that read it, updates)."""
        spec, steps = self.spec, 0
        was_done = torch.zeros(self.n, dtype=torch.bool, device=self.tie.device)
        with torch.enable_grad():
            for _ in range(spec.steps):
                done = self._done()
                if bool(done.all()):
                    break
                # a request done at two checks in a row has its NLL computed at its final (frozen) delta: it stays
                # done and needs no more passes (one done at this check only was moved by the last update: re-read)
                active = (~(done & was_done)).nonzero(as_tuple=True)[0]
                was_done = done
                self._rebuild(active)
                steps += 1
                sub, nll_sub, stop_sub, kl, decay = self._terms()
                loss = (nll_sub + spec.kl_factor * kl + decay)[~done[sub]].sum()
                self.nll = self.nll.detach().index_copy(0, sub, nll_sub.detach())
                self.stop = self.stop.index_copy(0, sub, stop_value(spec, stop_sub, kl, decay))
                self._step(loss, done)
        return self.delta, self.nll, steps
