"""The pretraining LightningModule: next-token loss on packed rows, AdamW with decay on matrices only."""

from __future__ import annotations

import lightning as L
import torch
from transformers import PreTrainedModel

from editlab.lm.optim import param_groups
from editlab.lm.presets import Recipe
from editlab.lm.schedule import lr_factor


class PretrainModule(L.LightningModule):
    """Wraps a causal LM. ``total_steps`` sets the LR schedule's length (from the token budget)."""

    def __init__(self, model: PreTrainedModel, recipe: Recipe, total_steps: int, tokens_per_step: int,
                 compile: bool = False) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        # not a registered submodule: the state dict must hold the weights once, under "model."
        object.__setattr__(self, "_forward", torch.compile(model) if compile else model)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._forward(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            labels=batch["labels"], use_cache=False)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/tokens", float((self.global_step + 1) * self.tokens_per_step), on_step=True, on_epoch=False)
        return out.loss

    def configure_optimizers(self):
        r = self.recipe
        opt = torch.optim.AdamW(param_groups(self.model, r.weight_decay), lr=r.lr, betas=r.betas)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.total_steps, r.schedule, r.final_lr_frac, r.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
