"""The scorer's fast path for plain Hugging Face causal LMs: one prefix-tree pass, then cached greedy decoding.

Why: scoring is most of an editing run's time, and the probes of a case share most of their tokens
(:mod:`editlab.eval.prefix_tree`). One pass over the prefix-tree rows of every teacher-forced sequence
AND every greedy prompt computes each distinct prefix once; the output head runs only at nodes that
predict an object token or end a greedy prompt; the keys and values of that pass (recorded per layer)
seed the KV cache of greedy decoding, so decoding starts without a prefill. Decoding is a hand-written
loop (decoder + head at the last position, argmax) with none of ``generate``'s per-step machinery,
which dominates for a small model.

This path calls the decoder and the head directly, so it is only taken for a model whose ``forward`` is
exactly decoder + head (:func:`fast_parts`); see :mod:`editlab.eval.scoring` for the generic path and
what the scorer requires of any other model.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from editlab.eval.prefix_tree import PackedRows, batch_tensors, pack

ROW_TOKENS = 128  # capacity of a prefix-tree row: longer rows share more, but attention grows with the row
# Architectures whose decoders are tested (tests/eval/test_scoring_paths.py) to honour a custom 4D mask and
# explicit position ids, and whose logits are exactly lm_head(last hidden state) (no soft-capping or scaling).
FAST_MODEL_TYPES = frozenset({"mistral", "llama", "qwen2", "gpt2"})


@dataclass
class FastParts:
    """The pieces of a plain causal LM the fast path calls: its decoder stack and its output head."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    window: int | None  # sliding attention window, if any (a custom 4D mask would lift it)


def fast_parts(model: torch.nn.Module) -> FastParts | None:
    """The decoder and head of ``model`` when it is a plain Hugging Face causal LM, else None.

    Plain means: a :class:`~transformers.PreTrainedModel` whose ``forward`` is the one Transformers
    defines (not overridden by an editor's subclass) of an architecture in :data:`FAST_MODEL_TYPES`,
    or a PEFT model that injects adapters into such a model in place (LoRA and the like; prompt learning
    changes the inputs, so it is not plain). Then ``forward`` is exactly decoder + head.
    """
    base = model
    if "peft" in sys.modules:  # a PeftModel can only exist if peft was imported
        from peft import PeftModel

        if isinstance(model, PeftModel):
            if model.active_peft_config.is_prompt_learning:
                return None
            base = model.get_base_model()
    if not isinstance(base, PreTrainedModel) or getattr(base.config, "model_type", None) not in FAST_MODEL_TYPES:
        return None
    if not type(base).forward.__module__.startswith("transformers."):
        return None
    head = base.get_output_embeddings()
    if head is None or getattr(base.config, "final_logit_softcapping", None):
        return None
    window = getattr(base.config, "sliding_window", None)
    window = window if window is not None and getattr(base.config, "use_sliding_window", True) else None
    return FastParts(base.base_model, head, window)


class _KVRecorder(DynamicCache):
    """A cache for a single forward that records each layer's keys and values (after rotary embedding).

    An empty cache's ``update`` returns the states it is given, which is what this returns too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # the Cache.update signature
        self.kv.append((key_states, value_states))
        return key_states, value_states


def _cache_kwarg(decoder: torch.nn.Module) -> str:
    """The decoder's name for its KV-cache argument: ``cache`` (recent Transformers) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@torch.no_grad()
def tree_score_and_decode(parts: FastParts, prompts: list[list[int]], objects: list[list[int]],
                          gen_prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int,
                          tokens_per_forward: int, out: torch.Tensor, hits: torch.Tensor, first_logp: bool = False,
                          bar: Any = None) -> tuple[list[list[int]], torch.Tensor | None]:
    """Teacher-forced scores of (prompt, object) pairs and greedy continuations of ``gen_prompts``.

    Adds each pair's object-token log-probabilities to ``out`` and argmax hits to ``hits`` (float64, (N,)).
    Returns the new tokens of each greedy prompt (EOS kept, stops there or after ``max_new_tokens``) and,
    with ``first_logp``, the first step's log-distributions (G, V) float32 on CPU. Each forward runs
    ``tokens_per_forward // ROW_TOKENS`` prefix-tree rows (at least one); a greedy prompt is decoded right
    after the forward that holds its path, so only one batch's keys and values are held at a time.
    ``bar`` (a tqdm bar), when given, gets the number of forwards as its total and advances after each.
    """
    rows_per_batch = max(1, tokens_per_forward // ROW_TOKENS)
    packed = pack([p + o[:-1] for p, o in zip(prompts, objects, strict=True)] + gen_prompts, ROW_TOKENS)
    where_gen = packed.where[len(prompts):]
    tf: dict[int, list[tuple[int, int, int, int]]] = {}  # batch -> (pair, token, row, col) per object token
    for i, (p, o) in enumerate(zip(prompts, objects, strict=True)):
        for k, t in enumerate(o):
            r, c = packed.where[i][len(p) - 1 + k]
            tf.setdefault(r // rows_per_batch, []).append((i, t, r, c))
    gen: dict[int, list[int]] = {}  # batch -> greedy prompts whose path lies in it
    for g, path in enumerate(where_gen):
        gen.setdefault(path[0][0] // rows_per_batch, []).append(g)
    new: list[list[int]] = [[] for _ in gen_prompts]
    first = torch.empty((len(gen_prompts), parts.head.weight.shape[0])) if first_logp and gen_prompts else None
    batches = sorted(set(tf) | set(gen))
    if bar is not None:
        bar.reset(total=len(batches))
    for b in batches:
        idx = range(b * rows_per_batch, min((b + 1) * rows_per_batch, len(packed.tokens)))
        hidden, kv = _tree_forward(parts, packed, idx, pad_id, keep_kv=b in gen)
        if b in tf:
            _score_nodes(parts.head, hidden, idx.start, tf[b], out, hits)
        if b in gen:
            g_idx = gen[b]
            tokens, logits0 = _decode(parts, hidden, kv, [where_gen[g] for g in g_idx], idx.start, max_new_tokens,
                                      pad_id, eos_id)
            for g, row in zip(g_idx, tokens, strict=True):
                new[g] = row
            if first is not None:
                first[torch.tensor(g_idx)] = torch.log_softmax(logits0, -1).cpu()
        if bar is not None:
            bar.update()
    return new, first


def _tree_forward(parts: FastParts, packed: PackedRows, idx: range, pad_id: int, keep_kv: bool
                  ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Last hidden states (R, L, d) of prefix-tree rows ``idx`` and, with ``keep_kv``, every layer's (K, V)."""
    device = parts.head.weight.device
    ids, mask, pos = batch_tensors(packed, idx, pad_id, parts.head.weight.dtype)
    recorder = _KVRecorder() if keep_kv else None
    kw = {_cache_kwarg(parts.decoder): recorder, "use_cache": True} if keep_kv else {"use_cache": False}
    hidden = parts.decoder(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           **kw).last_hidden_state
    return hidden, (recorder.kv if recorder is not None else [])


def _score_nodes(head: torch.nn.Module, hidden: torch.Tensor, row0: int, items: list[tuple[int, int, int, int]],
                 out: torch.Tensor, hits: torch.Tensor) -> None:
    """Head once per distinct predicting node, then each object token's log-probability and argmax hit."""
    device = hidden.device
    nodes: dict[tuple[int, int], int] = {}
    inv = [nodes.setdefault((r - row0, c), len(nodes)) for _, _, r, c in items]
    rc = torch.tensor(list(nodes), device=device)
    logits = head(hidden[rc[:, 0], rc[:, 1]]).float()  # (U, V)
    lsm = torch.log_softmax(logits, -1)
    arg = logits.argmax(-1)
    inv_t = torch.tensor(inv, device=device)
    tok = torch.tensor([t for _, t, _, _ in items], device=device)
    pair = torch.tensor([i for i, _, _, _ in items])
    out.index_add_(0, pair, lsm[inv_t, tok].double().cpu())
    hits.index_add_(0, pair, (arg[inv_t] == tok).double().cpu())


def _decode(parts: FastParts, hidden: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]],
            paths: list[list[tuple[int, int]]], row0: int, max_new_tokens: int, pad_id: int, eos_id: int
            ) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy decoding of prompts whose (row, col) paths lie in this tree batch, from its recorded K/V.

    Each prompt's keys and values are gathered from its path into a left-padded cache; positions continue
    from the prompt's length (as ``generate`` derives them from a left-padded mask). A row that emitted EOS
    continues with ``pad_id``; the loop stops when every row has finished. Returns the new tokens per
    prompt (cut after EOS) and the first step's logits (G, V) float32.
    """
    device = hidden.device
    width = max(len(p) for p in paths)
    rows = torch.zeros((len(paths), width), dtype=torch.long)
    cols = torch.zeros((len(paths), width), dtype=torch.long)
    mask = torch.zeros((len(paths), width), dtype=torch.long)
    for g, path in enumerate(paths):
        rows[g, width - len(path) :] = torch.tensor([r - row0 for r, _ in path])
        cols[g, width - len(path) :] = torch.tensor([c for _, c in path])
        mask[g, width - len(path) :] = 1
    rows, cols, mask = rows.to(device), cols.to(device), mask.to(device)
    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):  # (R, H, L, D) -> (G, H, width, D)
        cache.update(k[rows, :, cols].transpose(1, 2), v[rows, :, cols].transpose(1, 2), layer)
    logits = first = parts.head(hidden[rows[:, -1], cols[:, -1]]).float()
    pos = mask.sum(-1, keepdim=True)  # (G, 1): the next position of each prompt
    kw = {_cache_kwarg(parts.decoder): cache, "use_cache": True}
    done = torch.zeros(len(paths), dtype=torch.bool, device=device)
    steps = []
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1).masked_fill_(done, pad_id)
        steps.append(nxt)
        done |= nxt == eos_id
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        h = parts.decoder(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, **kw).last_hidden_state
        pos = pos + 1
        logits = parts.head(h[:, -1]).float()
    tokens = torch.stack(steps, 1).tolist() if steps else [[] for _ in paths]
    return [_cut_at(row, eos_id) for row in tokens], first


def _cut_at(tokens: list[int], eos_id: int) -> list[int]:
    """``tokens`` up to and including the first ``eos_id`` (what follows is padding)."""
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens
