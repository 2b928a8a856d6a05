"""Probabilistic coherence: mean |p_LM - p_gold| against the Bayesian agent.

Hase et al. 2024 (Sec. 5, Table 4 "Probabilistic Coherence") compare the LM's probability of an
object with the exact posterior of the Bayesian agent that saw the same evidence. The same distance
on logical sentences (p_LM(true | "<sentence>" is) against the agent's p(true)) measures coherence
against the agent beyond the paper (evaluation.md). Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editlab.metrics.grouped import GroupedMean
from editlab.vocab import AGENT_KINDS, ATOMIC


class ProbabilisticCoherence(GroupedMean):
    """Mean absolute gap |p_LM - p_gold| per probe kind, logged as ``stage/<kind><suffix>``.

    Args:
        kinds: probe kinds, in the index order ``update`` uses.
        suffix: appended to each kind in the logged name.
        stage: prefix of the logged names.
    """

    higher_is_better = False

    def __init__(self, kinds: Sequence[str] = ATOMIC, suffix: str = "_prob_coh", stage: str = "", **kwargs) -> None:
        super().__init__([f"{k}{suffix}" for k in kinds], stage, **kwargs)

    def update(self, p_lm: torch.Tensor, p_gold: torch.Tensor, kinds: torch.Tensor) -> None:
        """Add the gaps of per-probe LM probabilities ``p_lm`` to gold ``p_gold`` of kinds ``kinds``."""
        self._accumulate((torch.as_tensor(p_lm, dtype=torch.float64)
                          - torch.as_tensor(p_gold, dtype=torch.float64)).abs(), kinds)



class AgentCoherence(ProbabilisticCoherence):
    """|p_LM(true | sentence) - agent's p(true)| per sentence kind, logged as ``stage/<kind>_gold_err``.

    ``atomic_A`` (p_LM(o_A | s1 r1) against the agent's answer) is included so the TF operand is
    scored against the agent too.
    """

    def __init__(self, kinds: Sequence[str] = AGENT_KINDS, stage: str = "", **kwargs) -> None:
        super().__init__(kinds, "_gold_err", stage, **kwargs)
