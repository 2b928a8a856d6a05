"""MALMEN: MAssive Language Model Editing Network (Tan et al. 2024, "Massive Editing for Large Language Models
via Meta Learning", ICLR).

MEND's hypernetwork (editing/hyper/: per-shape identity-initialised low-rank networks with per-layer
scale, shift and step, running normalisation of ``[u; delta]``) maps every edit's per-token gradient
factors to per-token value shifts ``d_i = -alpha_l (u_i . u~_i) delta~_i``; the shifts of *all* edits of
a batch are then aggregated per edited Linear by ridge least squares over their keys,
``S* = (K^T K + lambda_l I)^-1 K^T D`` with a learned ``log lambda_l`` (editing/hyper/ridge.py). Keys
are the layer inputs at the answer tokens (the positions that predict the object's tokens; the
official code's ``token: ans``). Default edited layers: ``mlp_out`` of the last 6 blocks (the paper's
GPT-J / GPT-2 setting).

Meta-training (``python train.py task=editor method=malmen``; one meta-step = one batch of
``editor.batch_size`` edits aggregated into one shift) runs MALMEN's split backward pass:

1. the edits' keys and value gradients, recorded ``lm_batch`` requests at a time, and the aggregated
   shift ``S*`` per layer with no graph;
2. ``dL/dS*``, accumulated over the examples' equivalents and locality facts ``lm_batch`` examples at a
   time (the LM sees ``W + S*^T`` through ``torch.func.functional_call``; only one chunk's graph exists
   at a time);
3. that gradient through the closed-form solve into ``log lambda`` and the hypernetwork, whose
   outputs are recomputed ``net_batch`` token rows at a time.

So peak memory does not grow with the number of edits beyond the N recorded token rows themselves.
Meta-loss per example: ``c_edit * NLL(equivalents) + c_loc * KL(p_base || p_edited)`` over its locality
facts (editing/hyper/meta_loss.py, shared with MEND), averaged over the batch. One Adam (the paper's
``meta_lr``; the steps in their own group with ``lr_alpha``), gradient norm clipped at ``max_grad_norm``.
The NLLs are scaled by ``loss_reduction`` (the official code's ``F.cross_entropy`` averages over the answer
tokens: ``mean``) and the blocks are of form ``block`` (the official ``MALMENBlock``: ``malmen``); the tuned
presets pin the alternatives their editors were meta-trained with (docs/methods.md, MALMEN, "Deviations").
Editor weights are float32 and the solve float64 whatever the trainer's precision; the shift is added
to the real weights at edit time (snapshot restore is bit-exact), never subtracted back in low
precision (the official code adds and subtracts shifts in place in bf16 during training).

DDP (``trainer=ddp``): each rank records the keys and value gradients of its slice of the global batch,
and they are gathered, so every rank solves the same ridge shift of *all* the batch's edits (as one
process would); each rank computes ``dL/dS*`` on its own examples (the loss divided by the global batch
size), those are summed over the ranks, and every rank pushes the same sum through the solve: the editor
gradients are equal on every rank by construction, so DDP's own gradient all-reduce is switched off. A
validation batch is aggregated on its own rank (``editor.batch_size`` edits, as in one process); its
metrics are averaged over the ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook, snapshot
from editlab.editing.hyper.factors import KEY_TOKENS, record_keys
from editlab.editing.hyper.meta_loss import mean_stats, meta_losses, without_edited_facts
from editlab.editing.hyper.ridge import RidgeEditor, RidgeSolution, chunks
from editlab.editing.loss import target_batch, target_nll
from editlab.editing.meta_data import MetaBatch
from editlab.editing.methods.mend import Mend, MendTrainer
from editlab.editing.registry import register
from editlab.editing.trainable import EditorTraining
from editlab.editing.weights import get_module, is_transposed, linear_weight, weight_param_name
from editlab.errors import EditlabError
from editlab.utils import dist
from editlab.vocab import PromptEncoder


@dataclass
class Aggregated:
    """One batch of edits: per edited module its keys, value gradients and ridge solution."""

    modules: list[str]
    keys: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    solutions: dict[str, RidgeSolution]

    def shift(self, name: str) -> torch.Tensor:
        """The (d_out, d_in) float32 weight shift of ``name``."""
        return self.solutions[name].shift.T.float()


def aggregate(method: Malmen, editor: RidgeEditor, model: nn.Module, modules: Sequence[str], enc: PromptEncoder,
              requests: Sequence[EditRequest], observe: bool = False,
              rows: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Aggregated:
    """Steps 1 of the split pass: keys, value gradients and the ridge shift per module, with no graph.

    ``observe``: merge the rows into the editor's running statistics first (meta-training). ``rows``: applied
    to the recorded keys and value gradients before they are used (DDP: :func:`editlab.utils.dist.gather_rows`).
    """
    device = next(model.parameters()).device
    batch = target_batch(enc, requests).to(device)
    keys, grads = record_keys(model, modules, batch, method.lm_batch, method.key_tokens, method.loss_reduction)
    if rows is not None:
        keys, grads = {n: rows(k) for n, k in keys.items()}, {n: rows(g) for n, g in grads.items()}
    if observe:
        for i, n in enumerate(modules):
            editor.observe(i, keys[n], grads[n])
    sols = {n: editor.solve(i, keys[n], grads[n], method.net_batch) for i, n in enumerate(modules)}
    return Aggregated(list(modules), keys, grads, sols)


class MalmenTrainer(MendTrainer):
    """Meta-trains a :class:`RidgeEditor` on a frozen base model with MALMEN's split backward pass (manual
    optimisation: see the module docstring). The frozen base, the editor (built by the method) and the two
    optimizer groups (network and log-lambda; per-layer steps) are MEND's; the editor's running statistics
    are merged explicitly (``RidgeEditor.observe``)."""

    def __init__(self, method: Malmen, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__(method, base, tokenizer)
        self.automatic_optimization = False

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:  # the split backward synchronises itself (module docstring)
            self.trainer.strategy.model.require_backward_grad_sync = False

    def meta_step(self, batch: MetaBatch, backward: bool) -> tuple[float, dict[str, float]]:
        """(mean meta-loss, mean metrics) of the batch's edits aggregated into one shift; with ``backward``,
        the editor's gradients of that loss are accumulated in ``.grad`` (steps 2 and 3 of the split pass).

        Under DDP a training batch is the global batch (its rows gathered over the ranks) and the loss is its
        mean over all ranks' edits; a validation batch is this rank's own.
        """
        m = self.method
        world = dist.world_size() if backward else 1
        requests = [ex.request for ex in batch]
        agg = aggregate(m, self.editor, self.base, self.modules_, self.enc, requests, observe=backward,
                        rows=dist.gather_rows if world > 1 else None)
        leaves = {n: agg.shift(n).requires_grad_(backward) for n in self.modules_}
        others = dist.gather_objects([r.prompt for r in requests]) if world > 1 else []
        examples = without_edited_facts(batch.examples, others)
        n_global = len(batch) * world  # the sampler gives every rank the same number of edits
        total, stats = 0.0, []
        for s in chunks(len(batch), m.lm_batch):
            params = {}
            for n in self.modules_:
                module = get_module(self.base, n)
                params[weight_param_name(n)] = module.weight + (leaves[n].T if is_transposed(module)
                                                                else leaves[n]).to(module.weight.dtype)
            with torch.set_grad_enabled(backward):
                losses, st = meta_losses(self.base, params, self.enc, examples[s], m.c_edit, m.c_loc,
                                         self.device, m.loss_reduction)
                loss = torch.stack(losses).sum() / n_global
            if backward:
                loss.backward()
            total += float(loss.detach())
            stats += st
        if backward:
            for i, n in enumerate(self.modules_):
                grad = dist.all_sum(leaves[n].grad) if world > 1 else leaves[n].grad  # dL/dS* of all ranks' edits
                self.editor.backward(i, agg.keys[n], agg.grads[n], agg.solutions[n], grad.T, m.net_batch)
            if world > 1:
                total = float(dist.all_sum(torch.tensor(total, dtype=torch.float64)))
        return total, mean_stats(stats)

    def training_step(self, batch: MetaBatch, batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        loss, s = self.meta_step(batch, backward=True)
        if self.method.max_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.method.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True)  # already the global mean
        self.log_dict({f"train/{k}": v for k, v in s.items()}, batch_size=len(batch), sync_dist=True)
        self.log("train/alpha_mean", self.editor.alpha.detach().mean(), batch_size=len(batch))
        self.log("train/log_lambda_mean", self.editor.log_lambda.detach().mean(), batch_size=len(batch))

    def validation_step(self, batch: MetaBatch, batch_idx: int) -> None:
        with torch.inference_mode(False), torch.enable_grad():  # the edit needs the LM's gradient factors
            loss, s = self.meta_step(batch, backward=False)
        self.log("val/loss", loss, batch_size=len(batch), sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in s.items()}, batch_size=len(batch), prog_bar=True, sync_dist=True)


@register
@dataclass
class Malmen(Mend):
    """MALMEN (see the module docstring): MEND's method with a ridge editor, its own meta-training and batch edit
    (the edited layers, editor loading and checks are MEND's).

    Attributes:
        modules: roles (editlab.lm.arch) or templates of the edited Linear layers.
        layers: blocks (negative counts from the last; "a..b/N": a paper's blocks at their relative depth).
        rank: rank of the editor's low-rank blocks (capped at d_in + d_out).
        n_hidden: hidden blocks of the editor (the paper: 1, i.e. two residual blocks).
        alpha_init: initial per-layer step (the official code's ``lr``).
        log_lambda_init: initial ``log lambda`` of the ridge solve (0: lambda = 1).
        lr: Adam learning rate of the editor network and ``log lambda`` (the paper's ``meta_lr``).
        lr_alpha: Adam learning rate of the per-layer steps (the paper: ``meta_lr`` too).
        c_edit, c_loc: weights of the edit NLL and of the locality KL in the meta-loss.
        max_grad_norm: gradient norm clipping of each meta-step (``None``: none; the official code: 1).
        block: the editor's block form (:data:`~editlab.editing.hyper.mlp.BLOCKS`; the official code: ``malmen``).
        loss_reduction: how each edit's and each equivalent's summed NLL is scaled
            (:data:`~editlab.editing.loss.REDUCTIONS`; the official code: ``mean``, per answer token).
        lm_batch: edits per LM forward/backward chunk (the paper's data ``batch_size``).
        net_batch: token rows per hypernetwork chunk (the paper's editor ``batch_size``).
        key_tokens: where the keys are read (:data:`~editlab.editing.hyper.factors.KEY_TOKENS`): ``answer``, every
            position predicting an object token (the official code); ``last_prompt``, one key per edit.
    """

    name = "malmen"
    modules: list[str] = field(default_factory=lambda: ["mlp_out"])
    layers: list[int | str] = field(default_factory=lambda: [-6, -5, -4, -3, -2, -1])
    rank: int = 1920
    n_hidden: int = 1
    alpha_init: float = 1.0e-6
    log_lambda_init: float = 0.0
    lr: float = 1.0e-5
    lr_alpha: float = 1.0e-5
    c_edit: float = 1.0
    c_loc: float = 1.0
    max_grad_norm: float | None = 1.0
    block: str = "malmen"
    lm_batch: int = 32
    net_batch: int = 1024
    key_tokens: str = "answer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.key_tokens not in KEY_TOKENS:
            raise EditlabError(f"method malmen: key_tokens={self.key_tokens!r} must be one of {', '.join(KEY_TOKENS)}")
        if self.lm_batch < 1 or self.net_batch < 1:
            raise EditlabError("method malmen: lm_batch >= 1 and net_batch >= 1")

    def build_editor(self, model: nn.Module) -> RidgeEditor:
        """An untrained editor for ``model``'s edited layers (identity networks, initial step and lambda)."""
        shapes = [tuple(linear_weight(get_module(model, n)).shape) for n in self.module_names(model)]
        return RidgeEditor(shapes, self.rank, self.n_hidden, self.alpha_init, self.log_lambda_init, self.block)

    def training_module(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        training: EditorTraining) -> L.LightningModule:
        return MalmenTrainer(self, base, tokenizer)

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        """All ``requests`` in one aggregated shift per edited layer (MALMEN's batch edit)."""
        editor = self.trained_editor()
        names = self.module_names(model)
        saved = snapshot(model, [weight_param_name(n) for n in names])
        editor.to(next(model.parameters()).device).eval()
        enc = PromptEncoder(ctx.tokenizer)
        agg = aggregate(self, editor, model, names, enc, requests)
        loss_initial = sum(_chunk_losses(model, enc, requests, self.lm_batch, self.loss_reduction))
        with torch.no_grad():
            norms = []
            for name in names:
                upd = agg.shift(name)
                linear_weight(get_module(model, name)).add_(upd.to(saved[weight_param_name(name)].dtype))
                norms.append(float(upd.norm()))
        final = sum(_chunk_losses(model, enc, requests, self.lm_batch, self.loss_reduction))
        if on_step is not None:
            on_step(1, model)
        return EditHandle(model, touched=saved, info={"steps": 1, "loss_initial": loss_initial / len(requests),
                                                      "loss_final": final / len(requests),
                                                      "update_norm": max(norms)})


def _chunk_losses(model: nn.Module, enc: PromptEncoder, requests: Sequence[EditRequest], size: int,
                  reduction: str) -> list[float]:
    """Target NLL of ``requests`` under ``reduction``, summed over them, ``size`` at a time (memory of one chunk)."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in chunks(len(requests), size):
            part = requests[s]
            out.append(float(target_nll(model, target_batch(enc, part).to(device), reduction=reduction)) * len(part))
    return out
