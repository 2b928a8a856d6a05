"""Constrained fine-tuning of one MLP down-projection: FT-L and FT-M (one kernel, two defaults).

- **FT-L** (Zhu et al. 2020, "Modifying Memories in Transformer Models"; the ROME paper's baseline):
  Adam on one layer's weights with the L-infinity constraint ``|W - W0|_inf <= eps`` enforced by
  clamping after every step. ROME's hyper-parameters for GPT-2 XL: layer 0, 25 steps, lr 5e-4,
  eps 5e-4. Its code read *all* target tokens off the last prompt position; here the default is the
  correct teacher-forced likelihood and ``objective="last_position"`` reproduces the original for
  comparison (editing/loss.py). ROME's code averages the NLL over the object's tokens (``loss_reduction:
  mean``; ``baselines/ft/ft_main.py``).
- **FT-M** (EasyEdit/KnowEdit, Zhang et al. 2024): the same layer and optimiser, teacher-forced
  cross-entropy on the target tokens with the prompt masked, averaged over them (``objective_optimization:
  target_new`` of EasyEdit's ``models/ft/ft_main.py``), and no clamp.

EasyEdit's own "FT-L" is neither: ROME's last-position loss, without the clamp on its large-model configs
(docs/methods.md, FT-L). ``loss_reduction: sum`` (the summed object NLL) is kept as the alternative the
tuned presets were chosen with.

Only the chosen weight gets gradients (the loop differentiates w.r.t. it alone); ``restore`` copies
the snapshot back (bit-exact) and ``commit`` keeps the trained weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, StepHook, snapshot
from editlab.editing.loss import OBJECTIVES, REDUCTIONS, fit, target_batch
from editlab.editing.registry import register
from editlab.editing.weights import module_names, weight_param_name
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder


@dataclass
class FineTune(EditMethod):
    """The shared kernel: Adam on ``module.format(layer)``'s weight, optional L-infinity clamp.

    Attributes:
        layer: block index (negative counts from the last block) or a paper's block at its relative depth ("17/48").
        module: a role resolved by the architecture adapter (``mlp_out``) or a template with ``{}`` for the block.
        lr, steps, weight_decay: Adam (ROME/EasyEdit use no decay).
        norm_constraint: eps of the clamp ``|W - W0| <= eps`` after every step (``None``: no clamp).
        objective: ``teacher_forced`` or ``last_position`` (the original FT-L code).
        loss_reduction: how each request's summed target NLL is scaled (editing/loss.py's ``REDUCTIONS``;
            both reference codes: ``mean``, per object token).
        stop_loss: stop once every request's target NLL per object token is below this (editing/loss.py's
            shared rule; 0: always run ``steps``).
    """

    supports_credence = True  # each request's loss is editing/loss.py's (credence targets)

    layer: int | str = 0
    module: str = "mlp_out"
    lr: float = 5e-4
    steps: int = 25
    weight_decay: float = 0.0
    norm_constraint: float | None = None
    objective: str = "teacher_forced"
    loss_reduction: str = "mean"
    stop_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_reduction not in REDUCTIONS:
            raise EditlabError(f"method {self.name}: loss_reduction={self.loss_reduction!r} must be one of "
                               f"{', '.join(REDUCTIONS)}")
        if not self.lr > 0 or self.steps < 1 or self.weight_decay < 0:
            raise EditlabError(f"method {self.name}: lr > 0, steps >= 1 and weight_decay >= 0")
        if self.norm_constraint is not None and not self.norm_constraint > 0:
            raise EditlabError(f"method {self.name}: norm_constraint must be > 0 or null (no clamp)")
        if self.objective not in OBJECTIVES:
            raise EditlabError(f"method {self.name}: objective={self.objective!r} must be one of {OBJECTIVES}")

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        (name,) = [weight_param_name(n) for n in module_names(model, [self.module], [self.layer])]
        saved = snapshot(model, [name])
        w, w0 = dict(model.named_parameters())[name], saved[name]
        opt = torch.optim.Adam([w], lr=self.lr, weight_decay=self.weight_decay)
        eps = self.norm_constraint

        @torch.no_grad()
        def clamp(_step: int) -> None:  # project back onto the L-infinity ball around W0
            w.copy_(torch.clamp(w, min=w0 - eps, max=w0 + eps))

        batch = target_batch(PromptEncoder(ctx.tokenizer), requests).to(w.device)
        info = fit(model, batch, [w], opt, self.steps, objective=self.objective, reduction=self.loss_reduction,
                   after_step=clamp if eps is not None else None, on_step=on_step, stop_loss=self.stop_loss)
        with torch.no_grad():
            diff = (w - w0).float()
            info.update(update_norm=float(diff.norm()), update_max_abs=float(diff.abs().max()), param=name)
        return EditHandle(model, touched=saved, info=info)


@register
@dataclass
class FTL(FineTune):
    """FT-L: ROME's constrained fine-tuning baseline (25 Adam steps, lr 5e-4, clamp 5e-4)."""

    name = "ft_l"
    norm_constraint: float | None = 5e-4


@register
@dataclass
class FTM(FineTune):
    """FT-M: EasyEdit's masked fine-tuning (teacher-forced target CE, no clamp)."""

    name = "ft_m"
    norm_constraint: float | None = None
