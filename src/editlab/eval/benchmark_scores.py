"""The community benchmarks' own metrics on :class:`~editlab.benchmarks.BenchmarkCase` records, named by protocol.

Tokenisation follows the reference code: a prompt is what the model's tokenizer makes of it (its own special
tokens: a Llama tokenizer adds BOS, GPT-2's adds nothing), a target is ``tokenizer(" " + target)`` without special
tokens, and the target's tokens are teacher-forced after the prompt. (ROME and EasyEdit tokenise
``prompt + " " + target`` in one call and cut at the prompt's length; for the byte-level BPE tokenizers they use,
the space starts the target's first token, so the two agree.)

**CounterFact** (Meng et al., 2022, section 3 and appendix; ROME ``experiments/py/eval_utils_counterfact.py`` and
``experiments/summarize.py``). For each prompt the mean per-token negative log-likelihood of the new and of the
true target (``test_batch_prediction``). Per case, the share of prompts where the new target wins (rewrite:
Efficacy Success, ES; paraphrase: Paraphrase Success, PS) or the true one wins (neighborhood: Neighborhood Success,
NS), and the magnitudes ``exp(-nll_new) - exp(-nll_true)`` (EM, PM; NM the reverse). Summaries are means over
cases. ``score``: the harmonic mean of ES, PS and NS, the paper's Score S; ``score_reference_code``: the harmonic
mean of PS and NS, what ``summarize.py`` computes (the two disagree; both are reported, named).

**Token accuracy** (zsRE as ROME and MEND score it; KnowEdit as EasyEdit scores it, Zhang et al., 2024): the share
of target tokens that are the argmax given the gold prefix. Edit Succ. on the request, rephrase on paraphrases,
``portability/<kind>`` against the probe's first answer, and for ``locality/<kind>`` two figures: ``acc`` against
the probe's first answer (ROME's zsRE neighborhood accuracy) and ``agree``, the share of argmax tokens unchanged
from the pre-edit model (EasyEdit's locality). ``portability`` is the mean of a case's portability kinds
(KnowEdit's "average of all sub-scores").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

import torch
from scipy.stats import hmean
from transformers import PreTrainedTokenizerBase

from editlab.benchmarks import BenchmarkCase
from editlab.benchmarks.references import ReferenceTexts
from editlab.eval.scoring import sample_continuations
from editlab.metrics.fluency import ngram_entropy
from editlab.vocab import prompt_ids, with_prefix


@dataclass(frozen=True)
class Forced:
    """Teacher-forced scores of one (prompt, target) pair: per-token log p of the target and the argmax ids."""

    logp: tuple[float, ...]
    argmax: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def nll(self) -> float:
        """Mean per-token negative log-likelihood (ROME's ``test_batch_prediction``)."""
        return -fmean(self.logp)

    def acc(self, against: Sequence[int] | None = None) -> float:
        """Share of positions whose argmax is the target token (or the token in ``against``)."""
        ref = self.target if against is None else against
        return fmean(float(a == b) for a, b in zip(self.argmax, ref, strict=True))


@torch.no_grad()
def teacher_forced(model: torch.nn.Module, tok: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 64) -> dict[tuple[str, str], Forced]:
    """:class:`Forced` of each distinct (prompt, target) pair; right-padded, length-sorted batches, one forward each."""
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    todo = list(dict.fromkeys(pairs))
    enc = [(tok(p)["input_ids"], tok(" " + t, add_special_tokens=False)["input_ids"]) for p, t in todo]
    order = sorted(range(len(todo)), key=lambda i: len(enc[i][0]) + len(enc[i][1]))
    out: dict[tuple[str, str], Forced] = {}
    for a in range(0, len(order), batch_size):
        idx = order[a:a + batch_size]
        seqs = [enc[i][0] + enc[i][1][:-1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, :len(s)], mask[row, :len(s)] = torch.tensor(s), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for row, i in enumerate(idx):
            prompt, target = enc[i]
            pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target), device=device)
            lsm = torch.log_softmax(logits[row, pos], -1)
            tgt = torch.tensor(target, device=device)
            out[todo[i]] = Forced(tuple(lsm.gather(-1, tgt[:, None]).squeeze(-1).tolist()),
                                  tuple(lsm.argmax(-1).tolist()), tuple(target))
    return out


def _cf_pairs(case: BenchmarkCase) -> dict[str, list[str]]:
    return {"rewrite": [case.prompt], "paraphrase": [p.prompt for p in case.of_kind("paraphrase")],
            "neighborhood": [p.prompt for p in case.of_kind("neighborhood")]}


def counterfact_metrics(model: torch.nn.Module, tok: PreTrainedTokenizerBase, cases: Sequence[BenchmarkCase],
                        prefix: str = "") -> list[dict[str, float | None]]:
    """Per case: ES, PS, NS (``*_success``) and EM, PM, NM (``*_diff``); None where a case has no such prompt or no
    true target. ``prefix``: an in-context editor's text before every prompt."""
    pairs = [(p, t) for c in cases if c.target_true for ps in _cf_pairs(c).values() for p in ps
             for t in (c.target_new, c.target_true[0])]
    scored = _prefixed(teacher_forced(model, tok, [(with_prefix(prefix, p), t) for p, t in pairs]), pairs, prefix)
    out = []
    for c in cases:
        row: dict[str, float | None] = {}
        for kind, prompts in _cf_pairs(c).items():
            if not c.target_true or not prompts:
                row[f"{kind}_success"] = row[f"{kind}_diff"] = None
                continue
            new = [scored[(p, c.target_new)].nll for p in prompts]
            true = [scored[(p, c.target_true[0])].nll for p in prompts]
            sign = -1.0 if kind == "neighborhood" else 1.0  # the true target should win on a neighbour
            row[f"{kind}_success"] = fmean(float(sign * (t - n) > 0) for n, t in zip(new, true, strict=True))
            row[f"{kind}_diff"] = fmean(sign * (math.exp(-n) - math.exp(-t)) for n, t in zip(new, true, strict=True))
        out.append(row)
    return out


def summarize_counterfact(rows: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Means over cases (as fractions) and the two scores of the module docstring."""
    keys = [k for k in (rows[0] if rows else {})]
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = fmean(vals) if vals else None
    parts = [out.get(f"{k}_success") for k in ("rewrite", "paraphrase", "neighborhood")]
    out["score"] = float(hmean(parts)) if all(p is not None for p in parts) else None
    out["score_reference_code"] = float(hmean(parts[1:])) if all(p is not None for p in parts[1:]) else None
    return out


def _token_pairs(case: BenchmarkCase) -> list[tuple[str, str, str]]:
    """(metric key, prompt, target) of a case's token-accuracy probes."""
    out = [("edit_succ", case.prompt, case.target_new)]
    out += [("rephrase", p.prompt, case.target_new) for p in case.of_kind("paraphrase")]
    out += [(p.kind, p.prompt, p.answers[0]) for p in case.probes
            if p.answers and p.kind.split("/")[0] in ("portability", "locality")]
    return out


def token_scores(model: torch.nn.Module, tok: PreTrainedTokenizerBase, cases: Sequence[BenchmarkCase],
                 prefix: str = "", keys: Sequence[str] | None = None) -> list[list[tuple[str, Forced]]]:
    """Per case, (metric key, :class:`Forced`) of each token-accuracy probe (score once before and once after);
    ``keys``: only these metric keys (CounterFact's request and paraphrases); ``prefix`` as above."""
    per_case = [[x for x in _token_pairs(c) if keys is None or x[0] in keys] for c in cases]
    pairs = [(p, t) for pc in per_case for _, p, t in pc]
    scored = _prefixed(teacher_forced(model, tok, [(with_prefix(prefix, p), t) for p, t in pairs]), pairs, prefix)
    return [[(k, scored[(p, t)]) for k, p, t in pc] for pc in per_case]


def _prefixed(scored: dict[tuple[str, str], Forced], pairs: Sequence[tuple[str, str]], prefix: str
              ) -> dict[tuple[str, str], Forced]:
    """``scored`` keyed by the pairs without their prefix."""
    return {(p, t): scored[(with_prefix(prefix, p), t)] for p, t in pairs}


def token_metrics(post: list[list[tuple[str, Forced]]], pre: list[list[tuple[str, Forced]]]
                  ) -> list[dict[str, float]]:
    """Per case: mean token accuracy per key; for locality keys ``<key> acc`` and ``<key> agree`` (against ``pre``);
    ``portability``: the mean of the case's portability keys."""
    out = []
    for case_post, case_pre in zip(post, pre, strict=True):
        groups: dict[str, list[float]] = {}
        for (key, f), (_, g) in zip(case_post, case_pre, strict=True):
            if key.startswith("locality/"):
                groups.setdefault(f"{key} acc", []).append(f.acc())
                groups.setdefault(f"{key} agree", []).append(f.acc(g.argmax))
            else:
                groups.setdefault(key, []).append(f.acc())
        row = {k: fmean(v) for k, v in groups.items()}
        port = [v for k, v in row.items() if k.startswith("portability/")]
        if port:
            row["portability"] = fmean(port)
        out.append(row)
    return out


def summarize_tokens(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean over the cases that have each key."""
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: fmean(r[k] for r in rows if k in r) for k in keys}


def generations(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompts: Sequence[str], max_len: int = 100,
                top_k: int = 5, seed: int = 0) -> list[str]:
    """ROME's ``generate_fast``: each prompt continued by top-``top_k`` sampling until the text is ``max_len`` tokens
    long, prompt included; returns prompt + continuation (what ROME's ``n_gram_entropy`` and reference score read).
    Prompts already ``max_len`` tokens long are returned as they are."""
    ids = prompt_ids(tok, prompts)
    out = list(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(ids):
        if max_len - len(p) > 0:
            groups.setdefault(max_len - len(p), []).append(i)
    for n_new, idx in sorted(groups.items()):
        conts = sample_continuations(model, tok, [ids[i] for i in idx], n_new, seed=seed + n_new, top_k=top_k)
        for i, c in zip(idx, conts, strict=True):
            out[i] = prompts[i] + c
    return out


def generation_metrics(model: torch.nn.Module, tok: PreTrainedTokenizerBase, cases: Sequence[BenchmarkCase],
                       max_len: int, prefix: str = "", references: ReferenceTexts | None = None, seed: int = 0
                       ) -> list[dict[str, float | None]]:
    """Per case ``fluency`` (ROME's generation entropy: the mean weighted bi/tri-gram entropy of its generations;
    EasyEdit's and KnowEdit's "Fluency") and, for CounterFact with ``references``, ``reference_score`` (ROME's
    TF-IDF consistency with the new target's snippets). Generated from CounterFact's ``generation_prompts``, else from
    the request prompt (EasyEdit), behind ``prefix``."""
    prompts = [[p.prompt for p in c.of_kind("generation")] or [c.prompt] for c in cases]
    flat = [with_prefix(prefix, p) for ps in prompts for p in ps]
    texts = generations(model, tok, flat, max_len, seed=seed)
    out, k = [], 0
    for c, ps in zip(cases, prompts, strict=True):
        own = [t[len(prefix) + 1:] if prefix else t for t in texts[k:k + len(ps)]]  # the texts without the prefix
        k += len(ps)
        row: dict[str, float | None] = {"fluency": fmean(ngram_entropy(t) for t in own)}
        if references is not None and "target_new_id" in c.extra:
            row["reference_score"] = references.consistency(own, c.relation_id, c.extra["target_new_id"])
        out.append(row)
    return out
