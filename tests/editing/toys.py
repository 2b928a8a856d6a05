"""Test-only editing methods that exercise the wrapper and trainable parts of the contract.

Neither is registered in the product: :func:`register_toys` adds them to the registry for the tests
that ask (idempotent), :func:`unregister_toys` takes them out again.

- ``toy_memory`` (a memory/wrapper editor, GRACE/SERAC-shaped): it stores each edit's token sequence
  (BOS + "s r", target tokens) and returns an :class:`EditWrapper` whose forward adds ``boost`` to the
  logit of target token j wherever the input ends with prompt + target[:j]. Nothing else changes, the
  base weights are never touched, ``commit`` keeps the entry, the memory is method state and
  ``load_state_dict`` re-wraps the base model.
- ``toy_learned_step`` (a trainable editor, MEND-shaped with an identity hypernetwork): the edit is
  gradient steps on the MLP output projections, ``W <- W - a g``, with the learning rate ``a``
  meta-learned on the meta split (loss: target NLL after one step + KL on the other requests' prompts,
  methods.md's MEND objective with c_loc = 1).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import lightning as L
import torch
from torch import nn
from torch.func import functional_call

from editlab.editing import registry
from editlab.editing.base import (
    EditContext,
    EditHandle,
    EditMethod,
    EditRequest,
    EditWrapper,
    StepHook,
    snapshot,
    unwrap,
)
from editlab.editing.loss import target_batch, target_nll
from editlab.editing.meta_data import MetaBatch
from editlab.editing.trainable import EditorTraining, TrainableEditor
from editlab.editing.weights import module_names, weight_param_name
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder

Entry = tuple[list[int], list[int]]  # (BOS + prompt ids, target ids)


class MemoryWrapper(EditWrapper):
    """The base model plus logit boosts for stored (prompt, target) token sequences."""

    def __init__(self, base: nn.Module, entries: list[Entry], boost: float) -> None:
        super().__init__(base)
        self.entries, self.boost = list(entries), boost

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        logits = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits.clone()  # (B, T, V)
        for prompt, target in self.entries:
            for j, tok in enumerate(target):
                pat = torch.tensor(prompt + target[:j], device=input_ids.device)
                if len(pat) > input_ids.shape[1]:
                    continue
                hit = (input_ids.unfold(1, len(pat), 1) == pat).all(-1)  # (B, T - L + 1): window starts
                rows, starts = hit.nonzero(as_tuple=True)
                logits[rows, starts + len(pat) - 1, tok] += self.boost
        return SimpleNamespace(logits=logits)


def _encode(state: list[Entry]) -> dict[str, torch.Tensor]:
    flat = lambda xs: torch.tensor([t for x in xs for t in x], dtype=torch.long)  # noqa: E731
    return {"prompt_ids": flat([p for p, _ in state]), "prompt_len": torch.tensor([len(p) for p, _ in state]),
            "target_ids": flat([t for _, t in state]), "target_len": torch.tensor([len(t) for _, t in state])}


def _decode(state: dict[str, torch.Tensor]) -> list[Entry]:
    def split(ids: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
        return [x.tolist() for x in torch.split(ids, lens.tolist())] if len(lens) else []

    return list(zip(split(state["prompt_ids"], state["prompt_len"]),
                    split(state["target_ids"], state["target_len"]), strict=True))


@dataclass
class ToyMemory(EditMethod):
    """Logit-boost memory behind a wrapper (see the module docstring)."""

    name = "toy_memory"
    boost: float = 30.0
    memory: list[Entry] = field(default_factory=list, init=False)

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        enc = PromptEncoder(ctx.tokenizer)
        new = list(zip(enc.prompts([("", r.prompt) for r in requests]), enc.objects([r.target for r in requests]),
                       strict=True))
        base = unwrap(model)
        wrapper = MemoryWrapper(base, self.memory + new, self.boost)

        def commit() -> nn.Module:
            self.memory.extend(new)
            return wrapper

        return EditHandle(wrapper, base=base, restore_fn=lambda: model, commit_fn=commit,
                          info={"steps": 0, "memory": len(self.memory) + len(new)})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return _encode(self.memory)

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> nn.Module:
        self.memory = _decode(state)
        return MemoryWrapper(unwrap(model), self.memory, self.boost) if self.memory else unwrap(model)


def _locality_kl(call, base_logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor
                 ) -> torch.Tensor:
    """Mean KL(p_base || p_edited) of the next token after each locality prompt."""
    rows = torch.arange(ids.shape[0])
    edited = torch.log_softmax(call(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, last].float(), -1)
    base = torch.log_softmax(base_logits.float(), -1)
    return (base.exp() * (base - edited)).sum(-1).mean()


class StepTrainer(L.LightningModule):
    """Meta-trains the log step of :class:`ToyLearnedStep` on a frozen base model."""

    def __init__(self, method: ToyLearnedStep, base: nn.Module, tokenizer, lr: float) -> None:
        super().__init__()
        self.method, self.enc, self.lr = method, PromptEncoder(tokenizer), lr
        self.base = base.requires_grad_(False).eval()
        self.names = method.param_names(base)
        self.log_step = nn.Parameter(torch.tensor(float(method.init_log_step)))

    def meta_loss(self, examples: MetaBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean loss over the batch's edits, share of edits whose target tokens are all argmax after one step,
        share of locality prompts whose next-token argmax the step left unchanged)."""
        reqs = [ex.request for ex in examples]
        params = dict(self.base.named_parameters())
        w0 = [params[n].detach() for n in self.names]
        losses, hits, kept = [], [], []
        for i, r in enumerate(reqs):
            batch = target_batch(self.enc, [r])
            others = [x for j, x in enumerate(reqs) if j != i] or [r]
            loc = target_batch(self.enc, others)
            with torch.no_grad():
                base_loc = self.base(input_ids=loc.ids, attention_mask=loc.mask).logits[
                    torch.arange(len(others)), loc.last_prompt]
            w = [x.clone().requires_grad_(True) for x in w0]
            with torch.enable_grad():
                g = torch.autograd.grad(target_nll(self._call(w), batch), w)
            w1 = [x - self.log_step.exp() * gx for x, gx in zip(w0, g, strict=True)]
            edited = self._call(w1)
            losses.append(target_nll(edited, batch) + self.method.c_loc * _locality_kl(
                edited, base_loc, loc.ids, loc.mask, loc.last_prompt))
            with torch.no_grad():
                logits = edited(input_ids=batch.ids, attention_mask=batch.mask).logits[0, :-1]
                hits.append(float((logits.argmax(-1) == batch.ids[0, 1:])[batch.target[0, 1:]].all()))
                loc_logits = edited(input_ids=loc.ids, attention_mask=loc.mask).logits[
                    torch.arange(len(others)), loc.last_prompt]
                kept.append((loc_logits.argmax(-1) == base_loc.argmax(-1)).float().mean())
        return torch.stack(losses).mean(), torch.tensor(hits).mean(), torch.stack(kept).mean()

    def _call(self, ws: list[torch.Tensor]):
        return lambda **kw: functional_call(self.base, dict(zip(self.names, ws, strict=True)), args=(), kwargs=kw)

    def training_step(self, batch: MetaBatch, batch_idx: int) -> torch.Tensor:
        loss, acc, _ = self.meta_loss(batch)
        self.log_dict({"train/loss": loss, "train/edit_success": acc, "train/log_step": self.log_step.detach()},
                      batch_size=len(batch), sync_dist=True)
        return loss

    def validation_step(self, batch: MetaBatch, batch_idx: int) -> None:
        loss, acc, kept = self.meta_loss(batch)
        self.log_dict({"val/loss": loss, "val/edit_success": acc, "val/locality": kept}, batch_size=len(batch),
                      sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.log_step], lr=self.lr)


@dataclass
class ToyLearnedStep(TrainableEditor):
    """Gradient descent on the MLP output projections with a meta-learned learning rate."""

    name = "toy_learned_step"
    layers: list[int] | None = None
    module: str = "mlp_out"
    steps: int = 40
    stop_loss: float = 0.01
    init_log_step: float = 2.0
    train_lr: float = 0.2
    c_loc: float = 1.0
    log_step: float | None = field(default=None, init=False)

    def param_names(self, model: nn.Module) -> list[str]:
        return [weight_param_name(n) for n in module_names(model, [self.module], self.layers)]

    def training_module(self, base: nn.Module, tokenizer, training: EditorTraining) -> L.LightningModule:
        return StepTrainer(self, base, tokenizer, self.train_lr)

    def editor_state(self, module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {"log_step": module.log_step.detach().reshape(1)}

    def load_editor(self, state: dict[str, torch.Tensor]) -> None:
        self.log_step = float(state["log_step"][0])

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        if self.log_step is None:
            raise EditlabError("method toy_learned_step has no trained editor; call prepare() with editor_path")
        names = self.param_names(model)
        saved = snapshot(model, names)
        params = dict(model.named_parameters())
        ws = [params[n] for n in names]
        batch = target_batch(PromptEncoder(ctx.tokenizer), requests).to(ws[0].device)
        lr = math.exp(self.log_step)
        done, first = 0, None
        for step in range(1, self.steps + 1):
            with torch.enable_grad():
                nll = target_nll(model, batch)
                value = float(nll.detach())
                first = value if first is None else first
                if value < self.stop_loss:
                    break
                grads = torch.autograd.grad(nll, ws)
            with torch.no_grad():
                for w, g in zip(ws, grads, strict=True):
                    w.sub_(lr * g)
            done = step
            if on_step is not None:
                on_step(step, model)
        with torch.no_grad():
            final = float(target_nll(model, batch))
        return EditHandle(model, touched=saved, info={"steps": done, "loss_initial": first, "loss_final": final})


TOYS = (ToyMemory, ToyLearnedStep)
NAMES = tuple(t.name for t in TOYS)


def register_toys() -> None:
    """Register the toy methods (test-only; idempotent) so get_method / edit_run find them."""
    registry.available()  # the built-ins first, so the toys never shadow them
    for cls in TOYS:
        if registry._METHODS.get(cls.name) is not cls:
            registry.register(cls)


def unregister_toys() -> None:
    for cls in TOYS:
        if registry._METHODS.get(cls.name) is cls:
            del registry._METHODS[cls.name]


@contextlib.contextmanager
def toys_registered():
    """``with toys_registered(): ...``: the toys are registered inside the block only."""
    register_toys()
    try:
        yield
    finally:
        unregister_toys()
