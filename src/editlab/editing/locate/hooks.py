"""Forward hooks on one module: read its input (the keys) and output at chosen token positions, or add to it.

A locate-then-edit method treats an MLP down-projection as a key -> value memory ``v = W k`` (Geva et
al. 2021; ROME Sec. 3): the *key* is the module's input, the *value* its output, both read at one
token per row (the subject's last token). The residual stream is the output of a whole block. The
hooks see the module's real tensors, so they work for ``nn.Linear`` and GPT-2's ``Conv1D`` alike
(orientation only matters for the weight, :func:`editlab.editing.weights.linear_weight`), and for a
block whose forward returns a tuple (older transformers) or a tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def main_tensor(output):
    """The hidden-state tensor of a module output (a block may return a tuple whose first item it is)."""
    return output[0] if isinstance(output, tuple) else output


def _replace(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def read_at(module: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
    """Capture ``module``'s input and output at positions ``(rows[i], cols[i])`` of the next forward pass.

    Yields a dict that holds ``"input"`` and ``"output"``, each (n, d), after the forward pass.
    """
    got: dict[str, torch.Tensor] = {}

    def hook(_mod: nn.Module, args: tuple, output) -> None:
        got["input"] = args[0][rows, cols]
        got["output"] = main_tensor(output)[rows, cols]

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


@contextmanager
def add_at(module: nn.Module, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor
           ) -> Iterator[dict[str, torch.Tensor]]:
    """Add ``delta[i]`` to ``module``'s output at ``(rows[i], cols[i])`` during forward passes (differentiable).

    Yields a dict that holds the ``"output"`` before the addition at those positions (detached): the
    current value the target vector starts from.
    """
    got: dict[str, torch.Tensor] = {}

    def hook(_mod: nn.Module, _args: tuple, output):
        hidden = main_tensor(output)
        got["output"] = hidden[rows, cols].detach()
        hidden = hidden.index_put((rows, cols), hidden[rows, cols] + delta.to(hidden.dtype))
        return _replace(output, hidden)

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()
