"""Locality: what an edit must leave alone (ROME/EasyEdit "specificity", evaluation.md).

Four separately named numbers on facts the edit should not touch: agreement of the greedy
continuation with the pre-edit model's (the whole continuation, ``max_new_tokens`` tokens), agreement of its
answer only (the text up to the first period or quote), accuracy against the true answer, and
KL(p_pre || p_post) of the next-token distribution at the last prompt position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editlab.metrics.grouped import GroupedMean


def next_token_kl(logp_pre: torch.Tensor, logp_post: torch.Tensor) -> torch.Tensor:
    """KL(p_pre || p_post) = sum_v p_pre(v) (log p_pre(v) - log p_post(v)) per row, in nats.

    Args:
        logp_pre, logp_post: log-probabilities over the vocabulary, shape (N, V) (log-softmax outputs).

    Tokens with p_pre = 0 contribute 0 (the 0 log 0 = 0 convention), even where log p_post = -inf.
    """
    logp_pre, logp_post = logp_pre.to(torch.float64), logp_post.to(torch.float64)
    terms = logp_pre.exp() * (logp_pre - logp_post)
    return torch.where(torch.isneginf(logp_pre), torch.zeros_like(terms), terms).sum(-1)


class Locality(GroupedMean):
    """``stage/locality_agree``, ``stage/locality_acc``, ``stage/locality_kl``, ``stage/locality_agree_answer`` over
    locality facts."""

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(("locality_agree", "locality_acc", "locality_kl", "locality_agree_answer"), stage, **kwargs)

    def update(self, agree: torch.Tensor, correct: torch.Tensor, kl: torch.Tensor,
               agree_answer: torch.Tensor | None = None) -> None:
        """Add per-fact agreement (bool), accuracy (bool), KL (e.g. from :func:`next_token_kl`) and answer agreement
        (bool; absent in records written before it existed: then nothing is added to it).

        Per-case averages over a fixed fact set (as in result records) may be passed instead: every
        case has the same number of facts, so their mean is the mean over all facts.
        """
        self._accumulate(agree, 0)
        self._accumulate(correct, 1)
        self._accumulate(kl, 2)
        if agree_answer is not None:
            self._accumulate(agree_answer, 3)


class Agreement(GroupedMean):
    """Share of greedy continuations unchanged by the edit, logged as ``stage/<name>`` (default s2_agree).

    On the s2 r1 / s2 r2 probes (other subjects) this is the paper-case locality: the edit of s1 should
    not change what the LM says about s2.
    """

    def __init__(self, name: str = "s2_agree", stage: str = "", **kwargs) -> None:
        super().__init__((name,), stage, **kwargs)

    def update(self, before: Sequence[str], after: Sequence[str]) -> None:
        """Add pairs of continuations; a pair agrees when the strings are identical."""
        if len(before) != len(after):
            raise ValueError(f"{len(before)} continuations before the edit but {len(after)} after")
        self._accumulate(torch.tensor([a == b for a, b in zip(before, after, strict=True)], dtype=torch.bool))
