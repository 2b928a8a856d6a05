"""A paper-style reference scorer: the same quantities as :func:`~editlab.eval.probes.score_cases`, computed
the way the paper's evaluation code computes them. Used only by ``bench/edit.py`` and its test.

Why it exists: the speed claim of our scoring core (one prefix-tree pass that computes every distinct prefix
of all probes of many cases once, then KV-cached greedy decoding from that pass's keys and values;
:mod:`editlab.eval.fast_scoring`) is only meaningful beside the loop it replaces. The reference follows
Hase et al. (2024)'s code layout:

- batches of 64 prompts in the order given (no length sorting), LEFT-padded;
- a separate teacher-forced scoring pass for each probe type (s1r1, s1r2, ..., tf_A, not_A, ...), and for
  logical sentences one pass for " true" and another for " false"; every probe is scored as listed (no
  de-duplication of repeated (prompt, object) pairs);
- greedy decoding as a loop of ``max_new_tokens`` full forwards WITHOUT a KV cache (the whole sequence is
  re-run at every step), once per atomic probe type;
- fp32 logits.

It computes p_LM(o | "s r") = prod_k p(o_k | BOS, s r, o_<k) (evaluation.md, "LM probabilities") with the
prompt and the object tokenised apart (:func:`~editlab.eval.scoring.encode_pairs`), exactly as our core, so
the two agree to float rounding: the test holds them to 1e-4 on probabilities and to equality on greedy
continuations. Position ids are derived from the attention mask (as ``generate`` does), so left padding
does not shift positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from editlab.eval.probes import ATOMIC, CaseScores
from editlab.eval.scoring import encode_pairs
from editlab.utils.padding import left_padded

BATCH = 64  # the paper's evaluation batch size


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each left-padded row."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def reference_object_scores(model: torch.nn.Module, prompts: list[list[int]], objects: list[list[int]],
                            pad_id: int, batch_size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(object | prompt), teacher-forced token accuracy) per pair, paper style; shapes (N,), (N,).

    Batches of ``batch_size`` pairs in the given order, prompt + object left-padded to the longest in the
    batch, one forward each. With left padding the object always ends at the last column, so its tokens
    are predicted by the ``len(object)`` columns before the last.
    """
    device = next(model.parameters()).device
    seqs = [p + o for p, o in zip(prompts, objects, strict=True)]
    out = torch.empty(len(seqs), dtype=torch.float64)
    acc = torch.empty(len(seqs), dtype=torch.float64)
    for a in range(0, len(seqs), batch_size):
        idx = list(range(a, min(a + batch_size, len(seqs))))
        ids, mask = left_padded(seqs, idx, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False).logits
        logits = logits[:, :-1].float()  # (B, T-1, V): column t predicts token t+1
        nxt = ids[:, 1:]
        target = torch.zeros_like(nxt, dtype=torch.bool)
        for row, i in enumerate(idx):
            target[row, nxt.shape[1] - len(objects[i]) :] = True
        tok_lp = torch.log_softmax(logits, -1).gather(-1, nxt.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        hits = (logits.argmax(-1) == nxt) & target
        out[a : a + len(idx)] = (tok_lp * target).sum(-1).double().cpu()
        acc[a : a + len(idx)] = (hits.sum(-1) / target.sum(-1).clamp(min=1)).double().cpu()
    return out, acc


@torch.no_grad()
def reference_greedy(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
                     max_new_tokens: int, batch_size: int = BATCH) -> list[str]:
    """Greedy continuations, paper style: left-padded batches, ``max_new_tokens`` full forwards, no KV cache.

    A row that produced EOS keeps emitting padding (as ``generate`` does); the loop stops early once every
    row of the batch has finished.
    """
    device = next(model.parameters()).device
    out: list[str] = []
    for a in range(0, len(prompts), batch_size):
        idx = list(range(a, min(a + batch_size, len(prompts))))
        ids, mask = left_padded(prompts, idx, tok.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        width = ids.shape[1]
        done = torch.zeros(len(idx), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False).logits
            nxt = logits[:, -1].float().argmax(-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
            done |= nxt == tok.eos_token_id
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if bool(done.all()):
                break
        out += [tok.decode(ids[row, width:], skip_special_tokens=True) for row in range(len(idx))]
    return out


def reference_score_cases(model: torch.nn.Module, tok: PreTrainedTokenizerBase, cases: Sequence[dict],
                          max_new_tokens: int, prefixes: Sequence[str] | None = None, batch_size: int = BATCH
                          ) -> list[CaseScores]:
    """The paper-style equivalent of :func:`~editlab.eval.probes.score_cases` (same :class:`CaseScores`).

    One scoring pass per probe type over all cases (two for logical types: " true" and " false"), one
    greedy loop per atomic probe type, then the request's token accuracy and its TF sentence, each a pass
    of its own.
    """
    prefixes = list(prefixes) if prefixes is not None else [""] * len(cases)
    text = lambda ci, prompt: f"{prefixes[ci]} {prompt}" if prefixes[ci] else prompt  # noqa: E731

    def score(items: list[tuple[str, str]]) -> tuple[list[float], list[float]]:
        prompts, objects = encode_pairs(tok, [p for p, _ in items], [o for _, o in items])
        logp, acc = reference_object_scores(model, prompts, objects, tok.pad_token_id, batch_size)
        return logp.exp().tolist(), acc.tolist()

    p = [[float("nan")] * len(c["probes"]) for c in cases]
    p_false: list[list[float | None]] = [[None] * len(c["probes"]) for c in cases]
    gen: list[dict[str, str]] = [{} for _ in cases]
    kinds = list(dict.fromkeys(pr["kind"] for c in cases for pr in c["probes"]))
    for kind in kinds:
        at = [(ci, pi) for ci, c in enumerate(cases) for pi, pr in enumerate(c["probes"]) if pr["kind"] == kind]
        probe = lambda ci, pi: cases[ci]["probes"][pi]  # noqa: E731
        if "object" in probe(*at[0]):
            probs, _ = score([(text(ci, probe(ci, pi)["prompt"]), probe(ci, pi)["object"]) for ci, pi in at])
            for (ci, pi), v in zip(at, probs, strict=True):
                p[ci][pi] = v
        else:
            for label, dest in (("true", p), ("false", p_false)):
                probs, _ = score([(text(ci, probe(ci, pi)["prompt"]), label) for ci, pi in at])
                for (ci, pi), v in zip(at, probs, strict=True):
                    dest[ci][pi] = v
        if kind in ATOMIC:
            first: dict[int, int] = {}  # one greedy prompt per case and type
            for ci, pi in at:
                first.setdefault(ci, pi)
            texts = [text(ci, probe(ci, pi)["prompt"]) for ci, pi in first.items()]
            prompts = [[tok.bos_token_id, *x] for x in tok(texts, add_special_tokens=False)["input_ids"]]
            for ci, g in zip(first, reference_greedy(model, tok, prompts, max_new_tokens, batch_size), strict=True):
                gen[ci][kind] = g
    _, token_acc = score([(text(ci, f"{c['subject']} {c['relation']}"), c["requested_object"])
                          for ci, c in enumerate(cases)])
    tf = [text(ci, f'"{c["subject"]} {c["relation"]} {c["requested_object"]}" is') for ci, c in enumerate(cases)]
    tf_true, _ = score([(x, "true") for x in tf])
    tf_false, _ = score([(x, "false") for x in tf])
    return [CaseScores(p=p[i], p_false=p_false[i], gen=gen[i], token_acc=token_acc[i],
                       req_tf=(tf_true[i], tf_false[i])) for i in range(len(cases))]
