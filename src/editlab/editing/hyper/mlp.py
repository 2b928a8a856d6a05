"""MEND's editor network: residual low-rank blocks initialised to the identity, with per-layer scale and shift.

One block maps ``x`` (N, D) to ``x + scale_m * (act(x V^T + c) U^T + b) + shift_m``: rank-r factors
``V`` (r, D, random) and ``U`` (D, r), biases ``c``, ``b`` and, per mode ``m`` (the layer the factors come
from; one network serves every layer of a weight shape), a scale and a shift. ``U``, ``b`` and the
shifts start at zero and the scales at one, so each block, and the whole network, is exactly the
identity at initialisation: the untrained editor passes the (normalised) gradient factors through
unchanged (Mitchell et al. 2022, "Fast Model Editing at Scale", Sec. 3.1). Hidden blocks put a ReLU on
the rank-r code, the last block none (``n_hidden`` = 1: two blocks, the paper's setting).

The ReLU acts inside the bottleneck, where ``x V^T`` is non-zero from the start, not on the block's
zero-initialised output: a ReLU at an exactly-zero pre-activation has zero gradient, so a block whose
output passed through it would never leave the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRankBlock(nn.Module):
    """``x + scale[m] * (act(x V^T + c) U^T + b) + shift[m]``, the identity at initialisation."""

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.empty(rank, dim))
        nn.init.kaiming_uniform_(self.v, a=math.sqrt(5))
        self.c = nn.Parameter(torch.zeros(rank))
        self.u = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        h = x @ self.v.T + self.c
        h = torch.relu(h) if self.relu else h
        return x + (h @ self.u.T + self.bias) * self.scale[mode] + self.shift[mode]


class EditorMLP(nn.Module):
    """``n_hidden + 1`` residual low-rank blocks (ReLU inside all but the last)."""

    def __init__(self, dim: int, rank: int, n_modes: int, n_hidden: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(LowRankBlock(dim, rank, n_modes, relu=i < n_hidden) for i in range(n_hidden + 1))

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mode)
        return x
