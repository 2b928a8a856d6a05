"""The meta-loss of the gradient editors (MEND, MALMEN) on meta-training examples, under edited weights.

Per example (editing/meta_data.py): ``c_edit * NLL(equivalents | edited) + c_loc * KL(p_base || p_edited)``
over the object positions of its locality facts (Mitchell et al. 2022, Sec. 3.1; Tan et al. 2024, Eq. 6),
plus, with soft downstream targets, ``-sum_o q(o) log p(o | s r2)`` in the edit term. Each row's NLL is
scaled by the method's ``reduction`` (editing/loss.py; both reference codes average over the label
tokens, ``sum`` keeps the summed NLL); the KL is averaged over the locality facts' object positions. The edited weights
go into the frozen base model with ``torch.func.functional_call`` (the base is never written).

:func:`meta_losses` scores several examples under one set of edited weights in one forward pass: MEND
calls it with one example (its own weights per edit), MALMEN with a chunk of the examples whose edits
were aggregated into one shift (its split backward pass runs the LM chunk by chunk).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.func import functional_call

from editlab.editing.loss import TargetBatch, reduce_nll, target_batch
from editlab.editing.meta_data import MetaExample, Target
from editlab.vocab import PromptEncoder


def object_logits(logits: torch.Tensor, batch: TargetBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at the positions that predict object tokens (N, V), the object tokens (N,))."""
    pos = batch.target[:, 1:]
    return logits[:, :-1][pos], batch.ids[:, 1:][pos]


def argmax_hits(logits: torch.Tensor, batch: TargetBatch) -> torch.Tensor:
    """(B,) whether every object token of each row is the argmax given the gold prefix."""
    pos = batch.target[:, 1:]
    ok = (logits[:, :-1].argmax(-1) == batch.ids[:, 1:]) | ~pos
    return ok.all(-1)


def rows_of(batch: TargetBatch, rows: slice) -> TargetBatch:
    """The rows ``rows`` of ``batch``."""
    return TargetBatch(batch.ids[rows], batch.mask[rows], batch.target[rows], batch.last_prompt[rows])


def edited_logits(base: nn.Module, params: dict[str, torch.Tensor], batch: TargetBatch) -> torch.Tensor:
    """Float logits of ``base`` with the parameters ``params`` (name -> tensor) replaced."""
    return functional_call(base, params, args=(), kwargs={"input_ids": batch.ids, "attention_mask": batch.mask,
                                                           "use_cache": False}).logits.float()


def meta_losses(base: nn.Module, params: dict[str, torch.Tensor], enc: PromptEncoder,
                examples: Sequence[MetaExample], c_edit: float, c_loc: float,
                device: torch.device, reduction: str) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
    """(meta-loss ``c_edit * edit + c_loc * KL`` of each example under the edited weights ``params``, its metrics
    (:func:`meta_terms`))."""
    terms, stats = meta_terms(base, params, enc, examples, device, reduction)
    return [c_edit * edit + c_loc * kl for edit, kl in terms], stats


def meta_terms(base: nn.Module, params: dict[str, torch.Tensor], enc: PromptEncoder, examples: Sequence[MetaExample],
               device: torch.device, reduction: str
               ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[dict[str, float]]]:
    """((edit term, locality KL) of each example under the edited weights ``params``, its metrics): the two
    terms apart, for objectives that weigh them otherwise (KE's Lagrange multiplier on the KL).

    Metrics per example: ``edit_loss``, ``loc_kl``, ``edit_success`` (the request's object tokens all
    argmax), ``tf_success`` (the same for the other equivalents), ``locality`` (share of locality facts
    whose next-token argmax at the prompt's end is unchanged).
    """
    rows: list[Target] = []
    spans = []
    for ex in examples:
        soft = [(s, o) for s in ex.soft for o in s.objects]
        spans.append((len(rows), len(ex.equivalents), len(soft), len(ex.locality)))
        rows += list(ex.equivalents) + [Target(s.prompt, o) for s, o in soft] + list(ex.locality)
    batch = target_batch(enc, rows).to(device)
    with torch.no_grad():
        base_logits = base(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False).logits.float()
    edited = edited_logits(base, params, batch)
    logp = torch.log_softmax(edited, -1)
    tok_lp = logp[:, :-1].gather(-1, batch.ids[:, 1:, None])[..., 0] * batch.target[:, 1:]
    seq_lp = -reduce_nll(-tok_lp.sum(-1), batch, reduction)  # (R,) log p(object | prompt) per row, reduced
    terms, stats = [], []
    for ex, (start, n_eq, n_soft, n_loc) in zip(examples, spans, strict=True):
        edit = -seq_lp[start: start + n_eq].mean()
        if n_soft:
            probs = torch.tensor([p for s in ex.soft for p in s.probs], device=device)
            edit = edit - (probs * seq_lp[start + n_eq: start + n_eq + n_soft]).sum() / len(ex.soft)
        loc = slice(start + n_eq + n_soft, start + n_eq + n_soft + n_loc)
        if n_loc:
            part = rows_of(batch, loc)
            lb, le = object_logits(base_logits[loc], part), object_logits(edited[loc], part)
            pb, qe = torch.log_softmax(lb[0], -1), torch.log_softmax(le[0], -1)
            kl = (pb.exp() * (pb - qe)).sum(-1).mean()
            last = batch.last_prompt[loc]
            r = torch.arange(n_loc, device=device)
            kept = float((base_logits[loc][r, last].argmax(-1) == edited[loc][r, last].argmax(-1)).float().mean())
        else:  # MALMEN drops locality facts its batch edits (without_edited_facts): nothing to keep
            kl, kept = edit.new_zeros(()), float("nan")
        terms.append((edit, kl))
        eq = slice(start, start + n_eq)
        hits = argmax_hits(edited[eq].detach(), rows_of(batch, eq))
        stats.append({"edit_loss": edit.item(), "loc_kl": kl.item(), "edit_success": float(hits[0]),
                      "tf_success": float(hits[1:].float().mean()) if n_eq > 1 else float("nan"),
                      "locality": kept})
    return terms, stats


def without_edited_facts(examples: Sequence[MetaExample], also: Iterable[str] = ()) -> list[MetaExample]:
    """The examples with every locality fact dropped whose prompt is one the batch edits (``also``: prompts
    edited by the rest of the batch, held by other DDP ranks).

    When a batch's edits are aggregated into one shift (MALMEN), a locality fact ``s r -> o`` of one
    example may be the very prompt another example of the batch edits to ``o*``: keeping it would ask
    the one shift to both move and keep that answer. (One edit per example, as MEND, never meets it: an
    example's locality facts are of other subjects.)
    """
    edited = {ex.request.prompt for ex in examples} | set(also)
    return [replace(ex, locality=tuple(t for t in ex.locality if t.prompt not in edited)) for ex in examples]


def mean_stats(stats: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per metric, the mean over the examples that have it (NaN: an example without that part)."""
    out = {}
    for k in stats[0]:
        vals = [s[k] for s in stats if s[k] == s[k]]
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out
