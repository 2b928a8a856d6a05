"""Batched scoring of prompts: teacher-forced object probabilities and greedy continuations.

Tokenisation follows the paper (evaluation.md): BOS + tokens("s r") + tokens(" o"), prompt and
object tokenised separately, no end marker. p_LM(o | "s r") is the product of the object's token
probabilities. Sequences are sorted by length before batching so padding stays small, and each
batch is one forward pass; greedy decoding runs with a KV cache on left-padded prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def encode_pairs(tok: PreTrainedTokenizerBase, prompts: Sequence[str], objects: Sequence[str]
                 ) -> tuple[list[list[int]], list[list[int]]]:
    """(BOS + prompt ids, object ids) with the object tokenised with its leading space."""
    p = tok(list(prompts), add_special_tokens=False)["input_ids"]
    o = tok([" " + x for x in objects], add_special_tokens=False)["input_ids"]
    return [[tok.bos_token_id, *x] for x in p], o


@torch.no_grad()
def object_logprobs(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]],
                    pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """log p(object | prompt) for each pair, shape (N,), float64 on CPU.

    Right-padded batches of prompt + object sorted by total length; one forward per batch; the
    log-softmax is gathered only at the object positions.
    """
    device = next(model.parameters()).device
    n = len(prompts)
    out = torch.empty(n, dtype=torch.float64)
    order = sorted(range(n), key=lambda i: len(prompts[i]) + len(objects[i]))
    for a in range(0, n, batch_size):
        idx = order[a : a + batch_size]
        seqs = [prompts[i] + objects[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        target = torch.zeros((len(idx), width), dtype=torch.bool)
        for row, (i, s) in enumerate(zip(idx, seqs, strict=True)):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
            target[row, len(prompts[i]) : len(s)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): predicts token t+1
        tok_lp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        tok_lp = (tok_lp * target[:, 1:].to(device)).sum(-1)
        out[torch.tensor(idx)] = tok_lp.double().cpu()
    return out


@torch.no_grad()
def greedy_continuations(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
                         max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """Greedy continuation text of each prompt (left-padded batches, KV cache, stops at EOS)."""
    device = next(model.parameters()).device
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for a in range(0, len(order), batch_size):
        idx = order[a : a + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        for row, i in enumerate(idx):
            out[i] = tok.decode(gen[row, width:], skip_special_tokens=True)
    return out


def hit_paper(continuation: str, label: str) -> bool:
    """Paper protocol: the label is a substring of the continuation, lower-cased, periods removed."""
    return label.lower().replace(".", "") in continuation.lower().replace(".", "")


def hit_exact(continuation: str, label: str) -> bool:
    """Exact protocol: the continuation up to the first '.', '"' or end, stripped, equals the label."""
    cut = len(continuation)
    for ch in ('.', '"'):
        j = continuation.find(ch)
        if j >= 0:
            cut = min(cut, j)
    return continuation[:cut].strip() == label
