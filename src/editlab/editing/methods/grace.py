"""GRACE (Hartvigsen et al. 2023, "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors").

A codebook adapter at one layer (default: the MLP down-projection of one block, role ``mlp_out``,
found through the architecture adapter, so Mistral/Llama ``down_proj`` and GPT-2's ``Conv1D c_proj``
alike). Each entry holds

- a **key**: the layer's *input* at the last prompt token of the edit (for ``mlp_out``: the MLP's
  hidden activation, d_ff wide), recorded once and never trained;
- a **value**: an output vector of the layer (d_model wide), trained with a few Adam steps on the
  edit's target NLL (the shared loss of editing/loss.py) so the model answers the target;
- a **deferral radius** epsilon;
- the **target** it was trained for (token ids; the paper's "label").

Inference (the paper's lookup, Sec. 3): at every position, the layer input there is the query; if its
nearest key lies within that key's radius, the layer output at that position is replaced by the
key's value; otherwise the layer is untouched (bit-exact: no entry in range = no change).

Positions replaced (``replacement``): each position is its own query, and a match replaces the output at
the matching position only (``last``: the paper's ``replace_last``, for an edited prompt its last token),
from the match through the positions that predict the entry's target (``target``, the default: a
multi-token object keeps its value under teacher forcing and decoding), or from the match on (``all``:
the paper's ``replace_all``, made causal). Other positions are replaced only if their own key falls in
a radius. Keys
are causal (the input at position t depends on tokens <= t only), so the same positions are replaced
whether the prompt is scored alone, teacher-forced with its object, decoded token by token, or padded
in a batch; the paper's code instead tracks a token index that breaks on multi-token decoding.

Codebook rules when an edit arrives with query q and target y (the paper's Algorithm 1, ``coverage``
expansion); k = the nearest key, d = ||q - k||:

- d > eps_init + eps_k (the new ball would not touch k's): **add** (q, v, eps_init, y);
- otherwise, the same target as k: **expand** eps_k to d (times ``1 + EXPAND_MARGIN``, so float noise of
  later forward passes does not put q back on the boundary) if q lies outside it, and train k's value
  on this edit;
- otherwise (a different target): **split**: add (q, v, d / 2, y) and shrink eps_k to d / 2, so the two
  balls meet but do not overlap (radii are only ever shrunk here; the paper's code sets both to d / 2
  even when that would grow eps_k).

Every request given is edited, including one the model already answers: the paper edits on errors, and
here that gate belongs to the run, the same for every method (``edits.skip_correct``, evaluation.md).
Sequential editing is the method's purpose: ``commit`` keeps the entries, ``restore`` drops them; the
codebook (keys, values, radii, targets) is the method state, and ``load_state_dict`` re-wraps the base.
Paper defaults (EasyEdit's GRACE hparams, ``val_init: cold``): eps_init 1.0, Adam lr 1.0, 50 steps.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, EditWrapper, StepHook, unwrap
from editlab.editing.loss import fit, target_batch
from editlab.editing.registry import register
from editlab.editing.weights import module_names
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder

EXPAND_MARGIN = 1e-3
"""Relative slack of an expanded radius: activations of one prompt differ by ~1e-6 relative between batch
layouts, so a radius set to exactly ||q - k|| would leave q on the boundary, in or out by chance."""

VALUE_INITS = ("cold", "warm")
REPLACEMENTS = ("last", "target", "all")


@dataclass
class Codebook:
    """The GRACE entries: keys (K, d_in), values (K, d_out), radii (K,), targets (K token-id lists)."""

    keys: torch.Tensor
    values: torch.Tensor
    eps: torch.Tensor
    targets: list[list[int]]

    @staticmethod
    def empty(d_in: int, d_out: int, device: torch.device | None = None) -> Codebook:
        z = lambda *s: torch.zeros(*s, dtype=torch.float32, device=device)  # noqa: E731
        return Codebook(z(0, d_in), z(0, d_out), z(0), [])

    def __len__(self) -> int:
        return len(self.targets)

    def clone(self) -> Codebook:
        return Codebook(self.keys.clone(), self.values.clone(), self.eps.clone(), [list(t) for t in self.targets])

    def update(self, query: torch.Tensor, target: list[int], value: torch.Tensor, eps_init: float
               ) -> tuple[int, str]:
        """Insert an edit by the paper's rules (module docstring); returns (entry whose value to train, action).

        ``query`` (d_in,) is the edit's key, ``value`` (d_out,) the initial value of a new entry.
        Actions: ``add``, ``expand`` (the nearest entry covers the query now), ``split``.
        """
        q = query.detach().float().reshape(1, -1)
        if len(self):
            dist = (self.keys.double() - q.double()).norm(dim=-1)  # exact: these radii decide where edits act
            k = int(dist.argmin())
            d = float(dist[k])
            if d <= eps_init + float(self.eps[k]):
                if self.targets[k] == list(target):
                    if d > float(self.eps[k]):
                        self.eps[k] = d * (1 + EXPAND_MARGIN)
                    return k, "expand"
                self._add(q, value, min(eps_init, d / 2), target)
                self.eps[k] = min(float(self.eps[k]), d / 2)
                return len(self) - 1, "split"
        self._add(q, value, eps_init, target)
        return len(self) - 1, "add"

    def _add(self, q: torch.Tensor, value: torch.Tensor, eps: float, target: list[int]) -> None:
        dev = self.keys.device
        self.keys = torch.cat([self.keys, q.to(dev)])
        self.values = torch.cat([self.values, value.detach().float().reshape(1, -1).to(dev)])
        self.eps = torch.cat([self.eps, torch.tensor([eps], dtype=torch.float32, device=dev)])
        self.targets.append(list(target))

    def lookup(self, x: torch.Tensor, replacement: str, override: tuple[int, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For layer inputs ``x`` (B, T, d_in): (mask (B, T, 1) of the positions to replace, their values
        (B, T, d_out)), or None when no position is in range (the layer stays untouched). ``override`` = (entry,
        value being trained).

        A position *matches* when its nearest key holds it within that key's radius. ``replacement`` (module
        docstring): ``last`` replaces matching positions; ``target`` also the positions after a match that
        predict the rest of the matched entry's target (len(target) positions in all); ``all`` every position
        from a match on (a later match takes over).
        """
        if not len(self):
            return None
        q = x.reshape(-1, x.shape[-1]).float()
        dist = torch.cdist(q, self.keys.to(q.device))  # (B*T, K)
        dmin, idx = dist.min(dim=1)
        hit = (dmin <= self.eps.to(q.device)[idx]).reshape(x.shape[:-1])
        if not bool(hit.any()):
            return None
        idx = idx.reshape(x.shape[:-1])
        use, entry = hit, idx
        if replacement != "last":  # carry a match forward along each row (causal: from the match on)
            span = torch.tensor([len(t) for t in self.targets], device=q.device)
            active = torch.full_like(idx[:, 0], -1)
            left = torch.zeros_like(idx[:, 0])
            uses, entries = [], []
            for t in range(x.shape[1]):
                active = torch.where(hit[:, t], idx[:, t], active)
                left = torch.where(hit[:, t], span[idx[:, t]], left - 1)
                uses.append(active >= 0 if replacement == "all" else left > 0)
                entries.append(active.clamp(min=0))
            use, entry = torch.stack(uses, 1), torch.stack(entries, 1)
        values = self.values.to(q.device)
        if override is not None:
            values = values.index_put((torch.tensor([override[0]], device=q.device),), override[1].reshape(1, -1))
        return use.unsqueeze(-1), values[entry]

    def to_state(self) -> dict[str, torch.Tensor]:
        flat = [t for ids in self.targets for t in ids]
        return {"keys": self.keys.detach().cpu().contiguous(), "values": self.values.detach().cpu().contiguous(),
                "eps": self.eps.detach().cpu().contiguous(), "target_ids": torch.tensor(flat, dtype=torch.long),
                "target_len": torch.tensor([len(t) for t in self.targets], dtype=torch.long)}

    @staticmethod
    def from_state(state: dict[str, torch.Tensor]) -> Codebook:
        missing = {"keys", "values", "eps", "target_ids", "target_len"} - state.keys()
        if missing:
            raise EditlabError(f"GRACE state lacks {sorted(missing)}; it was not saved by method grace")
        lens = state["target_len"].tolist()
        targets = [x.tolist() for x in torch.split(state["target_ids"], lens)] if lens else []
        return Codebook(state["keys"].float(), state["values"].float(), state["eps"].float(), targets)


class GraceWrapper(EditWrapper):
    """The base model with a GRACE codebook at module ``layer_name`` (a forward hook present only during forward)."""

    def __init__(self, base: nn.Module, layer_name: str, codebook: Codebook, replacement: str) -> None:
        super().__init__(base)
        self.layer_name, self.codebook, self.replacement = layer_name, codebook, replacement
        self.override: tuple[int, torch.Tensor] | None = None  # the entry whose value is being trained

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        found = self.codebook.lookup(args[0], self.replacement, self.override)
        if found is None:
            return None  # no position in range: the layer's own output, untouched
        hit, values = found
        return torch.where(hit, values.to(output.dtype), output)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        handle = self.base.get_submodule(self.layer_name).register_forward_hook(self._hook)
        try:
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            handle.remove()
        return SimpleNamespace(logits=out.logits)


@register
@dataclass
class Grace(EditMethod):
    """GRACE: a discrete key-value codebook at one layer with deferral radii (module docstring).

    Attributes:
        layer: block index of the adapted layer (negative counts from the last block).
        module: the adapted module: a role of the architecture adapter (``mlp_out``) or a ``{}`` template.
        eps_init: radius of a new entry (distance in the layer-input space).
        lr, steps, stop_loss: Adam on the entry's value, stopping once the target NLL per object token is below
            ``stop_loss`` (the shared rule of editing/loss.py).
        value_init: ``cold`` (uniform [0, 1), the paper's default) or ``warm`` (the layer's own output there).
        replacement: which positions a match replaces: ``last`` (the matching position: the paper's
            ``replace_last``), ``target`` (from the match through the positions predicting the entry's target),
            ``all`` (from the match on: the paper's ``replace_all`` made causal).
    """

    supports_credence = True  # each request's loss is editing/loss.py's (credence targets)

    name = "grace"
    layer: int | str = -2
    module: str = "mlp_out"
    eps_init: float = 1.0
    lr: float = 1.0
    steps: int = 50
    stop_loss: float = 0.01
    value_init: str = "cold"
    replacement: str = "target"
    codebook: Codebook | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.eps_init > 0 or not self.lr > 0 or self.steps < 1 or self.stop_loss < 0:
            raise EditlabError("method grace: eps_init > 0, lr > 0, steps >= 1 and stop_loss >= 0")
        if self.value_init not in VALUE_INITS:
            raise EditlabError(f"method grace: value_init={self.value_init!r} must be one of {', '.join(VALUE_INITS)}")
        if self.replacement not in REPLACEMENTS:
            raise EditlabError(f"method grace: replacement={self.replacement!r} must be one of "
                               f"{', '.join(REPLACEMENTS)}")

    def layer_name(self, model: nn.Module) -> str:
        (name,) = module_names(unwrap(model), [self.module], [self.layer])
        return name

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        base = unwrap(model)
        name = self.layer_name(base)
        device = next(base.parameters()).device
        enc = PromptEncoder(ctx.tokenizer)
        batch = target_batch(enc, requests).to(device)
        keys, outs = self._read(model, base.get_submodule(name), batch)
        book = (self.codebook.clone() if self.codebook is not None
                else Codebook.empty(keys.shape[-1], outs.shape[-1], device))
        wrapper = GraceWrapper(base, name, book, self.replacement)
        info: dict = {"actions": [], "steps": 0, "loss_initial": [], "loss_final": []}
        for i, req in enumerate(requests):
            target = enc.objects([req.target])[0]
            idx, action = book.update(keys[i], target, self._init_value(outs[i], req, ctx.seed), self.eps_init)
            value = book.values[idx].clone().requires_grad_(True)
            wrapper.override = (idx, value)
            one = target_batch(enc, [req]).to(device)
            res = fit(wrapper, one, [value], torch.optim.Adam([value], lr=self.lr), self.steps,
                      stop_loss=self.stop_loss, on_step=on_step)
            wrapper.override = None
            book.values[idx] = value.detach()
            info["actions"].append(action)
            info["steps"] += res["steps"]
            info["loss_initial"].append(res["loss_initial"])
            info["loss_final"].append(res["loss_final"])
        info["codebook"] = len(book)

        def commit() -> nn.Module:
            self.codebook = book
            return wrapper

        return EditHandle(wrapper, base=base, restore_fn=lambda: model, commit_fn=commit, info=info)

    @torch.no_grad()
    def _read(self, model: nn.Module, layer: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, d_in) and layer outputs (B, d_out) at the last prompt token, under the current model."""
        seen: dict[str, torch.Tensor] = {}

        def grab(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            # registered before a wrapper's own hook, so this is the layer's own output
            seen["x"], seen["y"] = args[0].detach(), output.detach()

        handle = layer.register_forward_hook(grab)
        try:
            model(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False)
        finally:
            handle.remove()
        rows = torch.arange(batch.ids.shape[0], device=batch.ids.device)
        pos = batch.last_prompt
        return seen["x"][rows, pos].float(), seen["y"][rows, pos].float()

    def _init_value(self, out: torch.Tensor, req: EditRequest, seed: int) -> torch.Tensor:
        if self.value_init == "warm":
            return out.clone()
        # cold: seeded by the request, so an edit is reproducible whatever ran before it
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(req.sentence.encode()))
        return torch.rand(out.shape, generator=gen).to(out.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.codebook.to_state() if self.codebook is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> nn.Module:
        base = unwrap(model)
        if not state:
            self.codebook = None
            return base
        book = Codebook.from_state(state)
        device = next(base.parameters()).device
        self.codebook = Codebook(book.keys.to(device), book.values.to(device), book.eps.to(device), book.targets)
        return GraceWrapper(base, self.layer_name(base), self.codebook, self.replacement) if len(book) else base
