"""Consistency of generated text with the edit (ROME's "consistency", made exact for synthetic worlds).

ROME compares generated text about the subject with reference text by TF-IDF similarity. In a
synthetic world we can read the claims off directly: each generated sentence "s1 r1 <x>" states an
object x for the edited fact.

The one definition (used by the per-case records of edit.py and by :class:`Consistency`): the
consistency **of a case** is the share of the "s1 r1 x" sentences in all of its sampled documents
(pooled over that case's ``n_samples`` documents) with x = o*; a case whose documents never state the
fact has no value (NaN, "not measured", not 0). A set of cases reports the **mean over cases** that
have a value. Why per case and not pooled over all sentences of all cases: ROME averages per case,
so every edit weighs the same (a model that rambles the fact ten times about one subject does not
outvote nine other edits); and the result records store one value per case, from which the mean of
any subset of cases (Table 4's rows) is exact, which a pooled share would not be without per-case
sentence counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from editlab.metrics.grouped import GroupedMean

_SENTENCE_END = re.compile(r"\.(?:\s+|$)")


def stated_objects(text: str, prompt: str) -> list[str]:
    """Objects x of the sentences of ``text`` that read "<prompt> x".

    Sentences are split at a period followed by whitespace or the end. Only plain statements count: a
    sentence must start with the prompt (so quoted sentences of logical claims, '"s1 r1 o" is true',
    and "not ..." sentences are not statements of the fact). The object is the rest of the sentence
    up to a quote, stripped.
    """
    out = []
    for sent in _SENTENCE_END.split(text):
        sent = sent.strip()
        if sent.startswith(prompt + " "):
            out.append(sent[len(prompt) + 1:].split('"')[0].strip())
    return out


def case_consistency(texts: Sequence[str], prompt: str, target: str) -> float:
    """Consistency of one case: share of "<prompt> x" sentences over all ``texts`` with x = ``target``.

    NaN when no text states the fact (see the module docstring).
    """
    stated = [x for t in texts for x in stated_objects(t, prompt)]
    return sum(x == target for x in stated) / len(stated) if stated else float("nan")


class Consistency(GroupedMean):
    """Mean over cases of :func:`case_consistency`, logged as ``stage/consistency``.

    Cases whose documents state no "s1 r1 x" sentence add nothing (their consistency is not measured).
    """

    higher_is_better = True

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(("consistency",), stage, **kwargs)

    def update(self, texts: Sequence[Sequence[str]], prompts: Sequence[str], targets: Sequence[str]) -> None:
        """Add cases: per case its generated documents (prompt included), its "s1 r1" and its o*."""
        values = torch.tensor([case_consistency(t, p, o) for t, p, o in zip(texts, prompts, targets, strict=True)],
                              dtype=torch.float64)
        self._accumulate(values[values.isfinite()])
