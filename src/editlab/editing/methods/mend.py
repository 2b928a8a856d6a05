"""MEND: Model Editor Networks with Gradient Decomposition (Mitchell et al. 2022, "Fast Model Editing at Scale").

An edit is one forward/backward pass of the edit loss (the target NLL of ``"s r" -> o*``) on the model,
whose per-token gradient factors ``(u, delta)`` of each edited Linear (default: both MLP matrices,
roles ``mlp_in`` and ``mlp_out``, of the last 3 blocks) a meta-learned editor maps to a weight change
``W' = W - alpha_l sum_i delta~_i u~_i^T`` (editing/hyper/: one identity-initialised low-rank network
per weight shape, shared across layers with per-layer scale and shift, running normalisation of
``[u; delta]``, a learned step per layer).

The editor is meta-trained (``python train.py task=editor method=mend``) on the world's meta split
(editing/meta_data.py): for each example the edited weights are applied functionally
(``torch.func.functional_call``, the base model is never written) and the meta-loss is
``c_edit * NLL(equivalents | edited) + c_loc * KL(p_base || p_edited)`` on locality facts of other
subjects (c_edit 0.1, c_loc 1.0, the paper's values), optionally with the agent's posterior as soft
targets on downstream facts (``editor.soft_downstream``). The editor network and the steps are
optimised by Adam in two parameter groups (``lr``, ``lr_alpha``), as the paper's separate optimiser of
the step sizes, their joint gradient norm clipped at ``max_grad_norm`` (the code's ``grad_clip: 100``).

Both NLLs, the one whose gradient is decomposed and the equivalents' in the meta-loss, are scaled by
``loss_reduction`` (editing/loss.py): the reference code averages over the label tokens (``losses.py``,
``masked_log_probs``; one edit per example), ``sum`` keeps the summed NLL. The editor's block form is
``block`` (editing/hyper/mlp.py). Each default is the reference code's; the tuned presets pin the
alternatives their editors were meta-trained with (docs/methods.md, MEND, "Deviations").
 The update is written in place on the real weights at edit time (snapshot restore is
bit-exact; ``commit`` keeps it: sequential editing applies the editor to the model as it is now).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook
from editlab.editing.hyper.editor import GradientEditor
from editlab.editing.hyper.factors import Factors, record_factors
from editlab.editing.hyper.meta_loss import meta_losses
from editlab.editing.hyper.mlp import BLOCKS
from editlab.editing.hyper.step import one_step_edit
from editlab.editing.loss import REDUCTIONS, target_batch
from editlab.editing.meta_data import MetaBatch, MetaExample
from editlab.editing.registry import register
from editlab.editing.trainable import EditorTraining, NetworkEditor, editor_info, load_network
from editlab.editing.weights import get_module, is_transposed, weight_param_name
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder

TRAINED_BEFORE_OPTIONS = {"block": "bottleneck_relu", "loss_reduction": "sum"}
"""The hyper-parameters that change what a trained editor means, with the values an editor whose editor.json
predates them was meta-trained with."""


def edited_weights(editor: GradientEditor, base: nn.Module, modules: Sequence[str], factors: Factors,
                   row: int | None) -> dict[str, torch.Tensor]:
    """Parameter name -> edited weight (storage orientation) of the request ``row`` (None: all rows)."""
    out = {}
    for i, name in enumerate(modules):
        module = get_module(base, name)
        u, delta = factors.of(name, row)
        upd = editor.update(i, u, delta).to(module.weight.dtype)  # (d_out, d_in)
        out[weight_param_name(name)] = module.weight + (upd.T if is_transposed(module) else upd)
    return out


class MendTrainer(L.LightningModule):
    """Meta-trains a :class:`GradientEditor` on a frozen base model (MEND's meta-loss, see the module docstring)."""

    def __init__(self, method: Mend, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.method, self.enc = method, PromptEncoder(tokenizer)
        self.base = base.requires_grad_(False).eval()
        self.modules_ = method.module_names(base)
        self.editor = method.build_editor(base)

    def train(self, mode: bool = True) -> MendTrainer:
        super().train(mode)
        self.base.eval()  # the base LM is frozen; only the editor switches modes (its running statistics)
        return self

    def example_loss(self, ex: MetaExample, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(meta-loss of one example under its edited weights ``params``, its metrics)."""
        losses, stats = meta_losses(self.base, params, self.enc, [ex], self.method.c_edit, self.method.c_loc,
                                    self.device, self.method.loss_reduction)
        return losses[0], stats[0]

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean meta-loss over the batch's examples (one edit each, the base model's gradient factors)."""
        reqs = [ex.request for ex in batch]
        factors = record_factors(self.base, self.modules_, target_batch(self.enc, reqs).to(self.device),
                                 self.method.loss_reduction)
        losses, stats = [], []
        for i, ex in enumerate(batch):
            loss, s = self.example_loss(ex, edited_weights(self.editor, self.base, self.modules_, factors, i))
            losses.append(loss)
            stats.append(s)
        mean = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        return torch.stack(losses).mean(), mean

    def training_step(self, batch: MetaBatch, batch_idx: int) -> torch.Tensor:
        loss, s = self.meta_loss(batch)
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in s.items()}, batch_size=len(batch))
        self.log("train/alpha_mean", self.editor.alpha.detach().mean(), batch_size=len(batch))
        return loss

    def validation_step(self, batch: MetaBatch, batch_idx: int) -> None:
        with torch.inference_mode(False), torch.enable_grad():  # the edit needs the LM's gradient factors
            loss, s = self.meta_loss(batch)
        self.log("val/loss", loss.detach(), batch_size=len(batch))
        self.log_dict({f"val/{k}": v for k, v in s.items()}, batch_size=len(batch), prog_bar=True)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """The method's ``max_grad_norm`` over every editor parameter (``None``: no clipping)."""
        if self.method.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.method.max_grad_norm, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        nets = [p for n, p in self.editor.named_parameters() if n != "alpha"]
        return torch.optim.Adam([{"params": nets, "lr": self.method.lr},
                                 {"params": [self.editor.alpha], "lr": self.method.lr_alpha}])


@register
@dataclass
class Mend(NetworkEditor):
    """MEND (see the module docstring).

    Attributes:
        modules: roles (editlab.lm.arch) or templates of the edited Linear layers.
        layers: blocks (negative counts from the last; "a..b/N": a paper's blocks at their relative depth).
        rank: rank of the editor's low-rank blocks (capped at d_in + d_out).
        n_hidden: hidden blocks of the editor (the paper: 1, i.e. two residual blocks).
        alpha_init: initial per-layer step (the paper's ``edit_lr``).
        lr: Adam learning rate of the editor network.
        lr_alpha: Adam learning rate of the per-layer steps (their own parameter group).
        c_edit, c_loc: weights of the edit NLL and of the locality KL in the meta-loss.
        block: the editor's block form (:data:`~editlab.editing.hyper.mlp.BLOCKS`; the original: ``mend``).
        loss_reduction: how each edit's and each equivalent's summed NLL is scaled
            (:data:`~editlab.editing.loss.REDUCTIONS`; the original: ``mean``, per object token).
        max_grad_norm: gradient-norm clip of each meta-step over all editor parameters (``None``: none;
            the original: 100).
    """

    name = "mend"
    modules: list[str] = field(default_factory=lambda: ["mlp_in", "mlp_out"])
    layers: list[int | str] = field(default_factory=lambda: [-3, -2, -1])
    rank: int = 1920
    n_hidden: int = 1
    alpha_init: float = 1.0e-4
    lr: float = 1.0e-6
    lr_alpha: float = 1.0e-4
    c_edit: float = 0.1
    c_loc: float = 1.0
    block: str = "mend"
    loss_reduction: str = "mean"
    max_grad_norm: float | None = 100.0
    editor: GradientEditor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.n_hidden < 0 or not self.lr > 0 or not self.lr_alpha >= 0:
            raise EditlabError(f"method {self.name}: rank >= 1, n_hidden >= 0, lr > 0 and lr_alpha >= 0")
        if self.c_edit < 0 or self.c_loc < 0 or not self.modules:
            raise EditlabError(f"method {self.name}: c_edit, c_loc >= 0 and at least one module role")
        if self.block not in BLOCKS or self.loss_reduction not in REDUCTIONS:
            raise EditlabError(f"method {self.name}: block must be one of {', '.join(BLOCKS)} and loss_reduction "
                               f"one of {', '.join(REDUCTIONS)} (got {self.block!r}, {self.loss_reduction!r})")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise EditlabError(f"method {self.name}: max_grad_norm > 0 (or null: no clipping)")

    def build_editor(self, model: nn.Module) -> GradientEditor:
        """An untrained editor for ``model``'s edited layers (identity networks, steps at ``alpha_init``)."""
        return GradientEditor(self.weight_shapes(model), self.rank, self.n_hidden, self.alpha_init, self.block)

    def training_module(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        training: EditorTraining) -> L.LightningModule:
        return MendTrainer(self, base, tokenizer)

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        """Load the trained editor (checked against ``ctx.model_id``, and against the ``block`` and
        ``loss_reduction`` it was trained with) into a network shaped for ``model``."""
        super().prepare(model, ctx)
        self.check_trained_with(editor_info(ctx.editor_path).get("hparams") or {}, ctx)
        self.editor = load_network(self.build_editor(model), self._weights, ctx.editor_path, "modules/layers/rank")

    def check_trained_with(self, trained: dict, ctx: EditContext) -> None:
        """Refuse an editor meta-trained with another block form or loss reduction: the network would not load
        (block) or would read gradients scaled otherwise than in training (loss_reduction)."""
        for key, before in TRAINED_BEFORE_OPTIONS.items():
            was, now = trained.get(key, before), getattr(self, key)
            if was != now:
                raise EditlabError(f"editor {ctx.editor_path} was meta-trained with {key}={was}, this run edits with "
                                   f"{key}={now}; pass method.hparams.{key}={was} or train an editor with {now}")

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        self.trained_editor().to(next(model.parameters()).device).eval()
        names = self.module_names(model)

        def updates(factors: Factors, device: torch.device):
            return (self.editor.update(i, *factors.of(name)) for i, name in enumerate(names))

        return one_step_edit(model, names, requests, ctx, self.loss_reduction, updates, on_step)
