"""A seeded synthetic Wikidata-like KG with the paper's statistics (Hase et al. 2024, Table 6).

Ten relations in five upstream -> downstream pairs with the paper's surface names. Objects are
typed per relation (both country relations share the "country" type), object frequencies are
Zipf-like, and for each upstream object the downstream object follows a skewed categorical (a
clear mode with probability drawn from ``mode_prob`` plus a Dirichlet tail of ``tail_size``
objects), so the upstream property is informative but not decisive.

Every subject has >= 2 relations. Exactly ``round(downstream_share * n_facts)`` subjects carry one
complete (upstream, downstream) pair; every other relation a subject has comes from a pair it does
not complete, so the share of "downstream facts whose subject has the upstream fact" is the
configured one (up to rounding), and the corpus statistics are testable against config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from editlab.errors import EditlabError
from editlab.world.kg import KG, make_kg
from editlab.world.names import person_names, typed_maker, unique_names

# (upstream name, upstream type), (downstream name, downstream type): the paper's five pairs.
PAIRS = (
    (("educated at", "school"), ("occupation", "occupation")),
    (("place of birth", "city"), ("country of citizenship", "country")),
    (("position played on team", "position"), ("member of sports team", "team")),
    (("sport", "sport"), ("located in time zone", "time zone")),
    (("instance of", "class"), ("country", "country")),
)

# Share of the object budget per type (sums to 1) and name patterns; chosen to resemble Table 6.
TYPES = {
    "school": (0.25, ("{} University", "{} College", "{} Academy", "{} Institute")),
    "occupation": (0.06, ("{} maker", "{} keeper", "{} engineer", "{} scholar", "{} trader")),
    "city": (0.30, ("{}", "{} City", "Port {}")),
    "country": (0.012, ("{}ia", "{}land", "Republic of {}")),
    "position": (0.008, ("{} back", "{} forward", "{} guard")),
    "team": (0.15, ("{} FC", "{} United", "{} Rovers", "{} Athletic")),
    "sport": (0.006, ("{}ball", "{} racing", "{} wrestling")),
    "time zone": (0.002, ("{} Standard Time", "{} Time")),
    "class": (0.212, ("{} complex", "{} structure", "{} series")),
}


@dataclass(frozen=True)
class Config:
    """Sizes and shapes of the synthetic KG.

    Attributes:
        n_subjects: subjects generated (paper scale: ~75k give ~160k KG facts).
        n_objects: object budget over all types (paper: ~20k).
        p_extra_relation: a subject has 2 + Geometric(p) relations (mean 2 + p / (1 - p)), capped so
            that only one pair is ever complete.
        downstream_share: share of facts that are downstream facts whose subject has the upstream.
        zipf_exponent: object frequency ~ 1 / rank^a within a type.
        mode_prob: range of the probability of the downstream mode given an upstream object.
        tail_size: number of non-modal downstream objects per upstream object.
        min_objects_per_type: floor on objects per type for small worlds.
    """

    n_subjects: int = 75000
    n_objects: int = 20000
    p_extra_relation: float = 0.1
    downstream_share: float = 0.2
    zipf_exponent: float = 1.0
    mode_prob: tuple[float, float] = (0.45, 0.8)
    tail_size: int = 6
    min_objects_per_type: int = 8

    def __post_init__(self) -> None:
        if self.n_subjects < 2:
            raise EditlabError(f"data.kg.n_subjects={self.n_subjects} must be >= 2")
        if self.n_objects < 1:
            raise EditlabError(f"data.kg.n_objects={self.n_objects} must be >= 1")
        if not 0.0 <= self.p_extra_relation < 1.0:
            raise EditlabError("data.kg.p_extra_relation must lie in [0, 1)")
        if not 0.0 <= self.downstream_share <= 0.5:
            raise EditlabError("data.kg.downstream_share must lie in [0, 0.5] (a pair is 2 facts)")
        lo, hi = self.mode_prob
        if not 0.0 < lo <= hi <= 1.0:
            raise EditlabError("data.kg.mode_prob must be [lo, hi] with 0 < lo <= hi <= 1")
        if self.tail_size < 0 or self.min_objects_per_type < 2:
            raise EditlabError("data.kg.tail_size must be >= 0 and min_objects_per_type >= 2")
        object.__setattr__(self, "mode_prob", (float(lo), float(hi)))


def _zipf(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like probabilities over ``n`` objects, ranks in a seeded random order."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    return rng.permutation(w / w.sum())


def _relation_sets(cfg: Config, rng: np.random.Generator) -> list[list[int]]:
    """For each subject, its sorted relation ids (relation 2k is upstream of 2k + 1)."""
    n_pairs = len(PAIRS)
    counts = np.minimum(2 + rng.geometric(1.0 - cfg.p_extra_relation, size=cfg.n_subjects) - 1, n_pairs)
    n_paired = int(round(cfg.downstream_share * counts.sum()))
    if n_paired > cfg.n_subjects:
        raise EditlabError("data.kg.downstream_share too large for the number of subjects")
    paired = np.zeros(cfg.n_subjects, dtype=bool)
    paired[rng.choice(cfg.n_subjects, size=n_paired, replace=False)] = True
    counts = np.where(paired, np.minimum(counts, n_pairs + 1), counts)
    out: list[list[int]] = []
    for k, has_pair in zip(counts.tolist(), paired.tolist()):
        order = rng.permutation(n_pairs).tolist()
        rels: list[int] = []
        if has_pair:
            p = order.pop()
            rels += [2 * p, 2 * p + 1]
        side = rng.integers(0, 2, size=n_pairs).tolist()
        while len(rels) < k and order:
            p = order.pop()
            rels.append(2 * p + side[p])
        out.append(sorted(rels))
    return out


def load(cfg: Config, seed: int) -> KG:
    """Generate the KG (pure function of ``cfg`` and ``seed``)."""
    rng = np.random.default_rng([seed, 101])
    relations = [name for pair in PAIRS for name, _ in pair]
    rel_type = [t for pair in PAIRS for _, t in pair]
    upstream = {2 * p + 1: 2 * p for p in range(len(PAIRS))}

    taken: set[str] = set()
    subjects = unique_names(rng, cfg.n_subjects, person_names, taken, substring_free=False)
    pools: dict[str, list[str]] = {}
    for t, (share, patterns) in TYPES.items():
        n = max(cfg.min_objects_per_type, int(round(share * cfg.n_objects)))
        pools[t] = unique_names(rng, n, typed_maker(patterns), taken, substring_free=True)
    objects = [name for t in TYPES for name in pools[t]]
    offset, start = {}, 0
    for t in TYPES:
        offset[t] = start
        start += len(pools[t])
    popularity = {t: _zipf(len(pools[t]), cfg.zipf_exponent, rng) for t in TYPES}

    # Downstream categorical for every (pair, upstream object): a mode plus a Dirichlet tail.
    cond: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for d, u in upstream.items():
        nu, nd = len(pools[rel_type[u]]), len(pools[rel_type[d]])
        tail = min(cfg.tail_size, nd - 1)
        objs = np.empty((nu, tail + 1), dtype=np.int64)
        probs = np.empty((nu, tail + 1), dtype=np.float64)
        mode_p = rng.uniform(*cfg.mode_prob, size=nu)
        for i in range(nu):
            objs[i] = rng.choice(nd, size=tail + 1, replace=False, p=popularity[rel_type[d]])
            probs[i, 0] = mode_p[i]
            probs[i, 1:] = rng.dirichlet(np.ones(tail)) * (1.0 - mode_p[i]) if tail else []
        cond[d] = (objs, probs)

    s_list, r_list, o_list = [], [], []
    for s, rels in enumerate(_relation_sets(cfg, rng)):
        own: dict[int, int] = {}
        for r in rels:
            t = rel_type[r]
            if r in upstream and upstream[r] in own:
                objs, probs = cond[r]
                i = own[upstream[r]]
                local = int(objs[i, rng.choice(probs.shape[1], p=probs[i])])
            else:
                local = int(rng.choice(len(pools[t]), p=popularity[t]))
            own[r] = local
            s_list.append(s)
            r_list.append(r)
            o_list.append(offset[t] + local)
    kg = make_kg(relations, upstream, subjects, objects, np.array(s_list), np.array(r_list), np.array(o_list),
                 meta={"source": "synthetic", "kg_facts": len(s_list)})
    used = np.unique(kg.o)
    return kg.subset(np.ones(kg.n_facts, dtype=bool)) if len(used) < len(objects) else kg
