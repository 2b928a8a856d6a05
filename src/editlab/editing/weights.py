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


def resolve_layers(model: nn.Module, layers: Sequence[int | str] | None) -> list[int]:
    """Block indices of ``layers`` for this model; ``None`` means all blocks.

    Each entry is a block index (negative counts from the last block) or a paper's layer named relative to the
    paper's model, so that one method config fits every depth (:func:`relative_layers`): ``"17/48"`` is block
    17 of a 48-block model (ROME's GPT-2 XL layer), ``"3..8/28"`` blocks 3 to 8 of a 28-block model (MEMIT's
    GPT-J band).
    """
    n = num_layers(model)
    if layers is None:
        return list(range(n))
    out = []
    for i in layers:
        if isinstance(i, str):
            out += relative_layers(i, n)
            continue
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise EditlabError(f"layer {i} is out of range for a {n}-layer model; use 0..{n - 1} or -1..-{n}, "
                               "or a paper's layer at its relative depth such as '17/48'")
        out.append(j)
    return sorted(set(out))


def relative_layers(spec: str, n: int) -> list[int]:
    """``"a/N"`` or ``"a..b/N"`` (blocks a..b of an N-block model) at the same relative depth of an ``n``-block
    model: block ``i`` goes to ``round(i * (n - 1) / (N - 1))`` (halves up), so first maps to first and last to
    last; a band keeps every block its members land on. How ROME's and MEMIT's authors moved their layers
    between GPT-2 XL and GPT-J (by depth), without the model's own causal trace."""
    try:
        band, total = spec.split("/")
        lo, _, hi = band.partition("..")
        first, last, big = int(lo), int(hi or lo), int(total)
    except ValueError:
        raise EditlabError(f"layer {spec!r} is not a block index or 'a/N' / 'a..b/N' (blocks a..b of an N-block "
                           "model), e.g. '17/48'") from None
    if not (big >= 2 and 0 <= first <= last < big):
        raise EditlabError(f"layer {spec!r} needs 0 <= a <= b < N and N >= 2, e.g. '17/48' or '3..8/28'")
    return sorted({int(i * (n - 1) / (big - 1) + 0.5) for i in range(first, last + 1)})


def templates(model: nn.Module, specs: Sequence[str]) -> list[str]:
    """Module templates of ``specs``: a role (``mlp_out``, ``mlp_in``, ...) via the model's architecture
    adapter, or an explicit template with ``{}`` for the block index (kept as is)."""
    out: list[str] = []
    for spec in specs:
        out += [spec] if "{}" in spec else adapter_for(model).templates(spec)
    return out


def module_names(model: nn.Module, specs: Sequence[str], layers: Sequence[int | str] | None) -> list[str]:
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
