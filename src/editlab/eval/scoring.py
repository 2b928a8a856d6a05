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


def object_logprobs(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]],
                    pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """log p(object | prompt) for each pair, shape (N,), float64 on CPU (see :func:`object_scores`)."""
    return object_scores(model, prompts, objects, pad_id, batch_size)[0]


@torch.no_grad()
def object_scores(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]],
                  pad_id: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(object | prompt), teacher-forced token accuracy) for each pair, shapes (N,), (N,).

    Right-padded batches of prompt + object sorted by total length; one forward per batch; the
    log-softmax is gathered only at the object positions. Token accuracy is EasyEdit's: the share of
    object tokens that are the argmax given the gold prefix.
    """
    device = next(model.parameters()).device
    n = len(prompts)
    out = torch.empty(n, dtype=torch.float64)
    acc = torch.empty(n, dtype=torch.float64)
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
        ids, mask, target = ids.to(device), mask.to(device), target[:, 1:].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()  # predicts t+1
        logp = torch.log_softmax(logits, dim=-1)  # (B, T-1, V)
        nxt = ids[:, 1:]
        tok_lp = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        hits = (logits.argmax(-1) == nxt) & target
        sel = torch.tensor(idx)
        out[sel] = (tok_lp * target).sum(-1).double().cpu()
        acc[sel] = (hits.sum(-1) / target.sum(-1).clamp(min=1)).double().cpu()
    return out, acc


def _left_padded(prompts: list[list[int]], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(prompts[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
        mask[row, width - len(prompts[i]) :] = 1
    return ids, mask


@torch.no_grad()
def greedy_continuations(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
                         max_new_tokens: int, batch_size: int = 256, first_logp: bool = False
                         ) -> list[str] | tuple[list[str], torch.Tensor]:
    """Greedy continuation text of each prompt (left-padded batches, KV cache, stops at EOS).

    With ``first_logp`` also returns the next-token log-distribution at the last prompt position,
    shape (N, V) float32 on CPU (for locality KL), read from the first decoding step at no extra cost.
    """
    device = next(model.parameters()).device
    out: list[str] = [""] * len(prompts)
    first = torch.empty(0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for a in range(0, len(order), batch_size):
        idx = order[a : a + batch_size]
        ids, mask = _left_padded(prompts, idx, tok.pad_token_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, output_scores=first_logp,
                             return_dict_in_generate=True)
        for row, i in enumerate(idx):
            out[i] = tok.decode(gen.sequences[row, ids.shape[1] :], skip_special_tokens=True)
        if first_logp:
            lp = torch.log_softmax(gen.scores[0].float(), -1).cpu()
            if first.numel() == 0:
                first = torch.empty((len(prompts), lp.shape[-1]))
            first[torch.tensor(idx)] = lp
    return (out, first) if first_logp else out


@torch.no_grad()
def sample_continuations(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
                         max_new_tokens: int, seed: int, batch_size: int = 256) -> list[str]:
    """Sampled continuations (temperature 1, no top-k/top-p), reproducible for a given ``seed``."""
    device = next(model.parameters()).device
    out: list[str] = [""] * len(prompts)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for a in range(0, len(prompts), batch_size):
            idx = list(range(a, min(a + batch_size, len(prompts))))
            ids, mask = _left_padded(prompts, idx, tok.pad_token_id)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for row, i in enumerate(idx):
                out[i] = tok.decode(gen[row, ids.shape[1] :], skip_special_tokens=True)
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
