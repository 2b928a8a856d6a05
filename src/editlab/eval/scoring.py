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

from editlab.vocab import hit_exact, hit_paper  # noqa: F401 - defined in editlab.vocab; re-exported for old importers


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


def _rows(prompts: list[list[int]], objects: list[list[int]]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Sequences to run and, per sequence, the (pair, first predicting position) it scores.

    Work is shared across candidates of one prompt where it is exact to do so: all single-token
    objects of a prompt are read from one prompt-only row at its last position (the " true" and
    " false" labels of a logical sentence cost one row, not two); a multi-token object needs its own
    prompt + object row (teacher forcing).
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


def _head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, lm_head) of a Hugging Face causal LM (also through PEFT wrappers), or None."""
    try:
        return model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


@torch.no_grad()
def object_scores(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]],
                  pad_id: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(object | prompt), teacher-forced token accuracy) for each pair, shapes (N,), (N,).

    Right-padded batches sorted by length, one forward per batch (see :func:`_rows` for the rows).
    The output head and log-softmax run only at the positions that predict object tokens, not over
    the whole (B, T, V) logits tensor. Token accuracy is EasyEdit's: the share of object tokens that
    are the argmax given the gold prefix.
    """
    device = next(model.parameters()).device
    n = len(prompts)
    out = torch.zeros(n, dtype=torch.float64)
    hits = torch.zeros(n, dtype=torch.float64)
    rows = sorted(_rows(prompts, objects), key=lambda r: len(r[0]))
    parts = _head(model)
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
        ids, mask = ids.to(device), mask.to(device)
        r_t, p_t = torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)
        if parts is not None:
            hidden = parts[0](input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, d)
            logits = parts[1](hidden[r_t, p_t]).float()  # (K, V): only the predicting positions
        else:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[r_t, p_t].float()
        tok_t = torch.tensor(tok, device=device)
        lp = torch.log_softmax(logits, -1).gather(-1, tok_t[:, None]).squeeze(-1)  # (K,)
        pair_t = torch.tensor(pair)
        out.index_add_(0, pair_t, lp.double().cpu())
        hits.index_add_(0, pair_t, (logits.argmax(-1) == tok_t).double().cpu())
    lengths = torch.tensor([max(len(o), 1) for o in objects], dtype=torch.float64)
    return out, hits / lengths


def left_padded(prompts: list[list[int]], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        ids, mask = left_padded(prompts, idx, tok.pad_token_id)
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
            ids, mask = left_padded(prompts, idx, tok.pad_token_id)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for row, i in enumerate(idx):
                out[i] = tok.decode(gen[row, ids.shape[1] :], skip_special_tokens=True)
    return out

