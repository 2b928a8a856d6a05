"""Locality: a fixed, seeded set of facts of other subjects, scored before and after every edit.

evaluation.md: the same ``n_locality`` (default 100) facts for every case, drawn from subjects that
are neither the edited subject nor a probe subject of any evaluation case, so no edit is *meant* to
change them. Per edit: agreement (greedy continuation unchanged from the pre-edit model), answer agreement
(the continuation's answer, :func:`~editlab.vocab.answer_text`, unchanged: a prefix that only changes how the next
sentence starts, as an in-context editor's does, keeps it), accuracy
against the true (modal) object, and KL(p_pre || p_post) of the next-token distribution at the last
prompt position, averaged over the set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from editlab.eval.scoring import greedy_continuations
from editlab.metrics.locality import next_token_kl
from editlab.vocab import PromptEncoder, answer_text, fact_prompt, hit_paper


def locality_facts(facts: Sequence[dict], cases: Sequence[dict], n: int, seed: int) -> list[dict]:
    """``n`` facts (seeded, sorted by fact id) whose subject appears in no case's probes."""
    busy = {p["subject"] for c in cases for p in c["probes"] if "subject" in p}
    busy |= {f[0] for c in cases for p in c["probes"] for f in p.get("facts", [])}
    pool = [f for f in facts if f["subject"] not in busy]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False).tolist())
    return [pool[i] for i in pick]


@dataclass
class LocalityState:
    """Greedy continuations and last-position log-distributions of the locality prompts, shape (n, V)."""

    gen: list[str]
    logp: torch.Tensor

    @staticmethod
    def score(model: torch.nn.Module, enc: PromptEncoder, facts: Sequence[dict], max_new_tokens: int,
              prefix: str = "") -> LocalityState:
        prompts = enc.prompts([(prefix, fact_prompt(f)) for f in facts])
        gen, logp = greedy_continuations(model, enc.tok, prompts, max_new_tokens, first_logp=True)
        return LocalityState(gen, logp)

    def compare(self, base: LocalityState, facts: Sequence[dict]) -> dict[str, float]:
        """{"agree", "agree_answer", "acc", "kl"} of this (post-edit) state against the pre-edit ``base`` state."""
        agree = float(np.mean([a == b for a, b in zip(self.gen, base.gen, strict=True)]))
        answer = float(np.mean([answer_text(a) == answer_text(b) for a, b in zip(self.gen, base.gen, strict=True)]))
        kl = next_token_kl(base.logp, self.logp).mean().item()  # KL(p_pre || p_post), nats
        return {"agree": agree, "agree_answer": answer, "acc": self.accuracy(facts), "kl": kl}

    def accuracy(self, facts: Sequence[dict]) -> float:
        """Share of continuations that produce the fact's true (modal) object (paper substring rule)."""
        return float(np.mean([hit_paper(g, f["modal"]) for g, f in zip(self.gen, facts, strict=True)]))
