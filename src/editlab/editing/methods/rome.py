"""ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"), with r-ROME's single key.

One edit is a rank-one change of one MLP down-projection ``W`` (the ``mlp_out`` role at ``layers[0]``),
seen as a key -> value memory:

1. key: ``k*`` = the module's input at the subject's last token, averaged over the bare prompt and the
   context prefixes drawn from the corpus (ROME Eq. 3; :mod:`editlab.editing.locate.keys`);
2. value: ``v* = W k* + delta``, ``delta`` optimised on the module's output at that token in every
   template (ROME Eq. 4: target NLL + essence KL + norm penalty, norm clamp;
   :mod:`editlab.editing.locate.targets`);
3. update: ``Delta = (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)`` (ROME Eq. 2) with C = E[k k^T] over the
   corpus (:mod:`editlab.editing.locate.stats`), solved in fp64 by Cholesky.

ROME's original code used the averaged ``k*`` in the direction ``C^-1 k*`` but the bare prompt's key in
the scale and residual; Gupta et al. 2024 ("Rebuilding ROME") showed that this mismatch is what makes
sequential ROME collapse, and that using the averaged key in every term fixes it (r-ROME). This
implementation has only one key, so ``(W + Delta) k* = v*`` exactly. ROME edits one fact at a time
(sequential mode: one after another); batches are MEMIT's job.

Hyper-parameters (ROME's GPT-2 XL values): ``layers: [17]``, ``lr 0.5``, ``steps 20``, ``kl_factor 0.0625``,
``weight_decay 0.5``, ``clamp_norm_factor 4``, prefixes ``[[5, 10], [10, 10]]``; the layer of a model
comes from causal tracing (conf/method/rome.yaml and its per-model specialisations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook
from editlab.editing.locate.method import LocateEdit
from editlab.editing.locate.solve import cholesky, rome_update
from editlab.editing.locate.targets import optimise_targets
from editlab.editing.registry import register
from editlab.editing.weights import get_module
from editlab.errors import EditlabError


@register
@dataclass
class ROME(LocateEdit):
    """Rank-one model editing of one MLP down-projection; ``layers`` holds exactly one block index."""

    name = "rome"
    supports_batch = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layers) != 1:
            raise EditlabError(f"method rome edits one layer; set layers to one block index (got {self.layers})")

    def prepared(self, model: nn.Module) -> None:
        (name,) = self._names
        self._factor = cholesky(self._cov[name], f"the covariance statistics of {name}")

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        if len(requests) != 1:
            raise EditlabError(f"rome edits one request at a time (got {len(requests)}); use edits.batch_size=1 "
                               "or a batch method (memit, alphaedit)")
        (name,) = self._names

        def edit() -> dict:
            module = get_module(model, name)
            tgt = optimise_targets(model, module, ctx.tokenizer, requests, self._templates, self.spec,
                                   tpl_groups=self._groups)
            delta = rome_update(self._factor, tgt.key[0], tgt.delta[0])  # v* - W k* = delta: one key in every term
            self.add(model, name, delta)
            return {**tgt.info, "layer": self._layers[0], "param": f"{name}.weight"}

        return self.guarded(model, edit)
