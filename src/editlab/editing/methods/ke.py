"""KE: KnowledgeEditor (De Cao et al. 2021, "Editing Factual Knowledge in Language Models"; reference code
``nicola-decao/KnowledgeEditor``, ``src/models/one_shot_learner.py`` and ``bart_seq2seq_augmented_kilt.py``).

An edit is one forward/backward pass of the edit loss (the request's target NLL) on the model, whose gradient
``dL/dW`` of each edited weight (default: ``mlp_in`` and ``mlp_out`` of the last 3 blocks; gradients from the
factors of editing/hyper/factors.py, ``dL/dW = sum_i delta_i u_i^T``) a hypernetwork conditioned on the request
(methods/ke_net.py: a bidirectional LSTM over its tokens) turns into the update
``dW = max_scale sigmoid(eta) (grad * a_row a_col^T + b_row b_col^T)``; ``W' = W + dW``, one step per edit.

Meta-training (``python train.py task=editor method=ke``) is the reference's constrained objective: per
example, the edit term (NLL of its equivalents under the edited weights, editing/hyper/meta_loss.py) plus
``alpha_kl * (KL - margin_kl)``, the KL of the base model's to the edited model's predictions on locality
facts of other subjects. ``alpha_kl`` is a Lagrange multiplier trained by gradient *ascent* (its gradient is
negated, so it grows while the KL exceeds the margin and shrinks otherwise) and kept >= 0; the margin starts at
``margin_kl_max`` and shrinks by ``margin_decay`` at every validation whose edit success exceeds
``margin_success``, down to ``margin_kl_min``. Centred RMSprop (``lr`` for the hypernetwork, ``lr_alpha`` for the
multiplier) with a linear warm-up over ``warmup_steps`` and a linear decay to 0 at ``total_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook
from editlab.editing.hyper.factors import Factors, record_factors
from editlab.editing.hyper.meta_loss import mean_stats, meta_terms
from editlab.editing.hyper.step import one_step_edit
from editlab.editing.loss import REDUCTIONS, target_batch
from editlab.editing.meta_data import MetaBatch
from editlab.editing.methods.ke_net import KnowledgeEditorNet
from editlab.editing.methods.serac_model import prepend
from editlab.editing.registry import register
from editlab.editing.trainable import EditorTraining, NetworkEditor, load_network
from editlab.editing.weights import get_module, is_transposed, weight_param_name
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder, prompt_ids


def condition_ids(tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest]) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioner's input: ``BOS "s r o*"`` per request, right-padded, with its mask."""
    return prepend([[]] * len(requests), prompt_ids(tok, [r.sentence for r in requests]), tok.pad_token_id)


def gradients(factors: Factors, modules: Sequence[str], n: int) -> list[torch.Tensor]:
    """Per module, (n, d_out, d_in) ``dL/dW`` of each request's own loss, from its recorded factors."""
    out = []
    for name in modules:
        rows = [factors.of(name, b) for b in range(n)]
        out.append(torch.stack([delta.T @ u for u, delta in rows]))
    return out


def with_updates(base: nn.Module, modules: Sequence[str], updates: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> ``W + dW`` in storage orientation (for ``functional_call``), a (d_out, d_in) dW per module."""
    out = {}
    for name, upd in zip(modules, updates, strict=True):
        module = get_module(base, name)
        upd = upd.to(module.weight.dtype)
        out[weight_param_name(name)] = module.weight + (upd.T if is_transposed(module) else upd)
    return out


class KeTrainer(L.LightningModule):
    """Meta-trains KE's hypernetwork on a frozen base model under the constrained objective (module docstring)."""

    def __init__(self, method: KE, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.method, self.tok, self.enc = method, tokenizer, PromptEncoder(tokenizer)
        self.base = base.requires_grad_(False).eval()
        self.modules_ = method.module_names(base)
        self.editor = method.build_editor(base)
        self.alpha_kl = nn.Parameter(torch.tensor(float(method.alpha_kl_init)))
        self.alpha_kl.register_hook(torch.neg)  # gradient ascent on the multiplier
        self.register_buffer("margin_kl", torch.tensor(float(method.margin_kl_max)))
        self._val_hits: list[float] = []

    def train(self, mode: bool = True) -> KeTrainer:
        super().train(mode)
        self.base.eval()
        return self

    def constraint(self, kl: torch.Tensor) -> torch.Tensor:
        """The Lagrangian term ``alpha_kl * (KL - margin_kl)``."""
        return self.alpha_kl * (kl - self.margin_kl)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over the batch of ``edit + alpha_kl (KL - margin)``, each example under its own edit."""
        reqs = [ex.request for ex in batch]
        factors = record_factors(self.base, self.modules_, target_batch(self.enc, reqs).to(self.device),
                                 self.method.loss_reduction)
        ids, mask = condition_ids(self.tok, reqs)
        updates = self.editor(ids.to(self.device), mask.to(self.device), gradients(factors, self.modules_, len(reqs)))
        losses, stats = [], []
        for b, ex in enumerate(batch):
            params = with_updates(self.base, self.modules_, [u[b] for u in updates])
            terms, st = meta_terms(self.base, params, self.enc, [ex], self.device, self.method.loss_reduction)
            edit, kl = terms[0]
            losses.append(edit + self.constraint(kl))
            stats.append(st[0])
        return torch.stack(losses).mean(), mean_stats(stats)

    def training_step(self, batch: MetaBatch, batch_idx: int) -> torch.Tensor:
        loss, s = self.meta_loss(batch)
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in s.items()}, batch_size=len(batch))
        self.log_dict({"train/alpha_kl": self.alpha_kl.detach(), "train/margin_kl": self.margin_kl},
                      batch_size=len(batch))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """The multiplier stays >= 0 (the reference clamps it before every zero_grad)."""
        with torch.no_grad():
            self.alpha_kl.clamp_(min=0.0)

    def on_validation_epoch_start(self) -> None:
        self._val_hits = []

    def validation_step(self, batch: MetaBatch, batch_idx: int) -> None:
        with torch.inference_mode(False), torch.enable_grad():  # the edit needs the LM's gradient
            loss, s = self.meta_loss(batch)
        self._val_hits.append((s["edit_success"] * len(batch), len(batch)))
        self.log("val/loss", loss.detach(), batch_size=len(batch))
        self.log_dict({f"val/{k}": v for k, v in s.items()}, batch_size=len(batch), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        """Tighten the margin after a validation whose edit success exceeds ``margin_success`` (this rank's cases)."""
        n = sum(k for _, k in self._val_hits)
        if n and sum(h for h, _ in self._val_hits) / n > self.method.margin_success:
            self.margin_kl.fill_(max(float(self.margin_kl) * self.method.margin_decay, self.method.margin_kl_min))

    def configure_optimizers(self):
        m = self.method
        opt = torch.optim.RMSprop([{"params": list(self.editor.parameters()), "lr": m.lr},
                                   {"params": [self.alpha_kl], "lr": m.lr_alpha}], centered=True)

        def schedule(step: int) -> float:
            if step < m.warmup_steps:
                return step / m.warmup_steps
            return max(0.0, (m.total_steps - step) / max(1, m.total_steps - m.warmup_steps))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


@register
@dataclass
class KE(NetworkEditor):
    """KE (see the module docstring). Defaults: the reference code's (``bart_seq2seq_augmented_kilt.py``).

    Attributes:
        modules, layers: the edited Linear layers, named as MEND names them (roles or templates; blocks).
        hidden_dim: LSTM width per direction and hidden width of each weight's MLP (the reference: 128).
        condition_dim: width of the condition vector (1024).
        max_scale: scale of every update (the reference's training script: 1).
        lr, lr_alpha: RMSprop learning rates of the hypernetwork (3e-4) and of the multiplier (0.1).
        alpha_kl_init: initial Lagrange multiplier (1).
        margin_kl_max, margin_kl_min: the KL margin's start (1e-3) and floor (1e-5).
        margin_decay, margin_success: the margin is multiplied by ``margin_decay`` (0.8) after a validation
            whose edit success exceeds ``margin_success`` (0.9).
        warmup_steps, total_steps: linear warm-up (1000) and linear decay to 0 at ``total_steps`` (200000).
        loss_reduction: how each edit's and each equivalent's summed NLL is scaled (the reference: ``mean``
            per target token).
    """

    name = "ke"
    modules: list[str] = field(default_factory=lambda: ["mlp_in", "mlp_out"])
    layers: list[int | str] = field(default_factory=lambda: [-3, -2, -1])
    hidden_dim: int = 128
    condition_dim: int = 1024
    max_scale: float = 1.0
    lr: float = 3.0e-4
    lr_alpha: float = 1.0e-1
    warmup_steps: int = 1000
    total_steps: int = 200000
    margin_kl_max: float = 1.0e-3
    margin_kl_min: float = 1.0e-5
    loss_reduction: str = "mean"
    margin_decay: float = 0.8
    margin_success: float = 0.9
    alpha_kl_init: float = 1.0
    editor: KnowledgeEditorNet | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hidden_dim < 1 or self.condition_dim < 1 or not self.modules:
            raise EditlabError(f"method ke: hidden_dim and condition_dim >= 1 and at least one module role "
                               f"(got {self.hidden_dim}, {self.condition_dim}, {self.modules})")
        if not self.max_scale > 0 or not self.lr > 0 or self.lr_alpha < 0 or self.alpha_kl_init < 0:
            raise EditlabError("method ke: max_scale > 0, lr > 0, lr_alpha >= 0 and alpha_kl_init >= 0")
        if not 0 < self.margin_kl_min <= self.margin_kl_max or not 0 < self.margin_decay <= 1:
            raise EditlabError(f"method ke: 0 < margin_kl_min <= margin_kl_max and 0 < margin_decay <= 1 (got "
                               f"{self.margin_kl_min}, {self.margin_kl_max}, {self.margin_decay})")
        if self.warmup_steps < 0 or self.total_steps <= self.warmup_steps:
            raise EditlabError(f"method ke: 0 <= warmup_steps < total_steps (got {self.warmup_steps}, "
                               f"{self.total_steps})")
        if self.loss_reduction not in REDUCTIONS:
            raise EditlabError(f"method ke: loss_reduction={self.loss_reduction!r} must be one of "
                               f"{', '.join(REDUCTIONS)}")

    def build_editor(self, model: nn.Module) -> KnowledgeEditorNet:
        """An untrained hypernetwork for ``model``'s edited weights, its embeddings copied from the model's."""
        return KnowledgeEditorNet(self.weight_shapes(model), model.get_input_embeddings().weight, self.hidden_dim,
                                  self.condition_dim, self.max_scale)

    def training_module(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        training: EditorTraining) -> L.LightningModule:
        return KeTrainer(self, base, tokenizer)

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        """Load the trained hypernetwork (checked against ``ctx.model_id``) into a network shaped for ``model``."""
        super().prepare(model, ctx)
        self.editor = load_network(self.build_editor(model), self._weights, ctx.editor_path,
                                   "modules/layers/hidden_dim/condition_dim")

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        self.trained_editor().to(next(model.parameters()).device).eval()
        names = self.module_names(model)
        ids, mask = condition_ids(ctx.tokenizer, requests)

        def updates(factors: Factors, device: torch.device) -> list[torch.Tensor]:
            per_request = self.editor(ids.to(device), mask.to(device), gradients(factors, names, len(requests)))
            return [u.sum(0) for u in per_request]  # a batch: the requests' updates added, each from its own gradient

        return one_step_edit(model, names, requests, ctx, self.loss_reduction, updates, on_step)
