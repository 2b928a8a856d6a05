"""MEND's editor network: residual low-rank blocks initialised to the identity, with per-layer scale and shift.

One block maps ``x`` (N, D) to ``x`` plus a residual built from rank-r factors ``V`` (r, D, random) and
``U`` (D, r), a bias ``b`` and, per mode ``m`` (the layer the factors come from; one network serves every
layer of a weight shape), a scale and a shift. ``U``, ``b`` and the shifts start at zero and the scales
at one, so each block, and the whole network, is exactly the identity at initialisation: the untrained
editor passes the (normalised) gradient factors through unchanged (Mitchell et al. 2022, "Fast Model
Editing at Scale", Sec. 3.1). Where the nonlinearity sits is the ``block`` hyper-parameter (:data:`BLOCKS`):

- ``mend``: ``x + clamp_min0((x V^T U^T + b) * scale_m + shift_m)`` in *every* block, ``V ~ N(0, 1)``
  (the original's ``LRLinear`` in ``mend/nn.py``; ``IDMLP`` passes ``relu=idx < n_hidden``, which
  ``LRLinear`` never reads, so the last block clamps too);
- ``malmen``: ``x + scale_m * clamp_min0(x V^T U^T + b) + shift_m`` in every block, ``V ~ N(0, 1)``
  (``MALMENBlock`` in the official MALMEN code's ``nets.py``);
- ``bottleneck_relu``: ``x + scale_m * (relu(x V^T + c) U^T + b) + shift_m``, the ReLU (and a bias ``c``)
  on the rank-r code of the hidden blocks only, none in the last; ``V`` Kaiming-uniform. The editors
  of the tuned presets were meta-trained with it.

The references clamp the block's output, which is exactly zero at initialisation, and that is why they
clamp rather than use a ReLU: ``clamp(min=0)`` passes the gradient at exactly 0 (``x >= 0``), a ReLU does
not, so a ReLU there would never leave the identity (``mend/nn.py``: "need clamp instead of relu so
gradient at 0 isn't 0"). Clamped after the affine, MEND's residual is non-negative in every coordinate;
``bottleneck_relu`` lets it take both signs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BLOCKS = ("mend", "malmen", "bottleneck_relu")


class LowRankBlock(nn.Module):
    """One residual low-rank block of form ``block`` (module docstring), the identity at initialisation.

    ``hidden``: whether a hidden block (``bottleneck_relu`` puts its ReLU only there; the references' clamp
    is in every block).
    """

    def __init__(self, dim: int, rank: int, n_modes: int, block: str, hidden: bool) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block={block!r} must be one of {', '.join(BLOCKS)}")
        self.block, self.hidden = block, hidden
        if block == "bottleneck_relu":
            self.v = nn.Parameter(torch.empty(rank, dim))
            nn.init.kaiming_uniform_(self.v, a=math.sqrt(5))
            self.c = nn.Parameter(torch.zeros(rank))
        else:
            self.v = nn.Parameter(torch.randn(rank, dim))
            self.register_parameter("c", None)
        self.u = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        if self.block == "bottleneck_relu":
            h = x @ self.v.T + self.c
            h = torch.relu(h) if self.hidden else h
            return x + (h @ self.u.T + self.bias) * self.scale[mode] + self.shift[mode]
        pre = x @ self.v.T @ self.u.T + self.bias
        if self.block == "mend":
            return x + (pre * self.scale[mode] + self.shift[mode]).clamp(min=0)
        return x + pre.clamp(min=0) * self.scale[mode] + self.shift[mode]


class EditorMLP(nn.Module):
    """``n_hidden + 1`` residual low-rank blocks of form ``block`` (:data:`BLOCKS`)."""

    def __init__(self, dim: int, rank: int, n_modes: int, n_hidden: int, block: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(LowRankBlock(dim, rank, n_modes, block, hidden=i < n_hidden)
                                    for i in range(n_hidden + 1))

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mode)
        return x
