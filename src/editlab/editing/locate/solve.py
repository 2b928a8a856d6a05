"""The closed-form solvers of ROME, MEMIT and AlphaEdit, in fp64, without explicit inverses.

Every update solves a symmetric (or, for AlphaEdit, projected) linear system with a Cholesky factor
(``torch.linalg.cholesky_ex`` + ``cholesky_solve``) or an LU solve (``torch.linalg.solve``): forming
``C^-1`` explicitly squares the condition number of the key covariance, whose small eigenvalues are
exactly the directions these methods must not disturb. Updates are returned in the (d_out, d_in)
orientation of :func:`editlab.editing.weights.linear_weight`.

- ROME (Meng et al. 2022, Eq. 2, with r-ROME's single key): ``Delta = r (C^-1 k*)^T / ((C^-1 k*)^T k*)``
  with ``r = v* - W k*``, so ``(W + Delta) k* = v*`` and Delta has rank one;
- MEMIT (Meng et al. 2023, Eq. 14): ``Delta = R K^T (lambda C + K K^T)^-1``;
- AlphaEdit (Fang et al. 2025, Eq. 13 / its code): ``Delta = R K^T P (K_p K_p^T P + K K^T P + alpha I)^-1``
  with ``P`` the projector on the null space of C (:func:`null_space_projector`), so ``Delta k0 = 0`` for
  every key ``k0`` with ``P k0 = 0``.
"""

from __future__ import annotations

import torch

from editlab.editing.base import EditFailed
from editlab.errors import EditlabError


def cholesky(a: torch.Tensor, what: str) -> torch.Tensor:
    """Lower Cholesky factor of a symmetric positive definite fp64 matrix; EditlabError if it is not one."""
    factor, info = torch.linalg.cholesky_ex(a.double())
    if int(info) != 0 or not torch.isfinite(factor).all():
        raise EditlabError(f"{what} is singular or not positive definite (Cholesky failed at column {int(info)}); "
                           "recompute the statistics over more tokens (the method's stats_tokens) or check the model")
    return factor


def rome_update(c_factor: torch.Tensor, key: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """Rank-one ``Delta`` (d_out, d_in) with ``Delta k* = resid``, minimal in the metric C (fp64).

    ``c_factor`` is the Cholesky factor of C, ``key`` k* (d_in,), ``resid`` ``v* - W k*`` (d_out,).
    """
    k = key.double()[:, None]
    u = torch.cholesky_solve(k, c_factor)[:, 0]  # C^-1 k*
    scale = float(u @ k[:, 0])
    if not scale > 0:
        raise EditFailed(f"ROME: k*^T C^-1 k* = {scale} is not positive; the key is degenerate")
    return resid.double()[:, None] * (u / scale)[None, :]


def memit_update(a_factor: torch.Tensor, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """``R K^T A^-1``, ``A = lambda C + K K^T`` given by its Cholesky factor; keys (n, d_in), resid (n, d_out)."""
    return torch.cholesky_solve(keys.double().T @ resid.double(), a_factor).T


def memit_system(cov: torch.Tensor, keys: torch.Tensor, lam: float) -> torch.Tensor:
    """Cholesky factor of ``lambda C + K K^T`` (EditFailed if it is singular)."""
    k = keys.double()
    try:
        return cholesky(lam * cov.double() + k.T @ k, "MEMIT's system lambda C + K K^T")
    except EditlabError as exc:
        raise EditFailed(str(exc)) from None


NULLSPACE_SCALES = ("absolute", "relative")


def null_space_projector(cov: torch.Tensor, threshold: float, scale: str) -> tuple[torch.Tensor, int]:
    """``P = U0 U0^T`` over the eigenvectors of C with eigenvalue ``< threshold`` (``scale="absolute"``, AlphaEdit's
    code: ``get_project`` keeps the singular vectors of C with ``S < nullspace_threshold``) or
    ``< threshold * max eigenvalue`` (``"relative"``: AlphaEdit's absolute 2e-2 is tied to GPT-J's scale of key
    norms, so the same number keeps all or none of the space of another model). Returns P (fp64) and the null
    space's dimension.
    """
    if scale not in NULLSPACE_SCALES:
        raise EditlabError(f"nullspace_scale={scale!r} must be one of {', '.join(NULLSPACE_SCALES)}")
    vals, vecs = torch.linalg.eigh(cov.double())
    small = vals < (threshold * vals.max() if scale == "relative" else threshold)
    u0 = vecs[:, small]
    return u0 @ u0.T, int(small.sum())


def alphaedit_update(proj: torch.Tensor, keys: torch.Tensor, resid: torch.Tensor, prev_gram: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """AlphaEdit's ``Delta = R K^T P (K_p K_p^T P + K K^T P + alpha I)^-1``; ``keys`` (n, d_in), ``resid`` (n, d_out),
    ``prev_gram`` = K_p K_p^T of the earlier committed edits (d_in, d_in)."""
    k, p = keys.double(), proj.double()
    eye = torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    system_t = p @ (prev_gram.double() + k.T @ k) + alpha * eye  # the transpose of the system above
    sol, info = torch.linalg.solve_ex(system_t, p @ k.T @ resid.double())
    if int(info) != 0 or not torch.isfinite(sol).all():
        raise EditFailed("AlphaEdit's system is singular; raise the method's alpha (L2)")
    return sol.T
