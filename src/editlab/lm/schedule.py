"""Learning-rate multipliers: linear decay to a floor (the paper), cosine, constant; optional warmup."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, schedule: str, final_frac: float, warmup: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` of ``total``.

    The paper: linear decay from 1 to ``final_frac`` (0.1) with no warmup.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - final_frac) * t
    return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * t))
