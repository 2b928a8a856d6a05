"""Gold probabilities of logical sentences from the agent's fact probabilities (world.md section 5).

Beyond the paper, which compared the LM's logical judgements only with themselves.
Operands on different facts (s, r) are treated as independent; two operands on the same fact with
different objects are mutually exclusive (a 1:1 relation has one object).
"""

from __future__ import annotations


def p_tf(p_a: float) -> float:
    """p("A" is true) = p(A)."""
    return p_a


def p_not(p_a: float) -> float:
    """p("not A" is true) = 1 - p(A)."""
    return 1.0 - p_a


def p_and(p_a: float, p_b: float, same_fact: bool) -> float:
    """p("A and B" is true): p(A) p(B), or 0 for exclusive operands on the same fact."""
    return 0.0 if same_fact else p_a * p_b


def p_or(p_a: float, p_b: float, same_fact: bool) -> float:
    """p("A or B" is true): p(A) + p(B) - p(A) p(B), or p(A) + p(B) on the same fact."""
    return p_a + p_b if same_fact else p_a + p_b - p_a * p_b
