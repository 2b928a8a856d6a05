"""The forward passes of the target optimisation: the logits it reads, as a function of the added vector.

Every step of :func:`editlab.editing.locate.targets.optimise_targets` needs the model's logits at a few
positions of each row (the positions that predict the requested object's tokens, and the essence
prompt's subject position) with a vector added to one module's output at the row's subject position.
Two implementations compute the same numbers:

- :class:`FullPass`: the plain forward pass of every row over every position, logits everywhere
  (ROME's and MEMIT's code). The reference.
- :class:`TailPass`: computes only what the added vector can change, which is what makes a ROME edit
  fast. The vector enters at the subject position ``s`` of a row, so by causality nothing at positions
  ``< s`` changes, in any layer; and the blocks below the edited module see none of it at any position.
  So, once per edit and without gradients, the rows are aligned at their subject position (pads placed
  right after BOS, positions ids counting real tokens only, so every real token keeps its position and
  every padded query still sees BOS), the prefix ``< s`` is run once into a key/value cache, and the
  outputs of the blocks below the edited module are recorded on the tail ``>= s``. Each step then runs
  only the tail (cut after the last position any read needs) on a copy of that cache, with those blocks
  replaced by their recorded outputs, and computes the output head only at the read positions. Where
  it reproduces the model's own logits (checked once per edit), a step calls only the blocks above the
  frozen ones, with the arguments the model's forward gave them (masks, rotary tables, a fresh copy of
  the cache), then the final norm and the head: no embedding, mask or rotary work per step. Same math as
  :class:`FullPass`, up to float rounding (the test compares both target vectors).

:func:`tail_pass` is what the optimisation uses: rows whose tails (subject position to last read position)
have different lengths are grouped by that length, one :class:`TailPass` per group, so no row computes
padding up to a longer row's tail (an essence row reads only its subject position: a tail of one token,
beside rewrite rows of relation + object tokens). Each extra pass has a fixed cost per step, so lengths are
merged where the padding saved is smaller (:func:`tail_groups`: a group per length for a MEMIT chunk, one
pass for a single ROME edit). Rows are independent, so this is the same math.

Both go through the Hugging Face model's own forward (its key/value cache, ``position_ids``) and the
architecture adapter's roles (blocks, lm_head), so they hold for any causal LM the adapter knows.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from editlab.editing.locate.hooks import add_at, main_tensor, read_at
from editlab.editing.locate.rows import Rows
from editlab.lm.arch import adapter_for


class FullPass:
    """The reference: every row over every position, logits everywhere, then the read positions picked."""

    def __init__(self, model: nn.Module, module: nn.Module, rows: Rows, read_rows: torch.Tensor,
                 read_cols: torch.Tensor) -> None:
        self.model, self.module, self.rows = model, module, rows
        self.read = (read_rows, read_cols)
        self.every = torch.arange(rows.ids.shape[0], device=rows.ids.device)

    def __call__(self, delta_rows: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits at the read positions (n_read, V), what the hook read at the subject positions)."""
        r = self.rows
        hook = (read_at(self.module, self.every, r.subj) if delta_rows is None
                else add_at(self.module, self.every, r.subj, delta_rows))
        with hook as got:
            logits = self.model(input_ids=r.ids, attention_mask=r.mask, use_cache=False).logits
        return logits[self.read], got


@contextmanager
def _head_at(head: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """Make the output head compute its logits only at ``(rows[i], cols[i])`` -> logits (1, n, V)."""
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0][rows, cols][None], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _recorded(blocks: Sequence[nn.Module], outputs: list) -> Iterator[None]:
    """Record each block's output of the next forward pass into ``outputs`` (in block order)."""
    outputs.clear()
    outputs.extend([None] * len(blocks))

    def hook_for(i: int):
        def hook(_m: nn.Module, _args: tuple, out) -> None:
            outputs[i] = out
        return hook

    handles = [b.register_forward_hook(hook_for(i)) for i, b in enumerate(blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _replayed(blocks: Sequence[nn.Module], outputs: Sequence) -> Iterator[None]:
    """Replace each block's computation by its recorded output (its forward hooks still run)."""
    saved = [b.__dict__.get("forward") for b in blocks]
    try:
        for b, out in zip(blocks, outputs, strict=True):
            b.forward = lambda *_a, _out=out, **_k: _out
        yield
    finally:
        for b, old in zip(blocks, saved, strict=True):
            if old is None:
                del b.forward
            else:
                b.forward = old


@contextmanager
def _calls_recorded(blocks: Sequence[nn.Module], calls: list) -> Iterator[None]:
    """Record each block's call ``(args, kwargs)`` of the next forward pass into ``calls`` (in block order)."""

    def hook_for(i: int):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[i] = (args, dict(kwargs))
        return hook

    handles = [b.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _step_cache(past):
    """A copy of the prefix key/value cache for one step (a forward pass appends the tail to the cache it gets).

    A ``DynamicCache`` whose layers are all ``DynamicLayer`` appends by concatenation and never writes into its
    tensors, so the copy shares them (only the containers are new); any other cache is deep-copied.
    """
    layers = getattr(past, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return copy.deepcopy(past)
    shared = {id(t): t for layer in layers for t in vars(layer).values() if isinstance(t, torch.Tensor)}
    return copy.deepcopy(past, memo=shared)


def tail_lengths(rows: Rows, read_rows: torch.Tensor, read_cols: torch.Tensor) -> torch.Tensor:
    """Per row, the positions from its subject position to the last position a read needs (at least 1)."""
    last = rows.subj.clone().scatter_reduce_(0, read_rows, read_cols, reduce="amax")
    return last - rows.subj + 1


def frozen_blocks(model: nn.Module, module: nn.Module) -> list[nn.Module]:
    """The blocks whose outputs do not depend on a vector added to ``module``'s output: those below the block
    holding ``module``, and that block too when ``module`` is the block itself (the residual stream)."""
    blocks = list(model.get_submodule(adapter_for(model).blocks))
    for i, block in enumerate(blocks):
        if block is module:
            return blocks[: i + 1]
        if any(m is module for m in block.modules()):
            return blocks[:i]
    return []


class TailPass:
    """Only what the added vector changes (see the module docstring); same results as :class:`FullPass`."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, module: nn.Module, rows: Rows, read_rows: torch.Tensor,
                 read_cols: torch.Tensor) -> None:
        self.model, self.module = model, module
        self.head = model.get_submodule(adapter_for(model).lm_head)
        self.frozen = frozen_blocks(model, module)
        blocks = list(model.get_submodule(adapter_for(model).blocks))
        self.upper = blocks[len(self.frozen):]
        self.module_is_block = bool(self.frozen) and self.frozen[-1] is module
        self.final_norm = model.get_submodule(adapter_for(model).final_norm)
        self.calls: list | None = None
        self.lean = False
        device = rows.ids.device
        n_rows, width = rows.ids.shape
        subj = rows.subj
        last = subj + tail_lengths(rows, read_rows, read_cols) - 1  # the last position a row needs
        s = int(subj.max())  # the aligned subject position
        shift = s - subj
        ids = torch.full((n_rows, s + int((last - subj).max()) + 1), int(rows.ids[0, 0]), dtype=rows.ids.dtype,
                         device=device)  # pads: any id, masked
        mask = torch.zeros_like(ids, dtype=rows.mask.dtype)
        ids[:, 0], mask[:, 0] = rows.ids[:, 0], 1  # BOS stays first, the pads follow it
        col = torch.arange(1, width, device=device)
        keep = (col[None, :] <= last[:, None]) & rows.mask[:, 1:].bool()
        r, c = keep.nonzero(as_tuple=True)
        ids[r, c + 1 + shift[r]] = rows.ids[r, c + 1]
        mask[r, c + 1 + shift[r]] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # every real token keeps its unpadded position
        self.s, self.ids, self.mask, self.pos = s, ids, mask, pos
        self.read = (read_rows, read_cols + shift[read_rows] - s)  # in tail columns
        self.every = torch.arange(n_rows, device=device)
        self.zero = torch.zeros(n_rows, dtype=torch.long, device=device)  # the subject is the tail's first column
        none = torch.zeros(0, dtype=torch.long, device=device)
        with _head_at(self.head, none, none):  # the prefix: its key/value cache only, no logits
            out = model(input_ids=ids[:, :s], attention_mask=mask[:, :s], position_ids=pos[:, :s], use_cache=True)
        self.past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        # transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name warns, then goes)
        self.cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.outputs: list = []

    def __call__(self, delta_rows: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits at the read positions (n_read, V), what the hook read at the subject positions).

        The first call must be ``delta_rows=None`` (the unedited model): it records what the steps replay.
        """
        if delta_rows is None:
            return self._first()
        if self.calls is None:
            raise RuntimeError("TailPass: call it once with delta_rows=None before optimising")
        if self.lean:
            return self._lean(delta_rows), {}
        with ExitStack() as stack:
            stack.enter_context(_head_at(self.head, *self.read))
            stack.enter_context(_replayed(self.frozen, self.outputs))
            got = stack.enter_context(add_at(self.module, self.every, self.zero, delta_rows))
            logits = self.model(input_ids=self.ids[:, self.s:], attention_mask=self.mask,
                                position_ids=self.pos[:, self.s:], use_cache=True,
                                **{self.cache_kw: _step_cache(self.past)}).logits
        return logits[0], got

    def _first(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The unedited tail through the model's own forward, recording the frozen blocks' outputs and the calls
        of the blocks above; then checks that replaying those calls (:meth:`_lean`) gives the same logits."""
        calls: list = [None] * len(self.upper)
        cache = copy.deepcopy(self.past)
        with ExitStack() as stack:
            stack.enter_context(_head_at(self.head, *self.read))
            stack.enter_context(_recorded(self.frozen, self.outputs))
            stack.enter_context(_calls_recorded(self.upper, calls))
            got = stack.enter_context(read_at(self.module, self.every, self.zero))
            logits = self.model(input_ids=self.ids[:, self.s:], attention_mask=self.mask,
                                position_ids=self.pos[:, self.s:], use_cache=True, **{self.cache_kw: cache}).logits[0]
        self.calls, self.cache_obj = calls, cache
        # the lean step calls the blocks above with what the model passed them, then the final norm and the head;
        # kept only where that reproduces the model's own logits (else every step runs the model's forward)
        try:
            replay = self._lean(None)
            self.lean = replay.shape == logits.shape and bool(
                torch.allclose(replay, logits, rtol=1e-4, atol=1e-5 * float(logits.abs().max())))
        except (TypeError, KeyError, IndexError, RuntimeError):
            self.lean = False
        return logits, got

    def _lean(self, delta_rows: torch.Tensor | None) -> torch.Tensor:
        """Logits at the read positions by calling only the blocks above the frozen ones, with the arguments the
        model's forward gave them (a fresh copy of the prefix cache in place of the cache), then norm and head."""
        past = _step_cache(self.past)

        def fresh(value):
            return past if value is self.cache_obj else value

        h = None
        if self.module_is_block:  # the residual stream: the module's recorded output plus delta
            h = main_tensor(self.outputs[-1])
            if delta_rows is not None:
                h = h.index_put((self.every, self.zero), h[self.every, self.zero] + delta_rows.to(h.dtype))
        with ExitStack() as stack:
            if delta_rows is not None and not self.module_is_block:
                stack.enter_context(add_at(self.module, self.every, self.zero, delta_rows))
            for block, (args, kwargs) in zip(self.upper, self.calls, strict=True):
                args, kwargs = tuple(fresh(a) for a in args), {k: fresh(v) for k, v in kwargs.items()}
                if h is not None:  # the hidden states: the first argument (positional or by name)
                    if args:
                        args = (h, *args[1:])
                    else:
                        kwargs["hidden_states"] = h
                h = main_tensor(block(*args, **kwargs))
        return self.head(self.final_norm(h[self.read]))


GROUP_OVERHEAD = 64
"""The fixed cost of one more pass per step, in tail positions (a step of :class:`TailPass` costs about this
plus its rows x tail width): what :func:`tail_groups` weighs the padding a group saves against."""


def tail_groups(length: torch.Tensor) -> list[list[int]]:
    """The tail lengths of ``length`` (R,) partitioned into groups of consecutive lengths that minimise
    ``sum over groups (GROUP_OVERHEAD + rows x the group's longest tail)`` (exact dynamic programme over the
    distinct lengths): a group per length for thousands of rows, one group for a single edit."""
    lengths, counts = (t.tolist() for t in length.unique(return_counts=True))
    best = [0.0] + [float("inf")] * len(lengths)  # best[j]: cost of the first j lengths
    cut = [0] * (len(lengths) + 1)
    for j in range(1, len(lengths) + 1):
        for i in range(j):
            cost = best[i] + GROUP_OVERHEAD + sum(counts[i:j]) * lengths[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(lengths)
    while j:
        groups.append(lengths[cut[j]:j])
        j = cut[j]
    return groups[::-1]


class GroupedPass:
    """Several :class:`TailPass` over groups of rows, called as one (same interface, rows and reads in the
    caller's order): the groups of :func:`tail_groups`."""

    def __init__(self, model: nn.Module, module: nn.Module, rows: Rows, read_rows: torch.Tensor,
                 read_cols: torch.Tensor, length: torch.Tensor, groups: list[list[int]]) -> None:
        """``length``: the rows' :func:`tail_lengths`; ``groups``: their :func:`tail_groups`."""
        local = torch.empty_like(rows.subj)  # each row's index inside its group
        self.parts: list[tuple[torch.Tensor, TailPass]] = []
        row_order, read_order = [], []
        for lengths in groups:
            in_group = torch.isin(length, torch.tensor(lengths, device=length.device))
            idx = in_group.nonzero(as_tuple=True)[0]
            local[idx] = torch.arange(idx.shape[0], device=idx.device)
            reads = in_group[read_rows].nonzero(as_tuple=True)[0]
            self.parts.append((idx, TailPass(model, module, rows.select(idx), local[read_rows[reads]],
                                             read_cols[reads])))
            row_order.append(idx)
            read_order.append(reads)
        self.row_back = torch.cat(row_order).argsort()  # concatenated group results -> the caller's order
        self.read_back = torch.cat(read_order).argsort()

    def __call__(self, delta_rows: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outs = [part(None if delta_rows is None else delta_rows[idx]) for idx, part in self.parts]
        logits = torch.cat([o[0] for o in outs])[self.read_back]
        keys = set.intersection(*(set(o[1]) for o in outs))
        return logits, {k: torch.cat([o[1][k] for o in outs])[self.row_back] for k in keys}


def tail_pass(model: nn.Module, module: nn.Module, rows: Rows, read_rows: torch.Tensor,
              read_cols: torch.Tensor) -> TailPass | GroupedPass:
    """The fast pass of :func:`~editlab.editing.locate.targets.optimise_targets`: one :class:`TailPass`, or a
    :class:`GroupedPass` where grouping the rows by tail length saves more than the extra passes cost."""
    length = tail_lengths(rows, read_rows, read_cols)
    groups = tail_groups(length)
    if len(groups) == 1:
        return TailPass(model, module, rows, read_rows, read_cols)
    return GroupedPass(model, module, rows, read_rows, read_cols, length, groups)
