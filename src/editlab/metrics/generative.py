"""Generative accuracy per probe type (Hase et al. 2024, Table 4 "Generative Acc.")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editlab.metrics.grouped import GroupedMean
from editlab.vocab import ATOMIC


class GenerativeAccuracy(GroupedMean):
    """Share of probes whose greedy continuation hits its target object, per probe type.

    The hit booleans come from the protocol's hit function (``hit_paper`` / ``hit_exact`` of
    :mod:`editlab.vocab`); this metric only averages them, so one class serves both protocols.
    Logged as ``stage/<kind>_acc``.

    Args:
        kinds: probe types, in the index order ``update`` uses (default s1r1, s1r2, s2r1, s2r2).
        stage: prefix of the logged names.
    """

    def __init__(self, kinds: Sequence[str] = ATOMIC, stage: str = "", **kwargs) -> None:
        super().__init__([f"{k}_acc" for k in kinds], stage, **kwargs)

    def update(self, hits: torch.Tensor, kinds: torch.Tensor) -> None:
        """Add per-probe ``hits`` (bool) of probe types ``kinds`` (indices into ``kinds``)."""
        self._accumulate(hits, kinds)
