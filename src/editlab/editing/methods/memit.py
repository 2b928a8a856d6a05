"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"): thousands of edits at once over a band of layers.

1. targets: for each request, ``z_i = h_i + delta_i`` on the residual stream after the last edited block
   L (MEMIT Eq. 16, :mod:`editlab.editing.locate.targets`; ``h_i`` the bare prompt's residual, as
   ``memit/compute_z.py``'s ``target_init``, or with ``target_init: mean`` the mean over the templates);
2. for each edited layer l in ascending order: the keys ``K`` (the ``mlp_out`` inputs at the subject's
   last token, averaged over the templates per ``key_average``, read with the layers below already
   edited), the current residual ``H`` at L (read as ``h_i`` is), the residual share
   ``R = (Z - H) / (layers left)`` (:func:`residual_share`), and
   ``Delta_l = R K^T (lambda C_l + K K^T)^-1`` (MEMIT Eq. 14, fp64 Cholesky), applied before the next layer.

``lambda`` is MEMIT's ``mom2_update_weight``; C = E[k k^T] per layer (:mod:`editlab.editing.locate.stats`).
With one edit and one layer this is ROME's closed form with a ridge:
``Delta = r (C^-1 k)^T / (lambda + k^T C^-1 k)`` (Sherman-Morrison; tested).

Hyper-parameters (MEMIT's GPT-J values): layers 3..8 of 28, ``lambda 15000``, 25 steps of lr 0.5,
``clamp_norm_factor 0.75``, ``kl_factor 0.0625``, ``weight_decay 0.5``, prefixes ``[[10, 5]]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook
from editlab.editing.locate.keys import average_io
from editlab.editing.locate.method import LocateEdit
from editlab.editing.locate.solve import memit_system, memit_update
from editlab.editing.locate.targets import optimise_targets
from editlab.editing.registry import register
from editlab.editing.weights import get_module
from editlab.errors import EditlabError


def residual_share(z: torch.Tensor, h: torch.Tensor, layers_left: int) -> torch.Tensor:
    """What the current layer writes: an equal share of the residual ``z - h`` the layers left (this one included)
    still have to write (``memit_main.py``: ``resid = targets / (len(hparams.layers) - i)``). ``h`` is read after
    the layers below were edited, so whatever they did not realise is spread over the layers above."""
    return (z - h) / layers_left


@dataclass
class Band(LocateEdit):
    """MEMIT's edit of a band of layers (targets, then ascending layer updates); :meth:`solve` is the per-layer
    update (MEMIT's ridge here, AlphaEdit's projection in :mod:`editlab.editing.methods.alphaedit`)."""

    clamp_norm_factor: float = 0.75
    steps: int = 25
    prefixes: list[list[int]] = field(default_factory=lambda: [[10, 5]])
    key_average: str = "groups"
    shared_keys: bool = False
    """Requests with the same key (same subject at ``subject_last``) share one target vector, optimised on all
    their losses (:func:`~editlab.editing.locate.targets.optimise_targets`). False: one target per request, as
    in MEMIT, whose evaluation batches have distinct subjects; with several facts per subject in a batch the
    solver can only average their targets (measured: docs/tuning.md#memit)."""

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        return self.guarded(model, lambda: self.edit(model, requests, ctx))

    def edit(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext) -> dict:
        """Compute and add the layer updates in ascending order (see the module docstring); returns diagnostics."""
        last = self.block(model, self._layers[-1])
        tgt = optimise_targets(model, last, ctx.tokenizer, requests, self._templates, self.spec,
                               shared_keys=self.shared_keys, tpl_groups=self._groups)
        z = tgt.h + tgt.delta
        self._keys: dict[str, torch.Tensor] = {}
        for i, (layer, name) in enumerate(zip(self._layers, self._names, strict=True)):
            module = get_module(model, name)
            (keys, _), (_, h) = average_io(model, [module, last], ctx.tokenizer, requests, self._templates,
                                          self.fact_token, groups=self._groups, output=self.target_init)
            resid = residual_share(z, h, len(self._layers) - i)
            self.add(model, name, self.solve(layer, name, keys, resid))
            self._keys[name] = keys
        return {**tgt.info, "layers": list(self._layers)}

    def solve(self, layer: int, name: str, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """The layer's update (d_out, d_in) for template-averaged ``keys`` (n, d_in) and residuals (n, d_out)."""
        raise NotImplementedError


@register
@dataclass
class MEMIT(Band):
    """Batch editing over ``layers``; ``mom2_update_weight`` is lambda of Eq. 14."""

    name = "memit"
    mom2_update_weight: float = 15000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mom2_update_weight >= 0:
            raise EditlabError(f"method {self.name}: mom2_update_weight (lambda) must be >= 0")

    def solve(self, layer: int, name: str, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        factor = memit_system(self._cov[name], keys, self.mom2_update_weight)
        return memit_update(factor, keys, resid)
