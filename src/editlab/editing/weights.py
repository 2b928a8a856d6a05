"""Named Linear layers of a model and their weights in one orientation, whatever the module type.

Editors reason about a layer as ``W: (d_out, d_in)`` acting as ``y = W k`` (ROME's ``W k* = v*``,
MEND's ``delta u^T``). Hugging Face ``nn.Linear`` stores exactly that; GPT-2's ``Conv1D`` stores the
transpose ``(d_in, d_out)`` and computes ``y = x W``. Every method reaches weights through
:func:`linear_weight`, so no method carries its own orientation logic (methods.md).

Layers are named by a *role* resolved by the model's architecture adapter (editlab.lm.arch), e.g.
``"mlp_out"`` -> ``"model.layers.{}.mlp.down_proj"`` (Mistral/Llama/Qwen) or ``"transformer.h.{}.mlp.c_proj"``
(GPT-2), or by an explicit template with ``{}`` for the block index; :func:`module_names` expands both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from editlab.errors import EditlabError
from editlab.lm.arch import adapter_for


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks (the length of the architecture adapter's block list)."""
    return adapter_for(model).num_blocks(model)


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Block indices: ``None`` means all blocks; negative indices count from the last block."""
    n = num_layers(model)
    if layers is None:
        return list(range(n))
    out = []
    for i in layers:
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise EditlabError(f"layer {i} is out of range for a {n}-layer model; use 0..{n - 1} or -1..-{n}")
        out.append(j)
    return sorted(set(out))


def templates(model: nn.Module, specs: Sequence[str]) -> list[str]:
    """Module templates of ``specs``: a role (``mlp_out``, ``mlp_in``, ...) via the model's architecture
    adapter, or an explicit template with ``{}`` for the block index (kept as is)."""
    out: list[str] = []
    for spec in specs:
        out += [spec] if "{}" in spec else adapter_for(model).templates(spec)
    return out


def module_names(model: nn.Module, specs: Sequence[str], layers: Sequence[int] | None) -> list[str]:
    """Full module names of ``specs`` (roles or templates, see :func:`templates`) at ``layers``; all must exist."""
    names = [t.format(i) for i in resolve_layers(model, layers) for t in templates(model, specs)]
    have = dict(model.named_modules())
    missing = [n for n in names if n not in have]
    if missing:
        raise EditlabError(f"module(s) {missing[:3]} not in the model; set the method's modules to a role "
                           "(mlp_out, mlp_in, attn_out) or a template with {} that exists in this architecture")
    return names


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (EditlabError naming the fix if absent)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise EditlabError(f"module {name!r} is not in the model; check the method's module template") from None


def is_transposed(module: nn.Module) -> bool:
    """True for GPT-2's ``Conv1D`` (weight stored as (d_in, d_out)); False for ``nn.Linear``."""
    if isinstance(module, nn.Linear):
        return False
    if isinstance(module, Conv1D):
        return True
    raise EditlabError(f"{type(module).__name__} is not a Linear/Conv1D layer; edit a Linear module")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight as a (d_out, d_in) view (shares storage: in-place edits reach the model)."""
    w = module.weight
    return w.T if is_transposed(module) else w


def weight_param_name(name: str) -> str:
    """The parameter name of a module's weight (what :func:`~editlab.editing.base.snapshot` copies)."""
    return f"{name}.weight"
