"""Fluency: ROME's weighted n-gram entropy of generated text (Meng et al. 2022, "Generation Entropy").

ROME's ``compute_n_gram_entropy``: per text, the entropies (bits) of the bigram and trigram frequency
distributions of its words, weighted 2/3 and 4/3 and averaged arithmetically, i.e.
(2/3 H_2 + 4/3 H_3) / 2; the metric is the mean over texts. Repetitive text (a degenerate edited
model looping on one phrase) has low entropy. A text with no n-grams of some order contributes 0
for that order, as ROME's numpy sum over an empty array does.

Words come from a regex instead of ``nltk.word_tokenize`` (no nltk dependency): runs of word
characters and single punctuation marks, as the Treebank tokenizer splits them in our synthetic
worlds' text (no contractions, no abbreviations with periods).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch

from editlab.metrics.grouped import GroupedMean

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Word tokens of ``text``: runs of word characters and single punctuation marks."""
    return _WORD.findall(text)


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's weighted n-gram entropy of one text, in bits (see the module docstring)."""
    toks = words(text)
    out = []
    for n, w in zip(ns, weights, strict=True):
        counts = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        total = sum(counts.values())
        out.append(w * -sum(c / total * math.log2(c / total) for c in counts.values()))
    return sum(out) / len(out)


def case_fluency(texts: Sequence[str]) -> float:
    """Fluency of one case: mean :func:`ngram_entropy` of its sampled documents (what a record stores)."""
    return sum(ngram_entropy(t) for t in texts) / len(texts)


class Fluency(GroupedMean):
    """Mean :func:`ngram_entropy` over texts, logged as ``stage/fluency``."""

    higher_is_better = True

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(("fluency",), stage, **kwargs)

    def update(self, texts: Sequence[str]) -> None:
        """Add generated texts."""
        self._accumulate(torch.tensor([ngram_entropy(t) for t in texts], dtype=torch.float64))
