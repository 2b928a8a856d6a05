"""Corrupted runs with restored states: the batched forward pass behind causal tracing (ROME, Meng et al. 2022, Sec. 2).

One forward pass holds, for one prompt, a *clean* row (row 0, no noise) and many *corrupted* rows: Gaussian
noise is added to the subject's token embeddings, and each row may restore a set of **sites** — a site is
``(kind, layer, token)``: the output of a block (``"hidden"``), of its MLP output projection (``"mlp"``) or of
its attention output projection (``"attn"``) at one token position — to the value the clean row computes
*in the same forward pass*. Taking the clean value from the same batch (as ROME's code does) makes the
special cases exact: with zero noise every row is bit-identical to the clean row, so the indirect effect
is exactly 0; restoring the last block's output at every position gives exactly the clean probability.

Modules are found by role through the architecture adapter (:func:`editlab.lm.arch.adapter_for`): block
outputs are ``blocks[i]``, MLP outputs ``blocks[i].<mlp_out>``, attention outputs ``blocks[i].<attn_out>``,
the embedding ``embed`` — so GPT-2 (Conv1D) and Llama/Mistral/Qwen2 are traced by the same code.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from editlab.errors import EditlabError
from editlab.lm.arch import adapter_for

KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")
"""What a site restores: a block's output (the residual stream), its MLP output, its attention output."""

Site = tuple[str, int, int]
"""(kind, layer, token position)."""


def site_module(model: nn.Module, kind: str, layer: int) -> nn.Module:
    """The module whose output a site of ``kind`` at ``layer`` restores (through the architecture adapter)."""
    a = adapter_for(model)
    blocks = model.get_submodule(a.blocks)
    if not 0 <= layer < len(blocks):
        raise EditlabError(f"layer {layer} is outside the {len(blocks)}-layer model; use 0..{len(blocks) - 1}")
    if kind == "hidden":
        return blocks[layer]
    if kind == "mlp":
        return blocks[layer].get_submodule(a.mlp_out)
    if kind == "attn":
        return blocks[layer].get_submodule(a.attn_out)
    raise EditlabError(f"unknown site kind {kind!r}; use one of {', '.join(KINDS)}")


def _first(out):  # a decoder block returns a tensor (transformers 5) or a tuple whose first item is the state
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, h: torch.Tensor):
    return (h, *out[1:]) if isinstance(out, tuple) else h


@contextmanager
def _hooks(pairs: Sequence[tuple[nn.Module, object]]) -> Iterator[None]:
    handles = [m.register_forward_hook(fn) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _keeps_last_logits(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def restored_probs(model: nn.Module, ids: Sequence[int], span: tuple[int, int], target: int, noise: torch.Tensor,
                   patches: Sequence[Sequence[Site]], batch_size: int = 512) -> tuple[float, torch.Tensor]:
    """p(target) at the last position for the clean prompt and for every patch of the corrupted prompt.

    Args:
        model: a Hugging Face causal LM (eval mode).
        ids: the fed token ids (BOS included), e.g. from :func:`editlab.vocab.subject_span`.
        span: the subject's token positions ``(start, end)``, end exclusive; the noise goes there.
        target: the token whose probability is read (the true object's first token).
        noise: ``(samples, end - start, d_model)``: one corrupted copy of the prompt per sample; every patch
            sees the same samples (paired comparison) and its probability is their mean.
        patches: the sites each corrupted row restores; ``[]`` is the plain corrupted run.
        batch_size: rows per forward pass (one clean row is added to each).

    Returns:
        (p_clean, p) with ``p[i]`` = mean over samples of p(target) under ``patches[i]``.
    """
    a, b = span
    samples = noise.shape[0]
    if noise.dim() != 3 or noise.shape[1] != b - a:
        raise EditlabError(f"noise must have shape (samples, {b - a}, d_model) for the subject span {span}")
    dev = next(model.parameters()).device
    x = torch.tensor([list(ids)], device=dev)
    t = x.shape[1]
    if not (0 <= a < b <= t and target >= 0):
        raise EditlabError(f"subject span {span} is outside the {t}-token prompt")
    embed = model.get_submodule(adapter_for(model).embed)
    kw = {"logits_to_keep": 1} if _keeps_last_logits(model) else {}
    per_chunk = max(1, (batch_size - 1) // samples)
    out = torch.empty(len(patches), dtype=torch.float64)
    p_clean = float("nan")
    for c0 in range(0, len(patches), per_chunk):
        chunk = patches[c0:c0 + per_chunk]
        rows = 1 + len(chunk) * samples
        full_noise = torch.zeros(rows, t, noise.shape[2], dtype=noise.dtype)
        full_noise[1:, a:b] = noise.repeat(len(chunk), 1, 1)
        full_noise = full_noise.to(dev)

        def add_noise(_m, _args, o, n=full_noise):
            return o + n.to(o.dtype)

        masks: dict[tuple[str, int], torch.Tensor] = {}
        for j, sites in enumerate(chunk):
            for kind, layer, tok in sites:
                if not 0 <= tok < t:
                    raise EditlabError(f"token position {tok} is outside the {t}-token prompt")
                m = masks.setdefault((kind, layer), torch.zeros(rows, t, dtype=torch.bool))
                m[1 + j * samples: 1 + (j + 1) * samples, tok] = True

        def restore(mask: torch.Tensor):
            def hook(_m, _args, o):
                h = _first(o)
                return _with_first(o, torch.where(mask.to(h.device)[..., None], h[:1], h))
            return hook

        pairs = [(embed, add_noise)] + [(site_module(model, k, layer), restore(m)) for (k, layer), m in masks.items()]
        with _hooks(pairs):
            logits = model(input_ids=x.expand(rows, t), **kw).logits[:, -1].float()
        p = torch.softmax(logits, dim=-1)[:, target].double().cpu()
        p_clean = float(p[0])
        out[c0:c0 + len(chunk)] = p[1:].view(len(chunk), samples).mean(dim=1)
    return p_clean, out
