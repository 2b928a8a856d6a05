"""One editor network per weight shape, shared across layers, with a learned step per layer (MEND, MALMEN).

For edited layer ``l`` with weight ``W_l`` (d_out, d_in) the editor of its shape maps each token's
normalised ``[u; delta]`` (running statistics, :class:`~editlab.editing.hyper.norm.RunningNorm`) through
:class:`~editlab.editing.hyper.mlp.EditorMLP` in mode ``l`` (its per-layer scale and shift) to
``(u~, delta~)``; MEND's update is ``W_l' = W_l - alpha_l sum_i delta~_i u~_i^T`` with the learned step
``alpha_l`` (:attr:`GradientEditor.alpha`, optimised in its own parameter group). Layers of one shape
share the network and its statistics (Mitchell et al. 2022, Sec. 3.2, "shared" MEND); the
hypernetwork runs in float32 whatever autocast is active.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from editlab.editing.hyper.mlp import EditorMLP
from editlab.editing.hyper.norm import RunningNorm


def shape_key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


class GradientEditor(nn.Module):
    """Editor networks for layers of the given (d_out, d_in) ``shapes`` (in layer order), of block form ``block``
    (:data:`~editlab.editing.hyper.mlp.BLOCKS`).

    Attributes:
        alpha: (n_layers,) learned per-layer step sizes.
        modes: per layer, (shape key, mode index inside that shape's network).
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], rank: int, n_hidden: int, alpha_init: float,
                 block: str) -> None:
        super().__init__()
        self.shapes = [tuple(int(x) for x in s) for s in shapes]
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(self.shapes):
            groups.setdefault(shape_key(s), []).append(i)
        self.modes = [(shape_key(s), groups[shape_key(s)].index(i)) for i, s in enumerate(self.shapes)]
        first = {k: self.shapes[v[0]] for k, v in groups.items()}
        self.nets = nn.ModuleDict({k: EditorMLP(sum(s), min(rank, sum(s)), len(groups[k]), n_hidden, block)
                                   for k, s in first.items()})
        self.norms = nn.ModuleDict({k: RunningNorm(sum(s)) for k, s in first.items()})
        self.alpha = nn.Parameter(torch.full((len(self.shapes),), float(alpha_init)))

    def transform(self, layer: int, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u~, delta~) of token rows ``u`` (N, d_in), ``delta`` (N, d_out) of ``layer``."""
        key, mode = self.modes[layer]
        with torch.autocast(u.device.type, enabled=False):
            z = torch.cat([u.float(), delta.float()], dim=-1)
            out = self.nets[key](self.norms[key](z), mode)
        return out[:, : u.shape[-1]], out[:, u.shape[-1] :]

    def update(self, layer: int, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """MEND's weight change of ``layer``, ``-alpha_l sum_i delta~_i u~_i^T`` (d_out, d_in)."""
        ut, dt = self.transform(layer, u, delta)
        return -self.alpha[layer] * (dt.T @ ut)
