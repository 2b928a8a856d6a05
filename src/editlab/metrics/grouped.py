"""A mean per named group, the one state layout every editlab metric reduces with.

All metrics of evaluation.md are averages of per-item values over a set of items (cases, probes,
sentences), often split by a category (probe kind, sentence kind). Keeping a running ``total`` and
``count`` per group, both reduced with ``dist_reduce_fx="sum"``, makes the result under DDP exactly the
mean over the union of all ranks' items (a mean of per-rank means would weight ranks, not items).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class GroupedMean(Metric):
    """Mean of values per group; ``compute()`` gives ``{"<stage>/<group>": mean}``.

    A group that received no value computes to NaN ("not measured"), never 0.

    Args:
        groups: names of the groups, in index order (``update`` takes group indices).
        stage: prefix of the logged names (``"pre"``, ``"post"``, ``"final"``); empty for bare names.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, groups: Sequence[str], stage: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups = tuple(groups)
        self.stage = stage
        self.add_state("total", torch.zeros(len(self.groups), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(len(self.groups), dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, values: torch.Tensor, groups: torch.Tensor | int = 0) -> None:
        """Add ``values`` (any shape) to ``groups`` (same shape, or one index for all)."""
        values = torch.as_tensor(values, device=self.total.device).to(torch.float64).reshape(-1)
        groups = torch.as_tensor(groups, device=self.total.device, dtype=torch.long)
        groups = groups.expand(values.shape) if groups.dim() == 0 else groups.reshape(-1)
        self.total.index_add_(0, groups, values)
        self.count.index_add_(0, groups, torch.ones_like(values))

    def update(self, values: torch.Tensor, groups: torch.Tensor | int = 0) -> None:
        """Add per-item ``values`` to the groups ``groups`` (indices into ``self.groups``)."""
        self._accumulate(values, groups)

    def key(self, group: str) -> str:
        """The logged name ``stage/group``."""
        return f"{self.stage}/{group}" if self.stage else group

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.total / self.count  # 0/0 -> NaN for an empty group
        return {self.key(g): mean[i] for i, g in enumerate(self.groups)}
