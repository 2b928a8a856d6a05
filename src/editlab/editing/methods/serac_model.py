"""SERAC's modules (Mitchell et al. 2022, "Memory-Based Model Editing at Scale"): the scope classifier,
the counterfactual model's input format and the routing wrapper. The method is methods/serac.py, its
meta-training methods/serac_train.py.

- **Scope classifier** (:class:`ScopeClassifier`): an embedding-distance model. A query position and an
  edit are embedded by the same map, ``e = normalize(MLP(LayerNorm([h_t; mean of h up to t])))`` with
  ``h`` the base model's block outputs, concatenated; the edit's embedding is taken at the last token of its prompt
  ``BOS "s r"``. The score of (query, edit) is ``exp(log_scale) * cos(e_q, e_edit) + bias`` (learned
  temperature and bias), trained with balanced BCE (serac_train.py). The feature extractor is the
  frozen base model itself: the wrapper runs the base forward for every query anyway (the
  out-of-scope answer), so embedding the query costs one small MLP on hidden states it already has.
- **Memory**: the stored edits' embeddings as one (M, D) tensor, appended per edit, and each edit's
  counterfactual prefix ``BOS "s r o*."``. The memory is embedded once, when an edit is stored;
  a query is embedded once, then routing is one (positions x M) matrix product: cost flat in M
  beyond that lookup.
- **Routing** (:meth:`SeracWrapper.route`): per position, the best-scoring edit; a position is in scope
  when its score is above the threshold's logit. The embedding of a position sees only the tokens up
  to it (causal hidden states), so the wrapper stays a causal LM: teacher forcing and greedy decoding
  route the same prefix the same way. The classifier is trained on the positions that are read as
  predictions: the last prompt token and the answer's tokens (serac_train.py).
- **Counterfactual model**: a causal LM (initialised from the base checkpoint and fine-tuned,
  serac_train.py) that reads the edit's prefix and then the query row as it is (its own BOS
  included): ``BOS "s r o*." BOS query``. In-scope positions take its logits, all others the base
  model's, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditRequest, EditWrapper
from editlab.vocab import prompt_ids


def cf_prefix_ids(tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest]) -> list[list[int]]:
    """``BOS "s r o*."`` per request: what the counterfactual model reads before an in-scope query."""
    return prompt_ids(tok, [f"{r.sentence}." for r in requests])


def prepend(prefixes: Sequence[Sequence[int]], rows: Sequence[Sequence[int]], pad_id: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``prefix + row`` sequences and their attention mask (the counterfactual model's input)."""
    seqs = [list(p) + list(r) for p, r in zip(prefixes, rows, strict=True)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


class ScopeClassifier(nn.Module):
    """Embeds positions of the base model's hidden states and scores them against stored edit embeddings.

    Args:
        n_features: width of the concatenated hidden states (``len(layers) * hidden_size``).
        layers: indices into the model's ``hidden_states`` tuple (0 = embeddings, i = output of block i).
        hidden, dim: MLP width and embedding dimension.
        init_scale, init_bias: initial temperature and bias of the score.
    """

    def __init__(self, n_features: int, layers: Sequence[int], hidden: int, dim: int, init_scale: float,
                 init_bias: float) -> None:
        super().__init__()
        self.layers = list(layers)
        self.norm = nn.LayerNorm(2 * n_features)
        self.mlp = nn.Sequential(nn.Linear(2 * n_features, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.log_scale = nn.Parameter(torch.tensor(float(init_scale)).log())
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def embed(self, hidden_states: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) unit-norm embeddings of every position from the base model's ``hidden_states``.

        A position's features are its own hidden states and the running mean of the row's hidden states
        up to it (padding excluded): the mean carries the subject's and the relation's tokens to every
        later position (the answer's tokens too), the position's own state what the model reads there.
        Both only look back, so the embedding of a position never depends on what follows it.
        """
        feats = torch.cat([hidden_states[i].float() for i in self.layers], dim=-1)  # (B, T, F)
        m = mask.to(feats.dtype)[..., None]
        mean = (feats * m).cumsum(1) / m.cumsum(1).clamp(min=1)
        return nn.functional.normalize(self.mlp(self.norm(torch.cat([feats, mean], -1))), dim=-1)

    def score(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(..., M) logits of "query is in the scope of edit m": ``exp(log_scale) * cos + bias``."""
        return self.log_scale.exp() * (queries @ keys.T) + self.bias


def hidden_states(base: nn.Module, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> Any:
    """The base model's output with ``hidden_states`` (embeddings, then every block's output)."""
    return base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False, **kwargs)


def embed_prompts(base: nn.Module, classifier: ScopeClassifier, prompts: list[list[int]], pad_id: int
                  ) -> torch.Tensor:
    """(N, D) embeddings of token rows at their last token (the stored key of an edit: its ``BOS "s r"``)."""
    dev = next(classifier.parameters()).device
    ids, mask = prepend([[]] * len(prompts), prompts, pad_id)
    out = hidden_states(base, ids.to(dev), mask.to(dev))
    last = torch.tensor([len(p) - 1 for p in prompts], device=dev)
    return classifier.embed(out.hidden_states, mask.to(dev))[torch.arange(len(prompts), device=dev), last]


class SeracWrapper(EditWrapper):
    """The base model, the counterfactual model and the scope classifier over a memory of edits.

    Attributes:
        keys: (M, D) embeddings of the stored edits (computed once per edit, when it is stored).
        prefixes: per stored edit, the counterfactual prefix ``BOS "s r o*."`` (token ids).
    """

    def __init__(self, base: nn.Module, cf: nn.Module, classifier: ScopeClassifier, keys: torch.Tensor,
                 prefixes: list[list[int]], threshold: float) -> None:
        super().__init__(base)
        self.cf, self.classifier = cf, classifier
        self.register_buffer("keys", keys, persistent=False)
        self.prefixes = prefixes
        self.cut = float(torch.logit(torch.tensor(threshold, dtype=torch.float64)))

    def route(self, hidden: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(B, T) index of the stored edit each position is routed to, -1 = out of scope (the base model)."""
        if self.keys.shape[0] == 0:
            return torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        score, best = self.classifier.score(self.classifier.embed(hidden, mask), self.keys).max(-1)  # (B, T)
        return torch.where((score > self.cut) & mask.bool(), best, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        kwargs.pop("output_hidden_states", None)
        kwargs.pop("use_cache", None)
        out = hidden_states(self.base, input_ids, mask, **kwargs)
        route = self.route(out.hidden_states, mask)
        rows = (route >= 0).any(-1).nonzero()[:, 0].tolist()
        if not rows:
            return SimpleNamespace(logits=out.logits)
        logits = out.logits.clone()
        real = [mask[b].nonzero()[:, 0] for b in rows]  # positions of the row's tokens (left or right padded)
        # at most one counterfactual pass per row, so a query's cost never grows with the memory: the edit of
        # the row's last in-scope position (the answer being read); a position routed elsewhere keeps the base
        edits = [int(route[b, pos][route[b, pos] >= 0][-1]) for b, pos in zip(rows, real, strict=True)]
        pad = int(self.config.pad_token_id if self.config.pad_token_id is not None else 0)
        ids, cf_mask = prepend([self.prefixes[e] for e in edits], [input_ids[b, pos].tolist()
                                                                    for b, pos in zip(rows, real, strict=True)], pad)
        cf_logits = self.cf(input_ids=ids.to(input_ids.device), attention_mask=cf_mask.to(input_ids.device),
                            use_cache=False).logits
        for i, (b, pos, e) in enumerate(zip(rows, real, edits, strict=True)):
            on = route[b, pos] == e
            logits[b, pos[on]] = cf_logits[i, len(self.prefixes[e]) + torch.nonzero(on)[:, 0]].to(logits.dtype)
        return SimpleNamespace(logits=logits)
