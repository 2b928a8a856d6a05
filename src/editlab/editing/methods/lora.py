"""LoRA editing: the paper's editor (Hase et al. 2024, Sec. 5; Hu et al. 2021, "LoRA").

A rank-r adapter ``Delta W = (alpha / r) B A`` (B initialised to zero, so the edit starts at the base
model) is added to the MLP down-projection of every block and trained on the target NLL of the
request(s) (:func:`~editlab.editing.loss.target_nll`) with AdamW, constant learning rate and gradient
clipping. The reference code divides the object's summed NLL by the number of prompt and object tokens
(``loss_reduction: mean_with_prompt``); with the clip at 1.0 that scale decides how often the clip acts,
so the summed NLL (``sum``) is kept as an option, the one the tuned presets were chosen with. Weight decay
applies to the adapter matrices only (the base weights are frozen; a decay on them would pull the *model*
towards zero, which is not what the paper's 1e-4 meant).

``restore`` is PEFT's ``unload()``: the adapter modules are removed and the untouched base modules put
back (bit-exact). ``commit`` is ``merge_and_unload()``: ``W <- W + (alpha / r) B A``, so sequential
editing starts each edit from the merged model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftConfig, get_peft_model
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, StepHook
from editlab.editing.loss import OBJECTIVES, REDUCTIONS, fit, target_batch
from editlab.editing.registry import register
from editlab.editing.weights import module_names
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder

ADAPTER_MATRICES = ("lora_A", "lora_B", "lora_E")  # what weight decay applies to (lora_E: AdaLoRA's singular values)


@dataclass
class AdapterEdit(EditMethod):
    """Shared mechanics of PEFT adapter editors: inject, train on the target NLL, unload or merge.

    Attributes:
        modules: roles (``mlp_out``: the MLP down-projection) or module templates with ``{}`` for the block.
        layers: blocks to adapt (``None``: all; negative indices count from the last).
        lr, weight_decay, steps, clip: AdamW with a constant learning rate, gradient-norm clipping.
        objective: ``teacher_forced`` (default) or ``last_position`` (see editing/loss.py).
        loss_reduction: how each request's summed target NLL is scaled (editing/loss.py's ``REDUCTIONS``);
            the default is the per-object-token mean of EasyEdit's adapter editors, LoRA overrides it.
        stop_loss: stop once every request's target NLL per object token is below this (editing/loss.py's
            shared rule; 0: always run ``steps``).
    """

    supports_credence = True  # each request's loss is editing/loss.py's (credence targets)

    modules: list[str] = field(default_factory=lambda: ["mlp_out"])
    layers: list[int | str] | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-4
    steps: int = 40
    clip: float | None = 1.0
    objective: str = "teacher_forced"
    loss_reduction: str = "mean"
    stop_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_reduction not in REDUCTIONS:
            raise EditlabError(f"method {self.name}: loss_reduction={self.loss_reduction!r} must be one of "
                               f"{', '.join(REDUCTIONS)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.steps < 1 or (self.clip is not None and not self.clip > 0):
            raise EditlabError(f"method {self.name}: lr > 0, weight_decay >= 0, steps >= 1 and clip > 0 (or null)")
        if self.objective not in OBJECTIVES:
            raise EditlabError(f"method {self.name}: objective={self.objective!r} must be one of {OBJECTIVES}")
        if not self.modules:
            raise EditlabError(f"method {self.name}: modules must name at least one module template")

    def peft_config(self, targets: list[str]) -> PeftConfig:
        raise NotImplementedError

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        targets = module_names(model, self.modules, self.layers)
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)  # the adapter's random init (A ~ kaiming, B = 0)
            peft_model = get_peft_model(model, self.peft_config(targets))
        groups = adapter_param_groups(peft_model, self.weight_decay)
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups, lr=self.lr)
        batch = target_batch(PromptEncoder(ctx.tokenizer), requests).to(next(model.parameters()).device)
        info = fit(peft_model, batch, params, opt, self.steps, objective=self.objective,
                   reduction=self.loss_reduction, clip=self.clip,
                   extra_loss=self.extra_loss(peft_model), after_step=self.after_step(peft_model),
                   on_step=on_step, stop_loss=self.stop_loss)
        info["update_norm"] = adapter_update_norm(peft_model)

        def detach(merge: bool) -> nn.Module:
            base = peft_model.merge_and_unload() if merge else peft_model.unload()
            for n, p in base.named_parameters():
                p.requires_grad_(grad_flags[n])
            if hasattr(base, "peft_config"):  # PEFT leaves its config on the base model
                del base.peft_config
            return base

        return EditHandle(model, restore_fn=lambda: detach(False), commit_fn=lambda: detach(True), info=info)

    def extra_loss(self, peft_model: nn.Module):
        return None

    def after_step(self, peft_model: nn.Module):
        return None


def adapter_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on the adapter matrices, none on any other trainable parameter."""
    decay, rest = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (decay if any(f".{m}." in n for m in ADAPTER_MATRICES) else rest).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    return groups + ([{"params": rest, "weight_decay": 0.0}] if rest else [])


@torch.no_grad()
def adapter_update_norm(peft_model: nn.Module) -> float:
    """Frobenius norm of all adapters' weight updates together, sqrt(sum_l ||Delta W_l||_F^2)."""
    total = 0.0
    for m in peft_model.modules():
        if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {}):
            total += float(m.get_delta_weight("default").float().pow(2).sum())
    return total**0.5


@register
@dataclass
class LoRA(AdapterEdit):
    """The paper's LoRA editor: rank 1, alpha 8, no dropout, on down_proj of all layers, 40 AdamW steps, the
    object's NLL over the prompt and object tokens (Hase et al.'s ``main.py``)."""

    name = "lora"
    rank: int = 1
    alpha: float = 8.0
    dropout: float = 0.0
    loss_reduction: str = "mean_with_prompt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1 or not 0 <= self.dropout < 1:
            raise EditlabError("method lora: rank >= 1 and 0 <= dropout < 1")

    def peft_config(self, targets: list[str]) -> PeftConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none")
