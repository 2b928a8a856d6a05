"""AlphaEdit (Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models").

MEMIT's targets and layer loop (:mod:`editlab.editing.methods.memit`), with the preservation term
``lambda C`` replaced by a projection: each layer's update is

    Delta = R K^T P (K_p K_p^T P + K K^T P + alpha I)^-1            (AlphaEdit Eq. 13 / its code)

where ``P = U0 U0^T`` projects onto the null space of the key covariance C (its eigenvectors with
eigenvalue below ``nullspace_threshold``: absolute as in AlphaEdit's code, or with ``nullspace_scale:
relative`` relative to the largest, since the absolute 2e-2 is tied to GPT-J's key scale), ``K_p K_p^T`` is
the Gram matrix of the keys of every earlier *committed* edit (sequential editing: later batches do not
overwrite earlier ones), and ``alpha`` is the paper's ``L2``. Since the solution lies in P's range,
``Delta k0 = 0`` for every key ``k0`` that P annihilates: the outputs for preserved knowledge do not
change (tested). AlphaEdit's code adds to its ``cache_c`` the keys recomputed on the edited model after
all layers; a layer's keys depend only on the layers below it, already edited when the layer loop reads
them, so the keys kept here are the same.

Method state: ``key_gram.<layer>`` = K_p K_p^T per edited layer (fp64), grown on ``commit`` only (a
restored edit leaves no trace), saved and resumed with a sequential stream.

Hyper-parameters (AlphaEdit's GPT-J values): MEMIT's, plus ``nullspace_threshold`` and ``alpha`` (L2 = 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook
from editlab.editing.locate.solve import NULLSPACE_SCALES, alphaedit_update, null_space_projector
from editlab.editing.methods.memit import Band
from editlab.editing.registry import register
from editlab.errors import EditlabError


@register
@dataclass
class AlphaEdit(Band):
    """MEMIT with null-space projected updates and accumulated keys of earlier edits."""

    name = "alphaedit"
    nullspace_threshold: float = 2e-2
    nullspace_scale: str = "absolute"
    """``absolute`` (AlphaEdit's code) or ``relative`` to the largest eigenvalue of C
    (:func:`~editlab.editing.locate.solve.null_space_projector`)."""
    alpha: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nullspace_scale not in NULLSPACE_SCALES:
            raise EditlabError(f"method {self.name}: nullspace_scale={self.nullspace_scale!r} must be one of "
                               f"{', '.join(NULLSPACE_SCALES)}")
        top = 1 if self.nullspace_scale == "relative" else float("inf")
        if not 0 < self.nullspace_threshold < top or not self.alpha > 0:
            raise EditlabError(f"method {self.name}: nullspace_threshold > 0 (< 1 when relative to the largest "
                               "eigenvalue) and alpha > 0")

    def prepared(self, model: nn.Module) -> None:
        self._proj, self._null_dim = {}, {}
        for name in self._names:
            self._proj[name], self._null_dim[name] = null_space_projector(self._cov[name], self.nullspace_threshold,
                                                                          self.nullspace_scale)

    def gram(self, layer: int, d: int) -> torch.Tensor:
        """K_p K_p^T of the committed edits at ``layer`` (zeros before the first)."""
        g = self._state.get(f"key_gram.{layer}")
        return torch.zeros(d, d, dtype=torch.float64) if g is None else g

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        done: dict[str, torch.Tensor] = {}

        def commit() -> nn.Module:  # only a committed edit joins the preserved keys K_p
            for layer, name in zip(self._layers, self._names, strict=True):
                k = done[name].double().cpu()
                self._state[f"key_gram.{layer}"] = self.gram(layer, k.shape[1]) + k.T @ k
            return model

        handle = self.guarded(model, lambda: self.edit(model, requests, ctx), commit_fn=commit)
        done.update(self._keys)
        handle.info["null_space_dim"] = [self._null_dim[n] for n in self._names]
        return handle

    def solve(self, layer: int, name: str, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        proj = self._proj[name].to(keys.device)
        return alphaedit_update(proj, keys, resid, self.gram(layer, keys.shape[1]).to(keys.device), self.alpha)
