"""AdaLoRA editing (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning").

The adapter is an SVD-shaped update ``Delta W = P diag(lambda) Q`` whose rank budget shrinks from
``init_r`` to ``target_r`` per matrix on average, pruning the singular values with the lowest
(smoothed) sensitivity ``|w * grad|`` (AdaLoRA Eq. 7-9). The edit objective is the shared target NLL
(FT-M's teacher-forced loss, methods.md) plus AdaLoRA's orthogonality penalty
``R = ||P^T P - I||_F + ||Q Q^T - I||_F`` (Eq. 4), which PEFT only adds when the model computes its
own loss from labels, so it is added here explicitly.

Schedule (PEFT's three phases): ``tinit`` warm-up steps at the full budget, cubic budget decay until
``steps - tfinal``, then ``tfinal`` steps at the final ranks. ``update_and_allocate`` runs after each
optimizer step with the gradients still in place (it reads them), as PEFT requires.

Defaults: AdaLoRA's own (init_r 12, target_r 8, beta1 = beta2 = 0.85, orth weight 0.5) on the
paper's LoRA edit schedule (down_proj of all layers, AdamW lr 1e-4, weight decay 1e-4, 40 steps,
clip 1) so the two adapter editors differ in the adapter and in how the NLL is scaled: AdaLoRA's editing
reference (EasyEdit's ``models/lora/lora_main.py`` with ``lora_type: adalora``, the model's own label loss)
averages it over the object's tokens (``loss_reduction: mean``), LoRA's over prompt and object tokens.
restore/commit as LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import AdaLoraConfig, PeftConfig
from torch import nn

from editlab.editing.methods.lora import AdapterEdit
from editlab.editing.registry import register
from editlab.errors import EditlabError


@register
@dataclass
class AdaLoRA(AdapterEdit):
    """AdaLoRA on down_proj of all layers with the FT-M objective."""

    name = "adalora"
    init_r: int = 12
    target_r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    tinit: int = 10
    tfinal: int = 10
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.target_r <= self.init_r:
            raise EditlabError("method adalora: 1 <= target_r <= init_r")
        if not 0 <= self.tinit < self.steps - self.tfinal or self.tfinal < 0 or self.delta_t < 1:
            raise EditlabError("method adalora: need 0 <= tinit < steps - tfinal, tfinal >= 0 and delta_t >= 1")

    def peft_config(self, targets: list[str]) -> PeftConfig:
        return AdaLoraConfig(init_r=self.init_r, target_r=self.target_r, lora_alpha=self.alpha,
                             lora_dropout=self.dropout, target_modules=targets, tinit=self.tinit, tfinal=self.tfinal,
                             deltaT=self.delta_t, beta1=self.beta1, beta2=self.beta2,
                             orth_reg_weight=self.orth_reg_weight, total_step=self.steps)

    def extra_loss(self, peft_model: nn.Module):
        if self.orth_reg_weight == 0:
            return None
        mats = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad and (".lora_A." in n or
                                                                                        ".lora_B." in n)]

        def orth() -> torch.Tensor:  # AdaLoRA Eq. 4, averaged over matrices as in PEFT
            total = 0.0
            for n, p in mats:
                cov = p @ p.T if ".lora_A." in n else p.T @ p  # A: (r, d_in) rows; B: (d_out, r) columns
                total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=p.device, dtype=p.dtype))
            return self.orth_reg_weight * total / len(mats)

        return orth

    def after_step(self, peft_model: nn.Module):
        # PEFT counts steps from 0; the final-phase mask starts at step (steps - tfinal).
        return lambda step: peft_model.base_model.update_and_allocate(step - 1)
