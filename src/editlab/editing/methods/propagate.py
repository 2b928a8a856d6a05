"""Agent-propagated edits: the upper bound of what a base editor can make coherent when it is told everything.

A rational learner who takes the request "s1 r1 o*" also changes every answer the request implies: the subject's
downstream fact, whose posterior follows the upstream one, and sometimes other subjects' answers on the same
relation pair, whose learned dependency the edit's evidence refits (:mod:`editlab.world.implied`). ``propagate``
hands the base method the request plus those implied facts (``EditRequest.implied``, filled by the run from the
world's agent; the method itself never sees the agent) as one batch. Scored, as every method is, against the agent
holding the request alone: the implications are the request's consequences, not extra requests. The gap between a
base method's own row and its ``propagate`` row is how much coherence it could hold; an editor that propagates
without the agent is judged against that bound.

``base`` is any registered method that edits several requests at once; ``base_hparams`` its hyper-parameters
(``edit.py`` composes the base's own preset for the model: ``conf/method_model/<preset>/<base>_<model>.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, StepHook
from editlab.editing.registry import get_method, register
from editlab.errors import EditlabError


@register
@dataclass
class Propagate(EditMethod):
    name: ClassVar[str] = "propagate"
    uses_implied: ClassVar[bool] = True

    base: str = "lora"
    base_hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.base == self.name:
            raise EditlabError(f"method {self.name}.base cannot be {self.name}; name an editor, e.g. lora or memit")
        self.base_method: EditMethod = get_method(self.base, self.base_hparams)
        if not self.base_method.supports_batch:
            raise EditlabError(f"method {self.name}.base={self.base} edits one request at a time; the request and its "
                               "implications are one batch: use a batch editor (lora, ft_l, ft_m, memit, alphaedit, "
                               "mend, malmen, ...)")
        self.in_context = self.base_method.in_context
        self.supports_credence = self.base_method.supports_credence

    @staticmethod
    def with_implied(requests: Sequence[EditRequest]) -> list[EditRequest]:
        """The requests, then each one's implied facts not already requested (first occurrence kept)."""
        out = list(requests)
        seen = {(r.subject, r.relation) for r in out}
        for r in requests:
            for imp in r.implied:
                if (imp.subject, imp.relation) not in seen:
                    seen.add((imp.subject, imp.relation))
                    out.append(imp)
        return out

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        self.base_method.prepare(model, ctx)

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        batch = self.with_implied(requests)
        handle = self.base_method.apply(model, batch, ctx, on_step=on_step)
        handle.info = {**handle.info, "implied": len(batch) - len(requests)}
        return handle

    def state_dict(self) -> dict:
        return self.base_method.state_dict()

    def load_state_dict(self, state: dict, model: nn.Module) -> nn.Module:
        return self.base_method.load_state_dict(state, model)

    def export_state(self, model: nn.Module) -> dict:
        return self.base_method.export_state(model)

    def context_prefix(self) -> str:
        return self.base_method.context_prefix()
