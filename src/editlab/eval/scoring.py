"""Batched scoring of prompts: teacher-forced object probabilities and greedy continuations.

Tokenisation follows the paper (evaluation.md): BOS + tokens("s r") + tokens(" o"), prompt and
object tokenised separately, no end marker. p_LM(o | "s r") is the product of the object's token
probabilities; token accuracy is EasyEdit's (the share of object tokens that are the argmax given the
gold prefix); greedy decoding stops at EOS or after ``max_new_tokens``.

Two paths compute the same numbers (tested to agree to 1e-5 on plain models):

- **fast path**, for a plain Hugging Face causal LM (:func:`~editlab.eval.fast_scoring.fast_parts`):
  every distinct prefix of all teacher-forced sequences and greedy prompts runs once, packed as
  prefix-tree rows with a tree attention mask (:mod:`editlab.eval.prefix_tree`); the output head runs
  only at positions that predict an object token or end a greedy prompt; greedy decoding continues from
  that pass's keys and values in a hand-written KV-cached loop (decoder + head at the last position, the
  argmax of ``generate``'s greedy search without its per-step machinery). See
  :mod:`editlab.eval.fast_scoring`.
- **generic path**, for any other module (memory/wrapper editors such as SERAC or GRACE, whose forward
  differs from their base decoder's): the model is only ever called through its own ``forward`` and
  ``generate``, so nothing a wrapper does is bypassed.

What the scorer requires of a model (the contract of ``EditHandle.model``; a wrapper must provide
exactly this):

- ``parameters()`` yielding at least one tensor (its device is where inputs go);
- ``forward(input_ids=ids, attention_mask=mask)`` with right-padded ``ids`` (B, T) and a 0/1 ``mask``
  (B, T) returning an object with ``.logits`` (B, T, V): the next-token logits at every position of a
  causal LM (a position never depends on later ones, so right padding cannot change real positions);
- ``generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=...,
  eos_token_id=..., output_scores=bool, return_dict_in_generate=True)`` with LEFT-padded ``ids``, Hugging
  Face semantics: ``.sequences`` (B, T + new) continues each row greedily, a finished row (EOS) is
  continued with ``pad_token_id``; ``.scores[0]`` (B, V) are the first step's logits when
  ``output_scores`` is set (locality KL); ``do_sample=True`` with ``temperature``, ``top_k``, ``top_p`` for
  :func:`sample_continuations`.

A wrapper whose greedy ``generate`` follows its ``forward`` is then scored consistently on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from editlab.eval.fast_scoring import fast_parts, tree_score_and_decode
from editlab.utils.padding import left_padded
from editlab.vocab import object_ids, prompt_ids


def encode_pairs(tok: PreTrainedTokenizerBase, prompts: Sequence[str], objects: Sequence[str]
                 ) -> tuple[list[list[int]], list[list[int]]]:
    """(BOS + prompt ids, object ids): the tokenisation rule of :mod:`editlab.vocab`, applied to pairs."""
    return prompt_ids(tok, prompts), object_ids(tok, objects)


def object_logprobs(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]],
                    pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """log p(object | prompt) for each pair, shape (N,), float64 on CPU (see :func:`object_scores`)."""
    return object_scores(model, prompts, objects, pad_id, batch_size)[0]


@torch.no_grad()
def object_scores(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]],
                  pad_id: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(object | prompt), teacher-forced token accuracy) for each pair, shapes (N,), (N,), float64."""
    logp, acc, _, _ = _score(model, prompts, objects, [], 0, pad_id, pad_id, batch_size, False)
    return logp, acc


@torch.no_grad()
def score_and_decode(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
                     objects: list[list[int]], gen_prompts: list[list[int]], max_new_tokens: int,
                     batch_size: int = 256, bar: Any = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """:func:`object_scores` of the pairs and :func:`greedy_continuations` of ``gen_prompts`` together.

    Same numbers as the two calls; on the fast path one prefix-tree pass serves both (a greedy prompt that
    is also a scored prompt costs nothing extra, and decoding starts from that pass's keys and values).
    ``bar``: a tqdm bar to advance by one per forward batch (its total is set here); the batches, and so
    the numbers, are the same with or without it.
    """
    logp, acc, new, _ = _score(model, prompts, objects, gen_prompts, max_new_tokens, tok.pad_token_id,
                               tok.eos_token_id, batch_size, False, bar)
    return logp, acc, tok.batch_decode(new, skip_special_tokens=True)


@torch.no_grad()
def greedy_continuations(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
                         max_new_tokens: int, batch_size: int = 256, first_logp: bool = False
                         ) -> list[str] | tuple[list[str], torch.Tensor]:
    """Greedy continuation text of each prompt (KV cache, stops at EOS or after ``max_new_tokens``).

    With ``first_logp`` also returns the next-token log-distribution at the last prompt position,
    shape (N, V) float32 on CPU (for locality KL), read from the first decoding step at no extra cost.
    """
    _, _, new, first = _score(model, [], [], prompts, max_new_tokens, tok.pad_token_id, tok.eos_token_id,
                              batch_size, first_logp)
    texts = tok.batch_decode(new, skip_special_tokens=True)
    return (texts, first) if first_logp else texts


def _score(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]], gen_prompts: list[list[int]],
           max_new_tokens: int, pad_id: int, eos_id: int, batch_size: int, first_logp: bool, bar: Any = None
           ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], torch.Tensor | None]:
    """(log p, token accuracy, greedy new tokens, first-step log-distributions or None) on the right path.

    ``batch_size`` counts sequences on the generic path; the fast path runs about as many tokens
    (``batch_size`` x 16) per forward as prefix-tree rows.
    """
    out = torch.zeros(len(prompts), dtype=torch.float64)
    hits = torch.zeros(len(prompts), dtype=torch.float64)
    parts = fast_parts(model)
    longest = max((len(s) for s in [*gen_prompts, *(p + o for p, o in zip(prompts, objects, strict=True))]), default=0)
    if parts is not None and (parts.window is None or longest + max_new_tokens <= parts.window):
        new, first = tree_score_and_decode(parts, prompts, objects, gen_prompts, max_new_tokens, pad_id, eos_id,
                                           batch_size * 16, out, hits, first_logp, bar)
    else:  # a wrapper, an untested architecture, or sequences a sliding window would cut: the model's own calls
        rows = sorted(_rows(prompts, objects), key=lambda r: len(r[0]))
        if bar is not None:
            bar.reset(total=-(-len(rows) // batch_size) - (-len(gen_prompts) // batch_size))
        _generic_scores(model, rows, objects, pad_id, batch_size, out, hits, bar)
        new, first = _generic_greedy(model, gen_prompts, max_new_tokens, pad_id, eos_id, batch_size, first_logp,
                                     bar)
    lengths = torch.tensor([max(len(o), 1) for o in objects], dtype=torch.float64)
    return out, hits / lengths, new, first


def _rows(prompts: list[list[int]], objects: list[list[int]]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Generic path: sequences to run and, per sequence, the (pair, first predicting position) it scores.

    All single-token objects of a prompt are read from one prompt-only row at its last position (the
    " true" and " false" labels of a logical sentence cost one row, not two); a multi-token object needs
    its own prompt + object row (teacher forcing).
    """
    single: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    rows: list[tuple[list[int], list[tuple[int, int]]]] = []
    for i, (p, o) in enumerate(zip(prompts, objects, strict=True)):
        if len(o) == 1:
            single.setdefault(tuple(p), []).append((i, len(p) - 1))
        else:
            rows.append((p + o[:-1], [(i, len(p) - 1)]))  # the last object token is predicted, never input
    rows += [(list(p), pairs) for p, pairs in single.items()]
    return rows


def _generic_scores(model: torch.nn.Module, rows: list[tuple[list[int], list[tuple[int, int]]]],
                    objects: list[list[int]], pad_id: int, batch_size: int, out: torch.Tensor, hits: torch.Tensor,
                    bar: Any = None) -> None:
    """Generic path: right-padded batches of the length-sorted :func:`_rows` through the model's own ``forward``."""
    device = next(model.parameters()).device
    for a in range(0, len(rows), batch_size):
        batch = rows[a : a + batch_size]
        width = max(len(seq) for seq, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        r_idx, t_idx, tok, pair = [], [], [], []  # one entry per predicted object token
        for row, (seq, pairs) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            for i, start in pairs:
                for k, t in enumerate(objects[i]):
                    r_idx.append(row)
                    t_idx.append(start + k)
                    tok.append(t)
                    pair.append(i)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits[torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)].float()  # (K, V)
        tok_t = torch.tensor(tok, device=device)
        pair_t = torch.tensor(pair)
        out.index_add_(0, pair_t, torch.log_softmax(logits, -1).gather(-1, tok_t[:, None]).squeeze(-1).double().cpu())
        hits.index_add_(0, pair_t, (logits.argmax(-1) == tok_t).double().cpu())
        if bar is not None:
            bar.update()


def _generic_greedy(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, pad_id: int,
                    eos_id: int, batch_size: int, first_logp: bool, bar: Any = None
                    ) -> tuple[list[list[int]], torch.Tensor | None]:
    """Generic path: the model's own ``generate`` on length-sorted, left-padded batches."""
    device = next(model.parameters()).device
    new: list[list[int]] = [[] for _ in prompts]
    first = None
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for a in range(0, len(order), batch_size):
        idx = order[a : a + batch_size]
        ids, mask = left_padded(prompts, idx, pad_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                             output_scores=first_logp, return_dict_in_generate=True)
        for row, i in enumerate(idx):
            new[i] = gen.sequences[row, ids.shape[1] :].tolist()
        if first_logp:
            lp = torch.log_softmax(gen.scores[0].float(), -1).cpu()
            if first is None:
                first = torch.empty((len(prompts), lp.shape[-1]))
            first[torch.tensor(idx)] = lp
        if bar is not None:
            bar.update()
    return new, first


@torch.no_grad()
def sample_continuations(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
                         max_new_tokens: int, seed: int, batch_size: int = 256, top_k: int = 0) -> list[str]:
    """Sampled continuations (temperature 1, no top-p; ``top_k`` 0: no top-k), reproducible for a given ``seed``."""
    device = next(model.parameters()).device
    out: list[str] = [""] * len(prompts)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for a in range(0, len(prompts), batch_size):
            idx = list(range(a, min(a + batch_size, len(prompts))))
            ids, mask = left_padded(prompts, idx, tok.pad_token_id)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=1.0, top_k=top_k, top_p=1.0, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for row, i in enumerate(idx):
                out[i] = tok.decode(gen[row, ids.shape[1] :], skip_special_tokens=True)
    return out

