"""Logical coherence of an LM against itself (Hase et al. 2024, Sec. 5.2, Table 4 "Logical Coherence").

A coherent reasoner's probabilities obey the laws of probability across sentences. With p_A, p_B the
LM's p(true | "A" is), p(true | "B" is) (A, B independent facts of different subjects):

- TF:  |p_LM(o_A | s1 r1) - p_A|              (generative and sentence-level belief agree)
- not: |p_A - (1 - p(true | "not A" is))|
- and: |p(true | "A and B" is) - p_A p_B|      (and the B-and-A order separately)
- or:  |p(true | "B or A" is) - (p_A + p_B - p_A p_B)|

Every term uses p(true), never p(label), and each item's own operands: the paper's code used the
first batch item's labels for every item and p(label | A) in the "and" metric (world.md section 8,
bugs 3 and 4). Lower is better.
"""

from __future__ import annotations

import torch

from editlab.metrics.grouped import GroupedMean

LOGIC_NAMES = ("logic_tf", "logic_not", "logic_and", "logic_and_ba", "logic_or")


def logical_gaps(p_atomic_a: torch.Tensor, tf_a: torch.Tensor, not_a: torch.Tensor, and_ab: torch.Tensor,
                 and_ba: torch.Tensor, or_ba: torch.Tensor, tf_b: torch.Tensor) -> torch.Tensor:
    """Per-item coherence gaps, shape (N, 5) in the order of ``LOGIC_NAMES``.

    Args:
        p_atomic_a: p_LM(o_A | "s1 r1") per item.
        tf_a, not_a, and_ab, and_ba, or_ba, tf_b: p_LM(" true" | '"<sentence>" is') per item, for the
            sentences A, not A, A and B, B and A, B or A, B of that same item.
    """
    t = [torch.as_tensor(x, dtype=torch.float64) for x in (p_atomic_a, tf_a, not_a, and_ab, and_ba, or_ba, tf_b)]
    p_atomic_a, tf_a, not_a, and_ab, and_ba, or_ba, tf_b = t
    both = tf_a * tf_b
    return torch.stack([(p_atomic_a - tf_a).abs(), (tf_a - (1 - not_a)).abs(), (and_ab - both).abs(),
                        (and_ba - both).abs(), (or_ba - (tf_a + tf_b - both)).abs()], dim=-1)


class LogicalCoherence(GroupedMean):
    """Mean of :func:`logical_gaps` over items, logged as ``stage/logic_{tf,not,and,and_ba,or}``."""

    higher_is_better = False

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(LOGIC_NAMES, stage, **kwargs)

    def update(self, p_atomic_a: torch.Tensor, tf_a: torch.Tensor, not_a: torch.Tensor, and_ab: torch.Tensor,
               and_ba: torch.Tensor, or_ba: torch.Tensor, tf_b: torch.Tensor) -> None:
        """Add items (each argument shape (N,), see :func:`logical_gaps`)."""
        gaps = logical_gaps(p_atomic_a, tf_a, not_a, and_ab, and_ba, or_ba, tf_b)
        self._accumulate(gaps, torch.arange(len(LOGIC_NAMES)).expand_as(gaps))


class LabelMass(GroupedMean):
    """Mean p(" true") + p(" false") over logical sentences, logged as ``stage/label_mass``.

    How much probability the LM puts on the two labels at all: a small mass makes p(true) a poor
    belief read-out (evaluation.md: p(true) is read directly, never as 1 - p(false)).
    """

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(("label_mass",), stage, **kwargs)

    def update(self, p_true: torch.Tensor, p_false: torch.Tensor) -> None:
        """Add per-sentence label probabilities."""
        self._accumulate(torch.as_tensor(p_true, dtype=torch.float64) + torch.as_tensor(p_false, dtype=torch.float64))
