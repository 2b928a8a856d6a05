"""The one target loss every fine-tuning editor optimises: NLL of the requested object given its prompt.

Tokenisation is the evaluation's (evaluation.md, :class:`~editlab.vocab.PromptEncoder`):
BOS + tokens("s r") + tokens(" o*"), prompt and object tokenised separately, so the edit optimises
exactly the sequence that ``p_LM(o* | "s r")`` scores afterwards. Rows are right-padded; only the
object positions carry labels (the prompt is masked, FT-M / the paper's LoRA objective).

Two objectives:

- ``teacher_forced`` (default): ``-log p(o*|s r) = -sum_j log p(o_j | s r, o_<j)``, each object token
  predicted from the gold prefix (one forward pass over prompt + object);
- ``last_position``: the original FT-L/ROME code's objective, every object token read off the
  distribution at the *last prompt position*, ``-sum_j log p(o_j | s r)``. It is not the
  likelihood of a multi-token object; it is kept only to compare against the original numbers.

Both give each request's NLL summed over the object's tokens (:func:`request_nll`); the loss minimised is
the mean over requests of that NLL under a ``reduction`` (:data:`REDUCTIONS`), so a batch of k edits is one
loss whose scale does not grow with k:

- ``sum``: the summed NLL itself, ``-log p(o*|s r)``;
- ``mean``: divided by the object's number of tokens, the NLL per object token (the reference code of
  ROME's FT-L, EasyEdit's FT-M and LoRA, MEND, MALMEN: a cross-entropy averaged over the label tokens);
- ``mean_with_prompt``: divided by the number of prompt and object tokens (BOS not counted), the "avg per
  token" of Hase et al.'s LoRA code (``main.py``: the object's summed NLL over ``compute_num_tokens_in_batch``).

The reduction scales each request's gradient by a per-request constant; under Adam that matters through
the gradient clip, the balance of requests in a batch and Adam's epsilon, not through the step size.

Credence targets (``EditRequest.credence`` c, ``edits.target=credence``): the edit asks for p(o*|s r) = c, not 1
(a rational learner given the request as evidence of weight n' holds p* < 1). Each request's NLL is replaced by
the Bernoulli divergence of the whole object's probability p = exp(-NLL) from c (:func:`credence_loss`),
``KL(c || p) = c log(c/p) + (1-c) log((1-c)/(1-p))``, which is 0 exactly at p = c and *is* the NLL when c = 1, so
a certain request (the default, every paper's target) is optimised bit for bit as before. The reductions and the
stopping rule read |log p - log c| in place of the NLL (:func:`credence_gap`; the NLL at c = 1).

Early stopping (methods.md, "Early stopping"; ROME/MEMIT/AlphaEdit's target optimisation offers it as
``stop_on: nll``, their reference codes stop on the whole loss): a request is done once its NLL *per object
token* (:func:`stop_nll`, ROME's ``nll_loss_each``) is below ``stop_loss``; an edit stops, before its next
optimizer step, once every request of it is done. ``stop_loss`` 0 never stops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editlab.editing.base import EditRequest
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder

OBJECTIVES = ("teacher_forced", "last_position")
REDUCTIONS = ("sum", "mean", "mean_with_prompt")


@dataclass
class TargetBatch:
    """Right-padded BOS + prompt + object rows of a list of requests.

    Attributes:
        ids: (B, T) token ids, padded with the pad id.
        mask: (B, T) attention mask (1 on real tokens).
        target: (B, T) bool, True at the object's token positions (what the loss predicts).
        last_prompt: (B,) index of the last prompt token of each row.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    last_prompt: torch.Tensor
    credence: torch.Tensor | None = None
    """(B,) each request's target probability (:attr:`EditRequest.credence`); None when every request is certain."""

    def to(self, device: torch.device) -> TargetBatch:
        return TargetBatch(self.ids.to(device), self.mask.to(device), self.target.to(device),
                           self.last_prompt.to(device), None if self.credence is None else self.credence.to(device))


def target_batch(enc: PromptEncoder, requests: Sequence[EditRequest]) -> TargetBatch:
    """Build the loss batch of ``requests`` with the evaluation's tokenisation."""
    prompts = enc.prompts([("", r.prompt) for r in requests])
    objects = enc.objects([r.target for r in requests])
    width = max(len(p) + len(o) for p, o in zip(prompts, objects, strict=True))
    n = len(requests)
    ids = torch.full((n, width), enc.tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    target = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, o) in enumerate(zip(prompts, objects, strict=True)):
        ids[i, : len(p) + len(o)] = torch.tensor(p + o)
        mask[i, : len(p) + len(o)] = 1
        target[i, len(p) : len(p) + len(o)] = True
    last = torch.tensor([len(p) - 1 for p in prompts])
    return TargetBatch(ids, mask, target, last, credences(requests))


def credences(requests: Sequence[EditRequest]) -> torch.Tensor | None:
    """(B,) the requests' credences in float64, or None when all are certain (the loss is then the plain NLL). A row
    without a ``credence`` (a meta-training target, editing/meta_data.py) is certain."""
    c = [float(getattr(r, "credence", 1.0)) for r in requests]
    return None if all(x >= 1.0 for x in c) else torch.tensor(c, dtype=torch.float64)


def credence_loss(nll: torch.Tensor, credence: torch.Tensor | None) -> torch.Tensor:
    """Per request, ``KL(c || p)`` between Bernoulli(c) and Bernoulli(p = exp(-nll)) (module docstring): the NLL
    itself where c = 1 (and everywhere when ``credence`` is None); minimal, 0, at p = c. Same shape as ``nll``."""
    if credence is None:
        return nll
    c = credence.to(device=nll.device, dtype=nll.dtype)
    x = nll.clamp(min=1e-12)
    log_not_p = torch.where(x > 0.6931, torch.log1p(-torch.exp(-x)), torch.log(-torch.expm1(-x)))  # log(1 - p)
    soft = torch.xlogy(c, c) + c * x + torch.xlogy(1 - c, 1 - c) - (1 - c) * log_not_p
    return torch.where(c < 1, soft, nll)


def credence_gap(nll: torch.Tensor, credence: torch.Tensor | None) -> torch.Tensor:
    """Per request, ``|log p - log c|``: how far the object's log-probability is from its target's, what the stopping
    rule reads (a divergence threshold would stop far below c when c < 1: KL(0.95 || 0.88) is already 0.05). The NLL
    itself where c = 1 (and everywhere when ``credence`` is None)."""
    if credence is None:
        return nll
    c = credence.to(device=nll.device, dtype=nll.dtype)
    return torch.where(c < 1, (nll + torch.log(c)).abs(), nll)


def target_nll(model: nn.Module, batch: TargetBatch, objective: str = "teacher_forced",
               reduction: str = "sum") -> torch.Tensor:
    """Mean over requests of ``-log p(o* | s r)`` under ``objective`` and ``reduction`` (scalar, differentiable); a
    request with credence c < 1 contributes its :func:`credence_loss` instead."""
    return reduce_nll(credence_loss(request_nll(model, batch, objective), batch.credence), batch, reduction).mean()


def reduce_nll(per_request: torch.Tensor, batch: TargetBatch, reduction: str) -> torch.Tensor:
    """Each request's summed NLL (:func:`request_nll`, (B,)) under ``reduction`` (the module docstring), (B,)."""
    if reduction == "sum":
        return per_request
    if reduction == "mean":
        count = batch.target.sum(-1)
    elif reduction == "mean_with_prompt":
        count = batch.mask.sum(-1) - 1  # prompt + object tokens, BOS not counted
    else:
        raise EditlabError(f"reduction={reduction!r} must be one of {', '.join(REDUCTIONS)}")
    return per_request / count.clamp(min=1).to(per_request.dtype)


def request_nll(model: nn.Module, batch: TargetBatch, objective: str = "teacher_forced") -> torch.Tensor:
    """Per request, ``-log p(o* | s r)`` under ``objective``, summed over the object's tokens ((B,), differentiable)."""
    if objective not in OBJECTIVES:
        raise EditlabError(f"objective={objective!r} must be one of {', '.join(OBJECTIVES)}")
    logits = model(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False).logits.float()  # (B, T, V)
    logp = torch.log_softmax(logits, dim=-1)
    if objective == "teacher_forced":
        nxt = batch.ids[:, 1:]  # position t predicts token t + 1
        tok_lp = logp[:, :-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        per_request = -(tok_lp * batch.target[:, 1:]).sum(-1)
    else:
        rows = torch.arange(batch.ids.shape[0], device=batch.ids.device)
        last = logp[rows, batch.last_prompt]  # (B, V): the distribution after "s r"
        tok_lp = last.gather(-1, batch.ids)  # (B, T): log p(token at t | s r) for every t
        per_request = -(tok_lp * batch.target).sum(-1)
    return per_request


def stop_nll(per_request: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """The early-stopping quantity: each request's NLL (:func:`request_nll`, summed) divided by its number of
    object tokens, i.e. the mean of -log p over the object's tokens ((B,), detached), whatever the loss's
    reduction; for a credence c < 1 the distance :func:`credence_gap` |log p - log c| in its place."""
    return reduce_nll(credence_gap(per_request.detach(), batch.credence), batch, "mean")


def all_done(per_token: torch.Tensor, stop_loss: float) -> bool:
    """Whether every request is done: its per-token NLL is below ``stop_loss`` (a NaN is never done; 0 never stops)."""
    return bool((per_token < stop_loss).all())


def fit(model: nn.Module, batch: TargetBatch, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
        steps: int, *, objective: str = "teacher_forced", reduction: str = "sum", clip: float | None = None,
        extra_loss: Callable[[], torch.Tensor] | None = None, after_step: Callable[[int], None] | None = None,
        on_step: Callable[[int, nn.Module], None] | None = None, stop_loss: float = 0.0) -> dict[str, float]:
    """Minimise :func:`target_nll` over ``params`` for ``steps`` optimizer steps (the shared edit loop).

    Gradients are taken with ``torch.autograd.grad`` w.r.t. ``params`` only, so no other parameter of
    the model ever gets a ``.grad`` (an edit must leave nothing behind but its weight change).
    ``after_step(step)`` runs right after each optimizer step (FT-L's clamp, AdaLoRA's rank
    allocation, which needs the gradients still in place), then ``on_step(step, model)`` (tracing).
    The loss minimised is :func:`target_nll` under ``reduction`` (the batch mean of each request's reduced
    NLL); early stopping is the shared rule (module docstring): before each optimizer step, stop once every
    request's per-token NLL (:func:`stop_nll`) is below ``stop_loss`` (0 = never), whatever the reduction.

    Returns:
        ``loss_initial`` (before any step), ``loss_final`` (after the last step), both that loss, and
        ``steps`` taken.
    """
    if reduction not in REDUCTIONS:
        raise EditlabError(f"reduction={reduction!r} must be one of {', '.join(REDUCTIONS)}")
    params = list(params)
    first = None
    done = 0
    with torch.enable_grad():
        for step in range(1, steps + 1):
            raw = request_nll(model, batch, objective)
            nll = reduce_nll(credence_loss(raw, batch.credence), batch, reduction).mean()
            first = nll.item() if first is None else first
            if all_done(stop_nll(raw, batch), stop_loss):
                break
            loss = nll + extra_loss() if extra_loss is not None else nll
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            if after_step is not None:
                after_step(step)
            for p in params:
                p.grad = None
            done = step
            if on_step is not None:
                on_step(step, model)
    with torch.no_grad():
        final = float(target_nll(model, batch, objective, reduction))
    return {"loss_initial": final if first is None else first, "loss_final": final, "steps": done}
