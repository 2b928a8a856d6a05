"""The Bayesian agent: Categorical-Dirichlet models fitted to weighted corpus evidence (world.md s. 5).

State is immutable: :meth:`Agent.edit` returns a new agent holding the edit and a reference to its
parent, so :meth:`Agent.revert` is exact by construction (it *is* the pre-edit object, bit for bit)
and sequential edits compose naturally (each n' is computed on the agent holding earlier edits).

Storage (scales to the paper's 100k facts in well under 1 GB):

* per fact row i (a KG fact (s, r)), counts c_i = U[i] * 1 + D[i] over support(r) (D sparse), plus
  an overlay of edit weights;
* per pair (r_u -> r_d), the co-occurrence table T = sum_s outer(p_direct(. | s, r_u), c_{s, r_d})
  over subjects with both facts, kept in structured form
  T = t0 * 1 1^T + 1 rvec^T + cvec 1^T + S (S sparse), because p_direct = a * 1 + sparse and
  c = V * 1 + sparse; a dense table would be |support(r_u)| x |support(r_d)| per pair.

Posteriors: p_direct(. | s, r) = (alpha_r + c) / (1 + C), alpha_r = 1 / K_r;
p(. | r_d, o_u) = (alpha_d + T[o_u]) / (1 + sum T[o_u]);
p_marginal(. | s, r_d) = sum_{o_u} p(. | r_d, o_u) p_direct(o_u | s, r_u).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from editlab.errors import EditlabError


@dataclass(frozen=True)
class PairTable:
    """Structured co-occurrence table of one (r_u -> r_d) pair; ``z`` = 1 + row sums."""

    t0: float
    rvec: np.ndarray  # (K_d,)
    cvec: np.ndarray  # (K_u,)
    S: sp.csr_matrix  # (K_u, K_d)
    z: np.ndarray  # (K_u,)

    @staticmethod
    def make(t0: float, rvec: np.ndarray, cvec: np.ndarray, S: sp.csr_matrix) -> PairTable:
        kd = rvec.shape[0]
        z = 1.0 + t0 * kd + rvec.sum() + cvec * kd + np.asarray(S.sum(axis=1)).ravel()
        return PairTable(float(t0), rvec, cvec, S.tocsr(), z)


@dataclass(frozen=True)
class Agent:
    """The fitted agent. Build with :func:`fit_agent` or :meth:`Agent.load`.

    Attributes:
        fact_s, fact_r: subject and relation of each fact row.
        support: per relation, sorted global object ids.
        U, D: base evidence counts (see module docstring).
        upstream: downstream relation -> upstream relation.
        weighting: "posterior" (spec) or "mentions" (the paper's raw mention shares).
        overlay: edit weights, fact row -> ((local object, weight), ...).
        tables: pair tables keyed by downstream relation.
        parent: the agent before the last edit (None for a fitted agent).
    """

    fact_s: np.ndarray
    fact_r: np.ndarray
    support: tuple[np.ndarray, ...]
    U: np.ndarray
    D: sp.csr_matrix
    upstream: dict[int, int]
    weighting: str = "posterior"
    overlay: tuple = ()
    tables: dict | None = None
    parent: Agent | None = None

    # ----- indexing -------------------------------------------------------------------------
    def __post_init__(self) -> None:
        key = self.fact_s * self.n_relations + self.fact_r
        object.__setattr__(self, "_key", key)
        if self.tables is None:
            if self.overlay:
                raise EditlabError("an agent with edits must be made by Agent.edit, not constructed")
            object.__setattr__(self, "tables", {d: self._build_table(d, u) for d, u in self.upstream.items()})

    @property
    def n_relations(self) -> int:
        return len(self.support)

    def row(self, s: int, r: int) -> int:
        """Fact row of (s, r); -1 when the subject has no fact (and so no evidence) on r."""
        k = s * self.n_relations + r
        i = int(np.searchsorted(self._key, k))
        return i if i < len(self._key) and self._key[i] == k else -1

    def local(self, r: int, o: int) -> int:
        """Index of global object ``o`` in support(r)."""
        sup = self.support[r]
        j = int(np.searchsorted(sup, o))
        if j >= len(sup) or sup[j] != o:
            raise EditlabError(f"object {o} is not in the support of relation {r}")
        return j

    # ----- direct posteriors ----------------------------------------------------------------
    def _edits(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        cols: dict[int, float] = {}
        for row, j, w in self.overlay:
            if row == i:
                cols[j] = cols.get(j, 0.0) + w
        ks = sorted(cols)
        return np.asarray(ks, dtype=np.int64), np.asarray([cols[k] for k in ks], dtype=np.float64)

    def counts(self, i: int) -> np.ndarray:
        """Dense evidence count vector c_i over support(r_i), edits included."""
        k = len(self.support[self.fact_r[i]])
        c = np.full(k, self.U[i])
        a, b = self.D.indptr[i], self.D.indptr[i + 1]
        c[self.D.indices[a:b]] += self.D.data[a:b]
        cols, w = self._edits(i)
        c[cols] += w
        return c

    def _structured(self, i: int, prior: bool) -> tuple[float, np.ndarray, np.ndarray, float]:
        """Row i as (uniform level, sparse cols, sparse vals, total), edits merged in.

        With ``prior`` the row is p_direct = (alpha + c) / (1 + C); without, raw counts c.
        """
        r = int(self.fact_r[i])
        k = len(self.support[r])
        a, b = self.D.indptr[i], self.D.indptr[i + 1]
        cols = self.D.indices[a:b].astype(np.int64)
        vals = self.D.data[a:b].copy()
        ecols, ew = self._edits(i)
        if len(ecols):
            merged = np.union1d(cols, ecols)
            v = np.zeros(len(merged))
            v[np.searchsorted(merged, cols)] += vals
            v[np.searchsorted(merged, ecols)] += ew
            cols, vals = merged, v
        total = self.U[i] * k + vals.sum()
        if not prior:
            return float(self.U[i]), cols, vals, float(total)
        if self.weighting == "mentions":  # the paper: raw mention shares, no prior
            return float(self.U[i] / total), cols, vals / total, 1.0
        den = 1.0 + total
        return float((1.0 / k + self.U[i]) / den), cols, vals / den, 1.0

    def direct(self, s: int, r: int) -> np.ndarray:
        """p_direct(. | s, r) over support(r); the prior when (s, r) has no evidence."""
        k = len(self.support[r])
        i = self.row(s, r)
        if i < 0:
            return np.full(k, 1.0 / k)
        c = self.counts(i)
        return (1.0 / k + c) / (1.0 + c.sum())

    # ----- pair tables ----------------------------------------------------------------------
    def _pair_rows(self, d: int, u: int) -> tuple[np.ndarray, np.ndarray]:
        iu = np.flatnonzero(self.fact_r == u)
        idd = np.flatnonzero(self.fact_r == d)
        _, a, b = np.intersect1d(self.fact_s[iu], self.fact_s[idd], return_indices=True)
        return iu[a], idd[b]

    def _build_table(self, d: int, u: int) -> PairTable:
        ku, kd = len(self.support[u]), len(self.support[d])
        ru, rd = self._pair_rows(d, u)
        tot_u = self.U[ru] * ku + np.asarray(self.D[ru].sum(axis=1)).ravel()
        if self.weighting == "mentions":
            den = tot_u
            a = self.U[ru] / den
        else:
            den = 1.0 + tot_u
            a = (1.0 / ku + self.U[ru]) / den
        V = self.U[rd]
        Du = self.D[ru][:, :ku]
        Dd = self.D[rd][:, :kd]
        t0 = float(np.dot(a, V))
        rvec = np.asarray(Dd.T @ a).ravel()
        cvec = np.asarray(Du.T @ (V / den)).ravel()
        S = (sp.diags(1.0 / den) @ Du).T.tocsr() @ Dd
        return PairTable.make(t0, rvec, cvec, S)

    def _contribution(self, iu: int, idd: int) -> tuple[float, np.ndarray, np.ndarray, sp.csr_matrix]:
        u, d = int(self.fact_r[iu]), int(self.fact_r[idd])
        ku, kd = len(self.support[u]), len(self.support[d])
        a, pc, pv, _ = self._structured(iu, prior=True)
        V, ec, ev, _ = self._structured(idd, prior=False)
        rvec = np.zeros(kd)
        rvec[ec] = a * ev
        cvec = np.zeros(ku)
        cvec[pc] = V * pv
        S = sp.csr_matrix((np.outer(pv, ev).ravel(), (np.repeat(pc, len(ec)), np.tile(ec, len(pc)))),
                          shape=(ku, kd))
        return a * V, rvec, cvec, S

    def _refresh(self, table: PairTable, d: int, u: int, i: int, base: Agent) -> PairTable:
        """Replace subject-of-row-i's contribution to the (u -> d) table: new (self) minus old (base)."""
        s, r = int(self.fact_s[i]), int(self.fact_r[i])
        iu, idd = (i, self.row(s, d)) if r == u else (self.row(s, u), i)
        if iu < 0 or idd < 0:
            return table
        n0, nr, nc, nS = self._contribution(iu, idd)
        o0, orv, oc, oS = base._contribution(iu, idd)
        return PairTable.make(table.t0 + n0 - o0, table.rvec + nr - orv, table.cvec + nc - oc, table.S + nS - oS)

    # ----- downstream conditionals and answers ----------------------------------------------
    def conditional(self, d: int, o_u: int) -> np.ndarray:
        """p(. | r_d, o_u) over support(r_d), for a global upstream object ``o_u``."""
        u = self.upstream[d]
        t = self.tables[d]
        j = self.local(u, o_u)
        row = np.full(len(self.support[d]), 1.0 / len(self.support[d]) + t.t0 + t.cvec[j]) + t.rvec
        row += t.S.getrow(j).toarray().ravel()
        return row / t.z[j]

    def marginal_from(self, d: int, w: np.ndarray) -> np.ndarray:
        """sum_{o_u} p(. | r_d, o_u) w[..., o_u] for upstream weights ``w`` of shape (K_u,) or (m, K_u)."""
        t = self.tables[d]
        g = np.atleast_2d(w) / t.z  # (m, K_u)
        kd = len(self.support[d])
        out = (g @ (1.0 / kd + t.t0 + t.cvec))[:, None] + g.sum(axis=1)[:, None] * t.rvec[None, :]
        out += np.asarray(t.S.T @ g.T).T
        return out[0] if np.ndim(w) == 1 else out

    def rule(self, s: int, r: int) -> str:
        """"marginal" when r has an upstream on which s has evidence, else "direct"."""
        u = self.upstream.get(r)
        return "marginal" if u is not None and self.row(s, u) >= 0 else "direct"

    def answer(self, s: int, r: int) -> np.ndarray:
        """The agent's answer for (s, r): p_marginal where defined, else p_direct."""
        if self.rule(s, r) == "marginal":
            return self.marginal_from(r, self.direct(s, self.upstream[r]))
        return self.direct(s, r)

    def prob(self, s: int, r: int, o: int) -> float:
        """The agent's answer at global object ``o``."""
        return float(self.answer(s, r)[self.local(r, o)])

    def argmax(self, s: int, r: int) -> int:
        """Global object id of the answer's mode (lowest id on ties)."""
        return int(self.support[r][int(np.argmax(self.answer(s, r)))])

    # ----- edits -----------------------------------------------------------------------------
    def n_prime(self, s: int, r: int, o: int, target: float = 0.95) -> tuple[int, float]:
        """(n', p_t): the smallest non-negative integer weight taking p_direct(o | s, r) to p_t.

        p_t = target if p < target else (1 + p) / 2. Closed form
        n' = max(0, ceil((p_t (1 + C) - alpha - c_o) / (1 - p_t) - 1e-9)), then checked against the
        exact inequality (alpha + c_o + w) / (1 + C + w) >= p_t and moved by one if rounding erred.
        """
        i = self.row(s, r)
        if i < 0:
            raise EditlabError(f"no fact ({s}, {r}) in the world: edits target existing facts")
        c = self.counts(i)
        k = len(c)
        j = self.local(r, o)
        alpha, co, C = 1.0 / k, float(c[j]), float(c.sum())
        p = (alpha + co) / (1.0 + C)
        p_t = target if p < target else (1.0 + p) / 2.0

        def ok(w: int) -> bool:
            return (alpha + co + w) / (1.0 + C + w) >= p_t

        w = max(0, math.ceil((p_t * (1.0 + C) - alpha - co) / (1.0 - p_t) - 1e-9))
        while not ok(w):
            w += 1
        while w > 0 and ok(w - 1):
            w -= 1
        return w, p_t

    def edit(self, s: int, r: int, o: int, weight: float) -> Agent:
        """A new agent with ``weight`` extra evidence on object ``o`` of (s, r), everything derived
        refreshed: the subject's direct posterior, its contribution to the pair tables (which moves
        every subject's marginal a little) and so its own marginals."""
        i = self.row(s, r)
        if i < 0:
            raise EditlabError(f"no fact ({s}, {r}) in the world: edits target existing facts")
        new = replace(self, overlay=(*self.overlay, (i, self.local(r, o), float(weight))), parent=self)
        tables = dict(self.tables)
        for d, u in self.upstream.items():
            if r in (d, u):
                tables[d] = new._refresh(self.tables[d], d, u, i, base=self)
        object.__setattr__(new, "tables", tables)
        return new

    def revert(self) -> Agent:
        """The agent before the last edit (the very same object: exact)."""
        if self.parent is None:
            raise EditlabError("this agent holds no edit to revert")
        return self.parent

    @property
    def edits(self) -> tuple:
        """(row, local object, weight) of every edit held, oldest first."""
        return self.overlay

    # ----- persistence ----------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the base agent (no edits) as a compressed-free .npz (no pickle)."""
        arrays = {
            "fact_s": self.fact_s, "fact_r": self.fact_r, "U": self.U,
            "D_indptr": self.D.indptr, "D_indices": self.D.indices, "D_data": self.D.data,
            "D_shape": np.asarray(self.D.shape),
            "upstream": np.asarray(sorted(self.upstream.items()), dtype=np.int64).reshape(-1, 2),
            "weighting": np.asarray(self.weighting),
        }
        for r, sup in enumerate(self.support):
            arrays[f"support_{r}"] = sup
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @staticmethod
    def load(path: str) -> Agent:
        """Load an agent written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as z:
            n_rel = sum(1 for k in z.files if k.startswith("support_"))
            D = sp.csr_matrix((z["D_data"], z["D_indices"], z["D_indptr"]), shape=tuple(z["D_shape"]))
            return Agent(
                fact_s=z["fact_s"], fact_r=z["fact_r"],
                support=tuple(z[f"support_{r}"] for r in range(n_rel)),
                U=z["U"], D=D,
                upstream={int(d): int(u) for d, u in z["upstream"]},
                weighting=str(z["weighting"]),
            )


def fit_agent(
    fact_s: np.ndarray,
    fact_r: np.ndarray,
    support: tuple[np.ndarray, ...],
    U: np.ndarray,
    D: sp.csr_matrix,
    upstream: dict[int, int],
    weighting: str = "posterior",
) -> Agent:
    """Fit the agent to evidence counts (see :mod:`editlab.world.evidence`)."""
    return Agent(fact_s=np.asarray(fact_s, dtype=np.int64), fact_r=np.asarray(fact_r, dtype=np.int64),
                 support=tuple(support), U=np.asarray(U, dtype=np.float64), D=D.tocsr(),
                 upstream=dict(upstream), weighting=weighting)
