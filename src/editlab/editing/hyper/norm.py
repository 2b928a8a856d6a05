"""Running mean and standard deviation of the editor's inputs (MEND's input normalisation).

The factors ``u`` and ``delta`` of different layers and models differ in scale by orders of magnitude;
MEND feeds the editor ``(x - mean) / std`` with statistics accumulated over every token row seen in
meta-training (Welford's algorithm, batched with Chan's merge) and frozen at evaluation time. The
statistics are buffers, so they are saved with the editor and move with it between devices.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-7


class RunningNorm(nn.Module):
    """Per-feature running mean/std over rows; updates only in training mode.

    Before any update (count 0) it is the identity (mean 0, std 1), so an untrained editor sees the raw
    factors.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the rows of ``x`` (N, dim) into the statistics (exact, in float64)."""
        if x.shape[0] == 0:
            return
        x = x.detach().to(torch.float64)
        n_b = float(x.shape[0])
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = float(self.count)
        total = n + n_b
        d = mean_b - self.mean
        self.mean.add_(d * (n_b / total))
        self.m2.add_(m2_b + d * d * (n * n_b / total))
        self.count.fill_(total)

    def std(self) -> torch.Tensor:
        if float(self.count) < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / (self.count - 1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / (std + eps)``; in training mode the rows of ``x`` are merged in first."""
        if self.training:
            self.update(x)
        if float(self.count) == 0:
            return x
        mean, std = self.mean.to(x.dtype), self.std().to(x.dtype)
        return (x - mean) / (std + EPS)
