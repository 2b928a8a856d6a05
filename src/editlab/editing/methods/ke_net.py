"""KE's hypernetwork (De Cao et al. 2021; reference ``nicola-decao/KnowledgeEditor``, ``one_shot_learner.py``).

- :class:`LSTMConditioner`: the edit request's tokens, embedded (initialised from the base model's input
  embeddings, then trained), read by a one-layer bidirectional LSTM whose two final states go through a
  ``tanh`` layer to the condition vector (the reference: allennlp's ``PytorchSeq2VecWrapper`` + ``FeedForward``).
- :class:`ConditionedParameter`: per edited weight ``W`` (d_out, d_in), a two-layer weight-normalised MLP
  maps the condition to ``alpha_row, alpha_col, beta_row, beta_col`` and a gate ``eta``; the update is

      dW = max_scale * sigmoid(eta) * (grad * softmax(alpha_row) alpha_col^T + softmax(beta_row) beta_col^T)

  with ``grad`` = dL/dW of the edit's own loss: the gradient, rescaled entry by entry by a learned rank-1
  mask, plus a learned rank-1 shift. It is not identity-initialised: an untrained editor's update is
  small (``sigmoid(eta) ~ 0.5`` times tiny products) but not zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class LSTMConditioner(nn.Module):
    """Token ids of the edit request -> (B, condition_dim) condition vectors."""

    def __init__(self, embedding: torch.Tensor, hidden_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(embedding.detach().float().clone(), freeze=False)
        self.lstm = nn.LSTM(embedding.shape[1], hidden_dim, num_layers=1, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden_dim, condition_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: (2, B, hidden), the last state of each direction
        return torch.tanh(self.linear(torch.cat([h[0], h[1]], dim=-1)))


class ConditionedParameter(nn.Module):
    """The update of one weight of shape (d_out, d_in) from the condition and the weight's gradient."""

    def __init__(self, shape: tuple[int, int], condition_dim: int, hidden_dim: int, max_scale: float) -> None:
        super().__init__()
        self.d_out, self.d_in = shape
        self.max_scale = max_scale
        self.net = nn.Sequential(weight_norm(nn.Linear(condition_dim, hidden_dim)), nn.Tanh(),
                                 weight_norm(nn.Linear(hidden_dim, 2 * (self.d_out + self.d_in) + 1)))

    def forward(self, condition: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """(B, d_out, d_in) updates from (B, C) conditions and (B, d_out, d_in) gradients."""
        col_a, row_a, col_b, row_b, eta = self.net(condition).split(
            [self.d_in, self.d_out, self.d_in, self.d_out, 1], dim=-1)
        a = row_a.softmax(-1)[:, :, None] * col_a[:, None, :]
        b = row_b.softmax(-1)[:, :, None] * col_b[:, None, :]
        return self.max_scale * eta.sigmoid()[:, :, None] * (grad * a + b)


class KnowledgeEditorNet(nn.Module):
    """The conditioner and one :class:`ConditionedParameter` per edited weight (in the method's module order)."""

    def __init__(self, shapes: Sequence[tuple[int, int]], embedding: torch.Tensor, hidden_dim: int,
                 condition_dim: int, max_scale: float) -> None:
        super().__init__()
        self.condition = LSTMConditioner(embedding, hidden_dim, condition_dim)
        self.params = nn.ModuleList([ConditionedParameter(tuple(s), condition_dim, hidden_dim, max_scale)
                                     for s in shapes])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per edited weight, (B, d_out, d_in) updates of the B requests ``ids`` with their gradients ``grads``."""
        cond = self.condition(ids, mask)
        return [p(cond, g) for p, g in zip(self.params, grads, strict=True)]
