"""COMPAT(h5) - temporary bridge to the widened EditMethod contract of issue 8 (delete after h5 merges).

The protocols are written against the agreed contract: ``method.apply(model, requests, ctx, on_step=None)``,
``method.load_state_dict(state, model) -> nn.Module``, ``EditContext.model_id`` and
``editlab.editing.base.unwrap``. Until that contract is on this branch, these helpers call the old one
(``ctx.on_step`` set for the duration of the call, ``load_state_dict(state)``, no ``model_id``, no
wrappers). Each helper uses the new contract as soon as it exists, so the file can be deleted after the
merge by replacing each call with the one-liner in its docstring.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import fields

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest


def apply(method: EditMethod, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
          on_step: Callable[[int, nn.Module], None] | None) -> EditHandle:
    """``method.apply(model, requests, ctx, on_step=on_step)``."""
    if "on_step" in inspect.signature(method.apply).parameters:
        return method.apply(model, requests, ctx, on_step=on_step)
    ctx.on_step = on_step  # the old contract: a hook on the shared context, cleared right after
    try:
        return method.apply(model, requests, ctx)
    finally:
        ctx.on_step = None


def load_state_dict(method: EditMethod, state: dict[str, torch.Tensor], model: nn.Module) -> nn.Module:
    """``method.load_state_dict(state, model)``."""
    if len(inspect.signature(method.load_state_dict).parameters) >= 2:
        return method.load_state_dict(state, model)
    method.load_state_dict(state)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """``editlab.editing.base.unwrap(model)``."""
    try:
        from editlab.editing.base import unwrap as _unwrap  # type: ignore[attr-defined]
    except ImportError:
        return model
    return _unwrap(model)


def context(model_id: str, **kwargs: object) -> EditContext:
    """``EditContext(model_id=model_id, **kwargs)``."""
    if "model_id" in {f.name for f in fields(EditContext)}:
        return EditContext(model_id=model_id, **kwargs)  # type: ignore[call-arg]
    return EditContext(**kwargs)  # type: ignore[arg-type]
