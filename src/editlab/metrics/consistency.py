"""Consistency of generated text with the edit (ROME's "consistency", made exact for synthetic worlds).

ROME compares generated text about the subject with reference text by TF-IDF similarity. In a
synthetic world we can read the claims off directly: each generated sentence "s1 r1 <x>" states an
object x for the edited fact, and consistency is the share of those sentences with x = o*.
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


class Consistency(GroupedMean):
    """Share of generated "s1 r1 x" sentences with x = o*, logged as ``stage/consistency``.

    The mean is over sentences (all texts pooled); texts without such a sentence add nothing.
    """

    higher_is_better = True

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(("consistency",), stage, **kwargs)

    def update(self, texts: Sequence[str], prompts: Sequence[str], targets: Sequence[str]) -> None:
        """Add generated ``texts`` (full documents, prompt included), each with its "s1 r1" and o*."""
        hits = [x == target for text, prompt, target in zip(texts, prompts, targets, strict=True)
                for x in stated_objects(text, prompt)]
        self._accumulate(torch.tensor(hits, dtype=torch.bool))
