"""The one-step edit of the gradient-reading hypernetworks (MEND, KE): read the edit's gradient, write the update.

Both record the gradient factors of the requests' target NLL on the edited Linear layers (factors.py), map them
through their trained network to one (d_out, d_in) update per layer, add it in place and hand back a handle that
restores the snapshot of exactly those weights (bit-exact) or keeps them (commit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook, snapshot
from editlab.editing.hyper.factors import Factors, record_factors
from editlab.editing.loss import target_batch, target_nll
from editlab.editing.weights import get_module, linear_weight, weight_param_name
from editlab.vocab import PromptEncoder

Updates = Callable[[Factors, torch.device], Iterable[torch.Tensor]]
"""``updates(factors, device)``: the (d_out, d_in) update of each edited layer, in order, from the recorded factors."""


def one_step_edit(model: nn.Module, names: Sequence[str], requests: Sequence[EditRequest], ctx: EditContext,
                  reduction: str, updates: Updates, on_step: StepHook | None = None) -> EditHandle:
    """Add ``updates`` of the requests' gradient factors to the layers ``names`` of ``model`` (one editor step)."""
    saved = snapshot(model, [weight_param_name(n) for n in names])
    device = next(model.parameters()).device
    batch = target_batch(PromptEncoder(ctx.tokenizer), requests).to(device)
    factors = record_factors(model, names, batch, reduction)
    with torch.no_grad():
        norms = []
        for name, upd in zip(names, updates(factors, device), strict=True):
            linear_weight(get_module(model, name)).add_(upd.to(saved[weight_param_name(name)].dtype))
            norms.append(float(upd.norm()))
        final = float(target_nll(model, batch, reduction=reduction))
    if on_step is not None:
        on_step(1, model)
    return EditHandle(model, touched=saved, info={"steps": 1, "loss_initial": float(factors.loss) / len(requests),
                                                  "loss_final": final, "update_norm": max(norms)})
