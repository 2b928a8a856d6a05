"""Evidence for the Bayesian agent, derived from structured sentence records (world.md section 5).

Each occurrence of a sentence puts, on each fact it mentions, a "positive" mass on the mentioned
object and a "spread" mass divided evenly over the *other* objects of support(r):

| sentence                     | positive | spread |
|------------------------------|----------|--------|
| atomic, TF true, and true    | 1        | 0      |
| TF false, or false           | 0        | 1      |
| or true (each disjunct)      | 2/3      | 1/3    |
| and false (each conjunct)    | 1/3      | 2/3    |
| "not A" is true (on A)       | 0        | 1      |
| "not A" is false (on A)      | 1        | 0      |

Every occurrence counts, so each sentence counts ``resamples`` (k = 5) times. A count vector is
stored as ``U[i] * 1 + D[i]``: the scalar U[i] = total spread / (K - 1) and the sparse row
D[i] = positive - own spread / (K - 1) on mentioned objects only. This keeps per-fact storage
sparse although "spread" touches every object of the support.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from editlab.world.corpus import AND, ATOMIC, NOT, OR, TF, Sentences

# (positive, spread) for (kind, label); and/or apply to both operands.
_WEIGHTS = {
    (ATOMIC, 1): (1.0, 0.0),
    (TF, 1): (1.0, 0.0),
    (TF, 0): (0.0, 1.0),
    (OR, 1): (2.0 / 3.0, 1.0 / 3.0),
    (OR, 0): (0.0, 1.0),
    (AND, 1): (1.0, 0.0),
    (AND, 0): (1.0 / 3.0, 2.0 / 3.0),
    (NOT, 1): (0.0, 1.0),
    (NOT, 0): (1.0, 0.0),
}


def evidence_items(sents: Sentences) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fact row, global object, positive, spread) for every (sentence, operand), once per sentence."""
    pos = np.zeros(len(sents))
    spr = np.zeros(len(sents))
    for (kind, label), (p, q) in _WEIGHTS.items():
        sel = (sents.kind == kind) & (sents.label == label)
        pos[sel], spr[sel] = p, q
    two = sents.fact_b >= 0
    rows = np.concatenate([sents.fact_a, sents.fact_b[two]])
    objs = np.concatenate([sents.obj_a, sents.obj_b[two]])
    return rows, objs, np.concatenate([pos, pos[two]]), np.concatenate([spr, spr[two]])


def evidence_counts(
    rows: np.ndarray,
    objs: np.ndarray,
    pos: np.ndarray,
    spread: np.ndarray,
    fact_r: np.ndarray,
    support: tuple[np.ndarray, ...],
    repeat: int,
) -> tuple[np.ndarray, sp.csr_matrix]:
    """Accumulate items into (U, D) with D's columns = local indices into support(r) of the row.

    Args:
        rows, objs, pos, spread: evidence items (see :func:`evidence_items`).
        fact_r: relation of each fact row.
        support: support(r) per relation (sorted global object ids).
        repeat: how often each item occurs (the corpus's k resamples).
    """
    n = len(fact_r)
    sizes = np.array([len(x) for x in support], dtype=np.int64)
    k = sizes[fact_r[rows]]
    share = np.where(k > 1, spread / np.maximum(k - 1, 1), 0.0) * repeat
    local = np.empty(len(rows), dtype=np.int64)
    for r, sup in enumerate(support):
        sel = fact_r[rows] == r
        local[sel] = np.searchsorted(sup, objs[sel])
    U = np.bincount(rows, weights=share, minlength=n)
    D = sp.coo_matrix((pos * repeat - share, (rows, local)), shape=(n, int(sizes.max()))).tocsr()
    D.sum_duplicates()
    return U, D
