"""MALMEN's aggregation of many edits by ridge least squares, and its closed-form backward (Tan et al. 2024).

For one edited Linear, the keys ``K`` (N, d_in) are its inputs at the answer tokens of *all* edits of a
batch and ``D`` (N, d_out) the value shifts the hypernetwork proposes for them. MALMEN's weight shift
is the one matrix that best maps every key to its shift (Sec. 4.1, Eq. 4):

    S* = argmin_S ||K S - D||^2 + lambda ||S||^2 = (K^T K + lambda I)^-1 K^T D        (d_in, d_out)

with ``lambda = exp(log_lambda_l)`` learned per layer; the Linear's (d_out, d_in) weight gets ``S*^T``.
Unlike MEND's sum of rank-1 updates, edits that share keys are reconciled instead of added up, which
is what lets one shift hold a thousand edits.

Backward (Sec. 4.2): with ``A = K^T K + lambda I`` (symmetric) and ``G = dL/dS*``,

    dL/dD = K A^-1 G,        dL/dlog_lambda = -lambda <A^-1 G, S*>,

and ``K`` (the model's own activations) gets none. So the LM's gradient w.r.t. ``S*`` is computed first
(batch by batch, memory independent of N), then pushed through this closed form into the hypernetwork,
whose outputs are recomputed chunk by chunk: no pass ever holds a graph over all N rows. The normal
equations are sums over rows, accumulated chunk by chunk, and solved by Cholesky in float64 (never an
explicit inverse); the editor's weights stay float32 ("fp32 master weights").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editlab.editing.hyper.editor import GradientEditor


@dataclass
class RidgeSolution:
    """The ridge shift of one layer and what its backward needs.

    Attributes:
        chol: lower Cholesky factor of ``A = K^T K + lambda I`` (float64).
        shift: ``S*`` (d_in, d_out), float64.
        lam: ``lambda`` (float64 scalar tensor).
    """

    chol: torch.Tensor
    shift: torch.Tensor
    lam: torch.Tensor

    def backward(self, grad_shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``M = A^-1 G`` (d_in, d_out): ``dL/dD`` of key rows ``K_c`` is ``K_c M``; ``dL/dlog_lambda``)."""
        m = torch.cholesky_solve(grad_shift.to(torch.float64), self.chol)
        return m, -self.lam * (m * self.shift).sum()


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, log_lambda: torch.Tensor) -> RidgeSolution:
    """``S* = (gram + exp(log_lambda) I)^-1 rhs`` with ``gram = K^T K``, ``rhs = K^T D`` (float64, Cholesky)."""
    lam = log_lambda.detach().to(torch.float64).exp()
    a = gram.to(torch.float64) + lam * torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    chol = torch.linalg.cholesky(a)
    return RidgeSolution(chol, torch.cholesky_solve(rhs.to(torch.float64), chol), lam)


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class RidgeEditor(GradientEditor):
    """MEND's editor networks (per weight shape, per-layer modes and steps) with MALMEN's value shifts and a
    learned ``log_lambda`` per layer.

    Each token's shift is ``d_i = -alpha_l (u_i . u~_i) delta~_i`` (the official code's
    ``coeffs * pesudo_values_grad``): at initialisation (identity network and normaliser) it is the
    negative value gradient scaled by the key's squared norm, so ``K S* ~ D`` makes the shift move each
    key's output along ``-alpha ||u||^2 delta``, as a gradient step on that token alone would.

    The running normaliser is *not* updated inside :meth:`value_shifts` (whatever the module's mode):
    the split backward recomputes the shifts and must see the statistics of the forward pass, so the
    training module merges each batch's rows once, with :meth:`observe`.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], rank: int, n_hidden: int, alpha_init: float,
                 log_lambda_init: float, block: str) -> None:
        super().__init__(shapes, rank, n_hidden, alpha_init, block)
        self.log_lambda = nn.Parameter(torch.full((len(self.shapes),), float(log_lambda_init)))

    def observe(self, layer: int, u: torch.Tensor, delta: torch.Tensor) -> None:
        """Merge token rows of ``layer`` into its shape's running statistics."""
        self.norms[self.modes[layer][0]].update(torch.cat([u.float(), delta.float()], dim=-1))

    def value_shifts(self, layer: int, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """(N, d_out) shifts ``-alpha_l (u . u~) delta~`` of token rows ``u`` (N, d_in), ``delta`` (N, d_out)."""
        norm = self.norms[self.modes[layer][0]]
        was, norm.training = norm.training, False
        try:
            ut, dt = self.transform(layer, u, delta)
        finally:
            norm.training = was
        return -self.alpha[layer] * (u.float() * ut).sum(-1, keepdim=True) * dt

    @torch.no_grad()
    def solve(self, layer: int, keys: torch.Tensor, grads: torch.Tensor, chunk: int) -> RidgeSolution:
        """The ridge shift of ``layer`` for all rows, the normal equations accumulated ``chunk`` rows at a time."""
        d_in, d_out = keys.shape[1], grads.shape[1]
        gram = torch.zeros(d_in, d_in, dtype=torch.float64, device=keys.device)
        rhs = torch.zeros(d_in, d_out, dtype=torch.float64, device=keys.device)
        for s in chunks(keys.shape[0], chunk):
            k = keys[s].to(torch.float64)
            gram += k.T @ k
            rhs += k.T @ self.value_shifts(layer, keys[s], grads[s]).to(torch.float64)
        return ridge_solve(gram, rhs, self.log_lambda[layer])

    def backward(self, layer: int, keys: torch.Tensor, grads: torch.Tensor, sol: RidgeSolution,
                 grad_shift: torch.Tensor, chunk: int) -> None:
        """Accumulate into the editor's ``.grad`` the gradient of a loss whose gradient w.r.t. ``layer``'s
        shift ``S*`` (d_in, d_out) is ``grad_shift``: through the closed form, the shifts recomputed per chunk."""
        m, g_lam = sol.backward(grad_shift)
        lam_grad = torch.zeros_like(self.log_lambda)
        lam_grad[layer] = g_lam.to(lam_grad.dtype)
        self.log_lambda.grad = lam_grad if self.log_lambda.grad is None else self.log_lambda.grad + lam_grad
        for s in chunks(keys.shape[0], chunk):
            with torch.enable_grad():
                d = self.value_shifts(layer, keys[s], grads[s])
                (d * (keys[s].to(torch.float64) @ m).to(d.dtype)).sum().backward()
