"""The rank-1 factors of a layer's gradient, recorded by hooks (MEND's gradient decomposition).

For a Linear layer ``y = W u`` applied at every token, the gradient of a loss is
``dL/dW = sum_i delta_i u_i^T`` with ``u_i`` the layer's input and ``delta_i = dL/dy_i`` its output
gradient at token ``i``. MEND and MALMEN never form ``dL/dW``: they read ``u`` with a forward hook and
``delta`` as the gradient w.r.t. the hooked output, and map the pair per token. GPT-2's ``Conv1D``
computes ``y = u W`` with ``W`` stored (d_in, d_out); its input and output are the same ``u`` and ``y``,
so the factors are orientation-free and the update is written through
:func:`~editlab.editing.weights.linear_weight`'s (d_out, d_in) view.

The loss is the sum over requests of the target NLL (editing/loss.py, the evaluation's
tokenisation) under the method's reduction (``sum``, or ``mean`` per object token as MEND's and MALMEN's
reference code), so each row's ``delta`` is the gradient of that row's own edit alone and one pass
serves a whole batch of independent edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editlab.editing.loss import TargetBatch, target_nll
from editlab.editing.weights import get_module


@dataclass
class Factors:
    """Per hooked module: ``u`` (B, T, d_in) and ``delta`` (B, T, d_out), float32, detached.

    Attributes:
        rows: (B, T) bool, the token positions whose output reaches the loss (every real token but the
            last of each row: the last object token predicts nothing); ``delta`` is zero elsewhere.
        loss: the loss the gradients are of, the sum over requests of each one's reduced target NLL (detached).
    """

    u: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    rows: torch.Tensor
    loss: torch.Tensor

    def of(self, name: str, row: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, delta) token rows of module ``name`` that carry gradient: of request ``row``, or of all rows."""
        u, d = self.u[name], self.delta[name]
        if row is None:
            return u[self.rows], d[self.rows]
        return u[row][self.rows[row]], d[row][self.rows[row]]


def gradient_rows(batch: TargetBatch) -> torch.Tensor:
    """(B, T) positions whose output reaches the target loss: real tokens before each row's last."""
    lengths = batch.mask.sum(1, keepdim=True)
    return torch.arange(batch.ids.shape[1], device=batch.ids.device)[None, :] < lengths - 1


def record_factors(model: nn.Module, modules: Sequence[str], batch: TargetBatch, reduction: str = "sum") -> Factors:
    """Run ``model`` on ``batch`` with hooks on ``modules`` and return the factors of the sum over requests of
    the target NLL under ``reduction`` (editing/loss.py).

    Only gradients w.r.t. the hooked outputs are taken (``torch.autograd.grad``), so no parameter gets
    a ``.grad`` and the model's weights need not require grad (a frozen base model works too).
    """
    us: dict[str, torch.Tensor] = {}
    outs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_mod: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            us[name] = inputs[0].detach().float()
            if not out.requires_grad:  # frozen weights below: make the output a leaf to differentiate at
                out = out.detach().requires_grad_(True)
            outs[name] = out
            return out

        return record

    handles = [get_module(model, n).register_forward_hook(hook(n)) for n in modules]
    try:
        with torch.enable_grad():
            loss = target_nll(model, batch, reduction=reduction) * batch.ids.shape[0]
            grads = torch.autograd.grad(loss, [outs[n] for n in modules])
    finally:
        for h in handles:
            h.remove()
    return Factors(us, {n: g.detach().float() for n, g in zip(modules, grads, strict=True)}, gradient_rows(batch),
                   loss.detach())


def answer_rows(batch: TargetBatch) -> torch.Tensor:
    """(B, T) positions whose output predicts an object token (the last prompt token and every object token
    but the last): MALMEN's keys (the official code's ``token: ans``)."""
    rows = torch.zeros_like(batch.target)
    rows[:, :-1] = batch.target[:, 1:]
    return rows


def last_prompt_rows(batch: TargetBatch) -> torch.Tensor:
    """(B, T) the last prompt token of each row (the position that predicts the object's first token)."""
    rows = torch.zeros_like(batch.target)
    rows[torch.arange(rows.shape[0], device=rows.device), batch.last_prompt.to(rows.device)] = True
    return rows


KEY_TOKENS = {"answer": answer_rows, "last_prompt": last_prompt_rows}
"""Where MALMEN reads its keys: every answer row (the official code), or one row per edit at the last prompt
token (MEMIT's ``fact_token: last``)."""


def record_keys(model: nn.Module, modules: Sequence[str], batch: TargetBatch, chunk: int, key_tokens: str = "answer",
                reduction: str = "sum") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per module, the keys ``u`` (N, d_in) and value gradients ``delta`` (N, d_out) at the rows ``key_tokens``
    (:data:`KEY_TOKENS`) of every request of ``batch``, recorded ``chunk`` requests at a time (the target NLL
    under ``reduction``).

    The LM's forward/backward memory is that of one chunk; what is kept grows with the number of
    edits only by these N token rows (the official code caches the same tensors on disk).
    """
    keys: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    for start in range(0, batch.ids.shape[0], chunk):
        width = int(batch.mask[start: start + chunk].sum(1).max())  # this chunk's own padding only
        part = TargetBatch(batch.ids[start: start + chunk, :width], batch.mask[start: start + chunk, :width],
                           batch.target[start: start + chunk, :width], batch.last_prompt[start: start + chunk])
        f = record_factors(model, modules, part, reduction)
        rows = KEY_TOKENS[key_tokens](part)
        for n in modules:
            keys[n].append(f.u[n][rows])
            grads[n].append(f.delta[n][rows])
    return {n: torch.cat(v) for n, v in keys.items()}, {n: torch.cat(v) for n, v in grads.items()}
