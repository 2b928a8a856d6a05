"""Score every probe of many edit cases at once: the shared scoring core of edit.py and evaluate.py.

For a list of case records (world.md section 6) and one model state this runs

- one teacher-forced pass (:func:`~editlab.eval.scoring.object_scores`) over every distinct
  (prefix, prompt, object) pair of all cases: object probabilities of the atomic probes, p(" true") and
  p(" false") of the logical sentences, and EasyEdit's token accuracy of the requested object;
- one greedy decoding pass over the distinct atomic prompts (s1 r1, s1 r2, s2 r1, s2 r2) for generative
  accuracy and edit success.

Nothing loops over prompts in Python beyond building token lists. In-context methods pass a text
``prefix`` per case (the edit sentence), which goes between BOS and the prompt, as a preceding
sentence of a corpus document would.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from editlab.eval.scoring import score_and_decode
from editlab.vocab import (
    ATOMIC,
    FALSE,
    TRUE,
    PromptEncoder,
    case_prompt,
    has_object,
    object_ids,
    request_tf_prompt,
)


@dataclass
class CaseScores:
    """One case's probes scored under one model state.

    Attributes:
        p: per probe, in the case's probe order: p_LM(object | prompt) for atomic probes (incl.
            ``atomic_A``), p_LM(" true" | sentence) for logical ones.
        p_false: per probe: p_LM(" false" | sentence) for logical probes, ``None`` for atomic ones.
        gen: greedy continuation per atomic kind (``s1r1`` ... ``s2r2``).
        token_acc: teacher-forced token accuracy of the requested object at the s1 r1 prompt.
        req_tf: (p(" true"), p(" false")) of the request as a TF sentence, ``"s1 r1 o*" is`` (portability:
            a logical consequence of the edit, scored for every case whatever the case's A fact is).
    """

    p: list[float]
    p_false: list[float | None]
    gen: dict[str, str] = field(default_factory=dict)
    token_acc: float = float("nan")
    req_tf: tuple[float, float] = (float("nan"), float("nan"))

    def to_json(self) -> dict:
        return {"p": self.p, "p_false": self.p_false, "gen": self.gen, "token_acc": self.token_acc,
                "req_tf": list(self.req_tf)}


def score_cases(model: torch.nn.Module, enc: PromptEncoder, cases: Sequence[dict], max_new_tokens: int,
                prefixes: Sequence[str] | None = None, batch_size: int = 256, decode: bool = True,
                progress: str | None = None) -> list[CaseScores]:
    """Score all probes of ``cases`` (optionally each with a text prefix) under ``model``.

    ``decode=False`` skips greedy decoding (``gen`` stays empty): edit-step tracing needs probabilities only.
    ``progress``: the label of a progress bar over the forward batches (none when None); seconds at paper
    scale, so the run shows it is scoring rather than hanging.
    """
    prefixes = list(prefixes) if prefixes is not None else [""] * len(cases)
    pairs: dict[tuple[str, str, str], int] = {}  # (prefix, prompt, object) -> row of the teacher-forced pass

    def row(pre: str, prompt: str, obj: str) -> int:
        return pairs.setdefault((pre, prompt, obj), len(pairs))

    plan: list[tuple[list[int], list[int | None], int, int, int]] = []
    gen_keys: dict[tuple[str, str], int] = {}
    for case, pre in zip(cases, prefixes, strict=True):
        true_rows, false_rows = [], []
        for pr in case["probes"]:
            if has_object(pr):
                true_rows.append(row(pre, pr["prompt"], pr["object"]))
                false_rows.append(None)
                if pr["kind"] in ATOMIC:
                    gen_keys.setdefault((pre, pr["prompt"]), len(gen_keys))
            else:
                true_rows.append(row(pre, pr["prompt"], TRUE))
                false_rows.append(row(pre, pr["prompt"], FALSE))
        req = row(pre, case_prompt(case), case["requested_object"])
        tf = request_tf_prompt(case)
        plan.append((true_rows, false_rows, req, row(pre, tf, TRUE), row(pre, tf, FALSE)))
    keys = list(pairs)
    prompts = enc.prompts([(pre, p) for pre, p, _ in keys])
    objects = enc.objects([o for _, _, o in keys])
    gen_prompts = enc.prompts(list(gen_keys)) if decode else []
    with tqdm(desc=progress, unit="batch", disable=progress is None, file=sys.stderr) as bar:
        logp, tok_acc, conts = score_and_decode(model, enc.tok, prompts, objects, gen_prompts, max_new_tokens,
                                                batch_size, bar if progress is not None else None)
    prob = logp.exp().tolist()
    out = []
    for case, pre, (t_rows, f_rows, req, tf_t, tf_f) in zip(cases, prefixes, plan, strict=True):
        gen = {pr["kind"]: conts[gen_keys[(pre, pr["prompt"])]] for pr in case["probes"]
               if decode and pr["kind"] in ATOMIC}
        out.append(CaseScores(p=[prob[i] for i in t_rows], p_false=[None if i is None else prob[i] for i in f_rows],
                              gen=gen, token_acc=float(tok_acc[req]), req_tf=(prob[tf_t], prob[tf_f])))
    return out


def max_object_tokens(tok: PreTrainedTokenizerBase, objects: Sequence[str]) -> int:
    """Length in tokens of the world's longest object (with its leading space): the decoding budget."""
    return max(len(x) for x in object_ids(tok, objects))
