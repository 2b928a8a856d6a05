"""Causal tracing of one fact (ROME, Meng et al. 2022, Sec. 2.1): the indirect effect of every state.

For a fact (s, r, o) the prompt ``"s r"`` is run three ways: clean; *corrupted* (Gaussian noise of
standard deviation ``noise_std`` on the subject's token embeddings, so the model loses the subject); and
*corrupted-with-restoration*, where one state takes its clean value again. The **indirect effect** (IE)
of a state is ``p_restored(o) - p_corrupted(o)`` for the first token of the true object: how much of the
answer that one state carries. Three kinds of state, each per (layer, token):

- ``hidden``: the block's output (the residual stream) at that layer and token;
- ``mlp``: the MLP outputs of a *window* of ``window`` layers centred on that layer (ROME's layers
  ``max(0, l - k//2) .. min(L, l + ceil(k/2))``), at that token; ROME uses k = 10 of GPT-2 XL's 48 layers;
- ``attn``: the same window of attention outputs.

All layers x positions of one fact run in a few batched forward passes (:mod:`editlab.analysis.patching`);
``samples`` noise draws per fact (ROME: 10), the same draws for every state, seeded by the fact.
Positions before the subject are not computed: the causal mask keeps their corrupted states equal to the
clean ones, so restoring them changes nothing (their IE is exactly 0, written as 0).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.analysis.patching import KINDS, Site, restored_probs
from editlab.errors import EditlabError
from editlab.lm.arch import adapter_for
from editlab.vocab import object_ids, subject_span


@dataclass(frozen=True)
class TraceSettings:
    """How facts are corrupted and restored (the ``trace`` node of conf/analysis/*.yaml).

    Attributes:
        noise: the noise standard deviation as a multiple of the embeddings' standard deviation (ROME: 3).
        samples: noise draws per fact (ROME: 10); the probability under corruption is their mean.
        window: layers restored together by an ``mlp``/``attn`` site (ROME: 10), centred and clipped to the model.
        batch_size: rows per forward pass.
        seed: seed of the noise (each fact's draws are a function of this seed and the fact's prompt).
    """

    noise: float = 3.0
    samples: int = 10
    window: int = 10
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.noise >= 0:
            raise EditlabError(f"trace.noise={self.noise} must be >= 0 (a multiple of the embedding std)")
        for key in ("samples", "window", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise EditlabError(f"trace.{key}={getattr(self, key)} must be >= 1")


def check_traced_settings(settings: object, kind_key: str) -> None:
    """The checks every tracing analysis's settings share: its ``trace`` node (a config dict becomes
    :class:`TraceSettings`, on the frozen dataclass ``settings``) and the restoration kind ``kind_key`` names."""
    from editlab.utils.typed import from_dict

    if isinstance(settings.trace, dict):
        object.__setattr__(settings, "trace", from_dict(TraceSettings, settings.trace, "analysis.trace"))
    kind = getattr(settings, kind_key)
    if kind not in KINDS:
        raise EditlabError(f"analysis.{kind_key}={kind} must be one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class Fact:
    """A fact to trace: the prompt ``"subject relation"`` and the object whose first token is read."""

    subject: str
    relation: str
    object: str


@dataclass
class FactTrace:
    """The trace of one fact.

    Attributes:
        fact: the traced fact.
        ids: the fed token ids (BOS first).
        span: the subject's token positions (start, end), end exclusive.
        target: the object's first token id.
        p_clean, p_corrupted: p(target) of the clean and the corrupted prompt.
        ie: kind -> (layers, tokens) array of indirect effects (only the kinds traced).
    """

    fact: Fact
    ids: list[int]
    span: tuple[int, int]
    target: int
    p_clean: float
    p_corrupted: float
    ie: dict[str, np.ndarray]


def window(layer: int, k: int, n_layers: int) -> range:
    """The layers an ``mlp``/``attn`` site at ``layer`` restores: ROME's window of ``k`` centred on it, clipped."""
    return range(max(0, layer - k // 2), min(n_layers, layer - (-k // 2)))


def fact_inputs(tok: PreTrainedTokenizerBase, fact: Fact) -> tuple[list[int], tuple[int, int], int]:
    """(ids, subject span, target token) of a fact, by the evaluation's tokenisation (:mod:`editlab.vocab`)."""
    ids, span = subject_span(tok, fact.subject, fact.relation)
    obj = object_ids(tok, [fact.object])[0]
    if not obj:
        raise EditlabError(f"object {fact.object!r} has no tokens; check the fact")
    return ids, span, obj[0]


def fact_seed(seed: int, fact: Fact) -> int:
    """The noise seed of a fact: the same fact gets the same draws in any run, order or analysis."""
    text = f"{seed}\x00{fact.subject}\x00{fact.relation}\x00{fact.object}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def fact_noise(fact: Fact, n_tokens: int, d_model: int, std: float, settings: TraceSettings) -> torch.Tensor:
    """(samples, n_tokens, d_model) Gaussian noise of standard deviation ``std``, seeded by the fact."""
    g = torch.Generator().manual_seed(fact_seed(settings.seed, fact))
    return torch.randn(settings.samples, n_tokens, d_model, generator=g) * std


@torch.no_grad()
def embedding_std(model: nn.Module, tok: PreTrainedTokenizerBase, facts: Sequence[Fact]) -> float:
    """Standard deviation of the subjects' token embeddings over ``facts`` (ROME's ``collect_embedding_std``)."""
    embed = model.get_submodule(adapter_for(model).embed)
    dev = next(model.parameters()).device
    rows = []
    for f in facts:
        ids, (a, b), _ = fact_inputs(tok, f)
        rows.append(embed(torch.tensor(ids[a:b], device=dev)).float().reshape(-1).cpu())
    if not rows:
        raise EditlabError("no facts to measure the embedding std on")
    return float(torch.cat(rows).std())


def site_patches(kind: str, n_layers: int, positions: Sequence[int], k: int) -> list[list[Site]]:
    """One patch per (layer, position), layer-major: a block output, or a window of MLP / attention outputs."""
    if kind not in KINDS:
        raise EditlabError(f"unknown trace kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "hidden":
        return [[(kind, layer, t)] for layer in range(n_layers) for t in positions]
    return [[(kind, j, t) for j in window(layer, k, n_layers)] for layer in range(n_layers) for t in positions]


def trace_fact(model: nn.Module, tok: PreTrainedTokenizerBase, fact: Fact, noise_std: float,
               settings: TraceSettings, kinds: Sequence[str] = KINDS,
               positions: Sequence[int] | None = None) -> FactTrace:
    """Indirect effects of every (layer, position) of ``fact`` for each of ``kinds``.

    Args:
        noise_std: absolute standard deviation of the noise (``settings.noise`` x :func:`embedding_std`).
        positions: token positions to trace (default: the subject's first token to the last token).
    """
    ids, span, target = fact_inputs(tok, fact)
    n_layers = adapter_for(model).num_blocks(model)
    d_model = model.get_submodule(adapter_for(model).embed).weight.shape[1]
    pos = list(range(span[0], len(ids))) if positions is None else list(positions)
    noise = fact_noise(fact, span[1] - span[0], d_model, noise_std, settings)
    patches: list[list[Site]] = [[]]
    for kind in kinds:
        patches += site_patches(kind, n_layers, pos, settings.window)
    p_clean, p = restored_probs(model, ids, span, target, noise.to(next(model.parameters()).dtype), patches,
                                settings.batch_size)
    p_corr = float(p[0])
    ie, i = {}, 1
    for kind in kinds:
        grid = np.zeros((n_layers, len(ids)))
        vals = (p[i:i + n_layers * len(pos)] - p[0]).numpy().reshape(n_layers, len(pos))
        grid[:, pos] = vals
        ie[kind] = grid
        i += n_layers * len(pos)
    return FactTrace(fact, ids, span, target, p_clean, p_corr, ie)
