"""The generative model p(o | s, r, upstream property) (world.md section 2).

Two kinds of facts:

* without a usable upstream property: a 2-way distribution between the KG object (probability
  p_true, an integer percent uniform in [ceil(100 mgtp), 100]) and one distractor drawn uniformly
  from support(r) minus the KG object;
* downstream facts whose subject has the upstream fact: the empirical conditional
  p(o_d | r_d, o_u) counted from KG co-occurrence over all subjects of the world, with the mode lifted
  to mgtp (others rescaled to 1 - mgtp) when it falls below; its modal object is the mode of the
  conditional given the subject's upstream KG object (which is also that upstream fact's modal
  object, since p_true > 0.5).

Ties are broken by lowest object id, i.e. sorted name order (KG ids follow sorted names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from editlab.world.config import GenerativeConfig
from editlab.world.kg import KG


@dataclass(frozen=True)
class Generative:
    """Per-fact generative distributions, in the KG's fact order.

    Attributes:
        support: per relation, sorted global object ids (support(r)); all objects when
            ``distractors == "any"``.
        modal: modal ("true") object of each fact.
        p_modal: generative probability of the modal object.
        distractor: the 2-way fact's distractor, or -1 (downstream facts; a support of size 1).
        upstream_object: the conditioning upstream object of a downstream fact, or -1.
        dist_ptr, dist_obj, dist_p: CSR rows of (object, probability) per fact, objects ascending.
    """

    support: tuple[np.ndarray, ...]
    modal: np.ndarray
    p_modal: np.ndarray
    distractor: np.ndarray
    upstream_object: np.ndarray
    dist_ptr: np.ndarray
    dist_obj: np.ndarray
    dist_p: np.ndarray

    def distribution(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(objects, probabilities) of fact ``i``."""
        a, b = self.dist_ptr[i], self.dist_ptr[i + 1]
        return self.dist_obj[a:b], self.dist_p[a:b]


def fact_rows(kg: KG) -> dict[tuple[int, int], int]:
    """(subject, relation) -> fact row."""
    return {(s, r): i for i, (s, r) in enumerate(zip(kg.s.tolist(), kg.r.tolist()))}


def supports(kg: KG, distractors: str) -> tuple[np.ndarray, ...]:
    """support(r): the sorted objects of r among the facts (or every object, for ``any``)."""
    if distractors == "any":
        every = np.arange(len(kg.objects), dtype=np.int64)
        return tuple(every for _ in kg.relations)
    return tuple(np.unique(kg.o[kg.r == r]) for r in range(len(kg.relations)))


def lift_mode(objs: np.ndarray, counts: np.ndarray, mgtp: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Normalise counts; if the mode (lowest id on ties) is below mgtp, set it to mgtp and rescale
    the rest to 1 - mgtp. Returns (objects, probabilities, mode object)."""
    p = counts / counts.sum()
    m = int(np.argmax(p))  # objs ascending, argmax takes the first maximum: lowest id wins ties
    if p[m] < mgtp:
        rest = 1.0 - p[m]
        p = p * ((1.0 - mgtp) / rest)
        p[m] = mgtp
    return objs, p, int(objs[m])


def build_generative(kg: KG, cfg: GenerativeConfig, rng: np.random.Generator) -> Generative:
    """Fit the generative model to the KG (pure function of ``kg``, ``cfg`` and the generator state)."""
    n = kg.n_facts
    sup = supports(kg, cfg.distractors)
    rows = fact_rows(kg)
    up_obj = np.full(n, -1, dtype=np.int64)
    for i, (s, r) in enumerate(zip(kg.s.tolist(), kg.r.tolist())):
        u = kg.upstream.get(r)
        if u is not None and (s, u) in rows:
            up_obj[i] = kg.o[rows[(s, u)]]
    is_down = up_obj >= 0

    # Empirical conditionals p(o_d | r_d, o_u) from co-occurrence over all subjects.
    cond: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}
    keys = np.stack([kg.r[is_down], up_obj[is_down], kg.o[is_down]], axis=1)
    if len(keys):
        uniq, counts = np.unique(keys, axis=0, return_counts=True)  # lexicographic: objects ascending
        starts = np.flatnonzero(np.r_[True, np.any(uniq[1:, :2] != uniq[:-1, :2], axis=1)])
        ends = np.r_[starts[1:], len(uniq)]
        for a, b in zip(starts.tolist(), ends.tolist()):
            cond[(int(uniq[a, 0]), int(uniq[a, 1]))] = lift_mode(uniq[a:b, 2], counts[a:b].astype(np.float64),
                                                                   cfg.mgtp)

    lo = math.ceil(round(100 * cfg.mgtp, 9))
    p_true = rng.integers(lo, 101, size=n) / 100.0
    pick = rng.random(n)
    modal = kg.o.copy()
    p_modal = p_true.copy()
    distractor = np.full(n, -1, dtype=np.int64)
    ptr = [0]
    d_obj: list[np.ndarray] = []
    d_p: list[np.ndarray] = []
    for i in range(n):
        r, o = int(kg.r[i]), int(kg.o[i])
        if is_down[i]:
            objs, p, mode = cond[(r, int(up_obj[i]))]
            modal[i] = mode
            p_modal[i] = p[np.searchsorted(objs, mode)]
        else:
            cand = sup[r]
            k = len(cand) - 1  # candidates other than o (o is in support(r) for both modes)
            if k == 0:
                objs, p = np.array([o]), np.array([1.0])
                p_modal[i] = 1.0
            else:
                j = int(pick[i] * k)
                dis = int(cand[j] if cand[j] < o else cand[j + 1])  # j-th element of support minus o
                distractor[i] = dis
                pair = sorted([(o, p_true[i]), (dis, 1.0 - p_true[i])])
                objs = np.array([x for x, _ in pair])
                p = np.array([y for _, y in pair])
        d_obj.append(np.asarray(objs, dtype=np.int64))
        d_p.append(np.asarray(p, dtype=np.float64))
        ptr.append(ptr[-1] + len(objs))
    return Generative(
        support=sup,
        modal=modal,
        p_modal=p_modal,
        distractor=distractor,
        upstream_object=up_obj,
        dist_ptr=np.asarray(ptr, dtype=np.int64),
        dist_obj=np.concatenate(d_obj),
        dist_p=np.concatenate(d_p),
    )


def false_objects(gen: Generative, kg: KG, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A false object for each fact row: its distractor if it has one, else uniform over
    support(r) minus the modal object (world.md sections 3 and 6). -1 where no false object exists."""
    out = gen.distractor[rows].copy()
    u = rng.random(len(rows))
    for k in np.flatnonzero(out < 0).tolist():
        i = int(rows[k])
        cand = gen.support[int(kg.r[i])]
        m = int(gen.modal[i])
        if len(cand) < 2:
            continue
        j = int(u[k] * (len(cand) - 1))
        out[k] = cand[j] if cand[j] < m else cand[j + 1]
    return out
