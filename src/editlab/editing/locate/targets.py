"""Target-vector optimisation: ROME's ``compute_v`` and MEMIT's ``compute_z``, one kernel.

For each request a vector ``delta`` is added to the output of one module at the subject's last token
(ROME: the edited MLP's output, ROME Sec. 3.1 Eq. 4; MEMIT/AlphaEdit: the residual stream, i.e. the
output of the last edited block, MEMIT Sec. 4.2 Eq. 16) in every context template, and optimised with
Adam on

    L(delta) = mean_j NLL(o* | x_j + s r)                       (the requested object, teacher-forced)
             + kl_factor * KL(p(. | s) || p_delta(. | s))        (the "essence" prompt keeps what s is)
             + weight_decay * ||delta|| / ||h||^2                 (ROME's norm penalty, as in its code)

with ``delta`` clamped to ``||delta|| <= clamp_norm_factor * ||h||`` after every step, where ``h`` is the
module's current output at that position averaged over the templates. The NLL of a template is the
object's summed token NLL divided by its length (ROME's ``nll_loss_each``); the KL is read at the
subject's last token of the essence prompt ``"{subject} <essence>"`` (ROME's ``"{} is a"`` with
``fact_token=subject_last``). Optimisation stops for a request once its NLL is below ``stop_loss``
(ROME: 5e-2).

Many requests are optimised together (MEMIT computes thousands of targets): each request has its own
``delta`` row and its own loss terms, the total loss is their sum and Adam is element-wise, so this is
exactly independent optimisation per request (a finished request's row is frozen), at the cost of
one batched forward pass per step instead of one per request. That pass computes only what ``delta``
changes: the rows' tails from the subject position on, above the edited module, with the output head
only where the loss reads it, rows grouped by tail length (:mod:`editlab.editing.locate.passes`).

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
from editlab.editing.locate.keys import per_request_mean
from editlab.editing.locate.passes import FullPass, tail_pass
from editlab.editing.locate.rows import build_rows, concat

CHUNK_REQUESTS = 128
"""Requests optimised together in one batched forward pass (1000 MEMIT edits on mistral_tiny, one AVX512 thread:
64 -> 80 s, 128 -> 68 s, 256 -> 67..72 s, 512 -> 80 s and 2.3 GB peak)."""


@dataclass(frozen=True)
class TargetSpec:
    """Hyper-parameters of the target optimisation (ROME's ``v_*`` / MEMIT's ``z_*`` values)."""

    lr: float = 0.5
    steps: int = 20
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    stop_loss: float = 5e-2
    essence: str = "is a"
    fact_token: str = "subject_last"


@dataclass
class Targets:
    """Result per request: ``delta`` (n, d), the averaged current output ``h`` (n, d), the averaged key of
    the hooked module ``key`` (n, d_in) and diagnostics."""

    delta: torch.Tensor
    h: torch.Tensor
    key: torch.Tensor
    info: dict


def optimise_targets(model: nn.Module, module: nn.Module, tok: PreTrainedTokenizerBase,
                     requests: Sequence[EditRequest], templates: Sequence[str], spec: TargetSpec,
                     fast: bool = True, shared_keys: bool = False) -> Targets:
    """``delta`` per request on ``module``'s output at the subject's last token (see the module docstring).

    ``fast`` computes each step's forward pass with :func:`~editlab.editing.locate.passes.tail_pass` (only
    what ``delta`` changes); ``fast=False`` with the plain full pass. Same math, same result up to float rounding.
    ``shared_keys``: one ``delta`` per distinct key, optimised on all its requests' losses.
    """
    group = _key_groups(requests, spec.fact_token) if shared_keys else list(range(len(requests)))
    chunks = _chunks_of_groups(group)
    parts = [_chunk(model, module, tok, [requests[i] for i in idx], templates, spec, fast, [group[i] for i in idx])
             for idx in chunks]
    order = torch.tensor([i for idx in chunks for i in idx]).argsort()  # back to the requests' order
    delta, h, key, nll = (torch.cat([p[i] for p in parts])[order.to(parts[0][i].device)] for i in range(4))
    bad = [r.case_id or r.prompt for r, ok in zip(requests, torch.isfinite(delta).all(1).tolist(), strict=True)
           if not ok]
    if bad or not torch.isfinite(h).all() or not torch.isfinite(key).all():
        raise EditFailed(f"non-finite target vector for edit(s) {bad[:3] or 'of this batch'}; the model's outputs are "
                         "not finite there (check the checkpoint, or lower the method's lr)")
    norm, cap = delta.norm(dim=1), spec.clamp_norm_factor * h.norm(dim=1)
    info = {"target_nll_final": float(nll.mean()), "delta_norm": float(norm.mean()),
            "clamped": float((norm >= 0.999 * cap).float().mean()),  # share held at the norm clamp (diagnostic)
            "steps": max(p[4] for p in parts)}
    return Targets(delta.detach(), h, key, info)


def _key_groups(requests: Sequence[EditRequest], fact_token: str) -> list[int]:
    """Per request, the index of the first request with the same key (subject; and relation at ``last``)."""
    first: dict[tuple, int] = {}
    return [first.setdefault((r.subject,) if fact_token == "subject_last" else (r.subject, r.relation), i)
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


def _chunk(model: nn.Module, module: nn.Module, tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
           templates: Sequence[str], spec: TargetSpec, fast: bool, group: Sequence[int]) -> tuple[torch.Tensor, ...]:
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
    rows = concat(rew, ess, tok.pad_token_id).to(device)
    n_rew = rew.ids.shape[0]
    # the positions the loss reads: those predicting an object token (teacher forcing), then the essence's subject
    t_rows, t_cols = rows.target[:n_rew].nonzero(as_tuple=True)
    gold = rows.ids[t_rows, t_cols + 1]
    n_t = t_rows.shape[0]
    read_rows = torch.cat([t_rows, torch.arange(n, device=device) + n_rew])
    read_cols = torch.cat([t_cols, rows.subj[n_rew:]])
    n_tok = rows.target[:n_rew].sum(1)
    rew_req = rows.req[:n_rew]
    run = (tail_pass if fast else FullPass)(model, module, rows, read_rows, read_cols)

    def forward(delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(per-request NLL (n,), essence log-probs (n, V), what the hook read)."""
        logits, got = run(None if delta is None else delta[tie[rows.req]])
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok_lp = logp[:n_t].gather(-1, gold[:, None])[:, 0]
        per_row = -torch.zeros(n_rew, dtype=tok_lp.dtype, device=device).index_add(0, t_rows, tok_lp) / n_tok
        return per_request_mean(per_row[:, None], rew_req, n)[:, 0], logp[n_t:], got

    with torch.no_grad():  # the unedited model: current outputs h, keys, essence distributions
        nll, kl_init, got = forward(None)
        h = per_request_mean(got["output"][:n_rew].float(), rew_req, n)
        key = per_request_mean(got["input"][:n_rew].float(), rew_req, n)
    h_norm = h.norm(dim=1).clamp(min=1e-12)
    delta = torch.zeros_like(h, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=spec.lr)
    with torch.enable_grad():
        steps = 0
        for _ in range(spec.steps):
            still = (~(nll.detach() < spec.stop_loss)).float()  # a NaN loss is not done
            done = torch.zeros(n, device=device).index_add_(0, tie, still)[tie] == 0  # a shared delta: all its requests
            if bool(done.all()):
                break
            steps += 1
            nll, kl_lp, _ = forward(delta)
            kl = (kl_init.exp() * (kl_init - kl_lp)).sum(-1)
            decay = spec.weight_decay * delta[tie].norm(dim=1) / h_norm**2
            loss = (nll + spec.kl_factor * kl + decay)[~done].sum()
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            frozen = delta.detach()[done].clone()
            opt.step()
            with torch.no_grad():
                delta[done] = frozen
                norms = delta.norm(dim=1)
                cap = spec.clamp_norm_factor * h_norm
                delta.mul_(torch.where(norms > cap, cap / norms.clamp(min=1e-12), torch.ones_like(norms))[:, None])
    return delta.detach()[tie], h, key, nll.detach(), steps
