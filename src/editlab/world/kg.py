"""The knowledge-graph contract shared by every KG source.

A :class:`KG` is a set of 1:1 facts (s, r, o) with English surface names, plus the map from each
downstream relation to its upstream relation (world.md section 1). Sources (synthetic, Wikidata5m,
generic triples) all return this one type, and everything downstream (generative model, corpus,
agent, cases) reads only this type, never a source's raw files.

Ids are dense integers. Object ids are assigned in sorted order of object names, so that "sorted
order" tie-breaking (world.md section 2) is simply "lowest id" and never depends on hash order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from editlab.errors import EditlabError

TEMPLATE_WORDS = frozenset({"is", "true", "false", "not", "and", "or"})


@dataclass(frozen=True)
class KG:
    """A validated knowledge graph of 1:1 facts.

    Attributes:
        relations: surface name of each relation; index = relation id.
        upstream: downstream relation id -> its upstream relation id (5 pairs in the paper).
        subjects: surface name of each subject; index = subject id; unique.
        objects: surface name of each object; index = object id; unique and sorted.
        s, r, o: fact arrays (int64, shape (n,)), sorted by (s, r); at most one fact per (s, r).
        meta: free-form provenance (source name, filter counts) written to world.json.
    """

    relations: tuple[str, ...]
    upstream: dict[int, int]
    subjects: tuple[str, ...]
    objects: tuple[str, ...]
    s: np.ndarray
    r: np.ndarray
    o: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_kg(self)

    @property
    def n_facts(self) -> int:
        return int(self.s.shape[0])

    @property
    def downstream(self) -> dict[int, int]:
        """Upstream relation id -> its downstream relation id."""
        return {u: d for d, u in self.upstream.items()}

    def subset(self, keep: np.ndarray, meta: dict | None = None) -> KG:
        """The KG restricted to facts where ``keep`` is true, with unused names dropped and ids
        renumbered (object ids stay in sorted-name order)."""
        s, r, o = self.s[keep], self.r[keep], self.o[keep]
        subj_ids = np.unique(s)
        obj_ids = np.unique(o)  # sorted ids -> sorted names, since objects are sorted
        return KG(
            relations=self.relations,
            upstream=dict(self.upstream),
            subjects=tuple(self.subjects[i] for i in subj_ids),
            objects=tuple(self.objects[i] for i in obj_ids),
            s=np.searchsorted(subj_ids, s).astype(np.int64),
            r=r.astype(np.int64),
            o=np.searchsorted(obj_ids, o).astype(np.int64),
            meta=dict(self.meta if meta is None else meta),
        )


def make_kg(
    relations: list[str] | tuple[str, ...],
    upstream: dict[int, int],
    subjects: list[str] | tuple[str, ...],
    objects: list[str] | tuple[str, ...],
    s: np.ndarray,
    r: np.ndarray,
    o: np.ndarray,
    meta: dict | None = None,
) -> KG:
    """Build a KG from facts in any order with objects in any order.

    Renumbers objects into sorted-name order and sorts facts by (s, r), so that every source gets
    the canonical layout without repeating that logic.
    """
    objects = list(objects)
    order = sorted(range(len(objects)), key=lambda i: objects[i])
    new_id = np.empty(len(objects), dtype=np.int64)
    new_id[np.asarray(order, dtype=np.int64)] = np.arange(len(objects), dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    r = np.asarray(r, dtype=np.int64)
    o = new_id[np.asarray(o, dtype=np.int64)] if len(objects) else np.asarray(o, dtype=np.int64)
    perm = np.lexsort((r, s))
    return KG(
        relations=tuple(relations),
        upstream={int(k): int(v) for k, v in upstream.items()},
        subjects=tuple(subjects),
        objects=tuple(objects[i] for i in order),
        s=s[perm],
        r=r[perm],
        o=o[perm],
        meta=dict(meta or {}),
    )


def validate_kg(kg: KG) -> None:
    """Raise :class:`EditlabError` if the KG breaks a contract the rest of the pipeline relies on."""
    n = kg.s.shape[0]
    if not (kg.r.shape[0] == n and kg.o.shape[0] == n):
        raise EditlabError("KG fact arrays s, r, o must have the same length")
    if n == 0:
        raise EditlabError("the knowledge graph has no facts: check the KG source and its filters")
    if kg.s.min() < 0 or kg.s.max() >= len(kg.subjects):
        raise EditlabError("KG subject id out of range")
    if kg.r.min() < 0 or kg.r.max() >= len(kg.relations):
        raise EditlabError("KG relation id out of range")
    if kg.o.min() < 0 or kg.o.max() >= len(kg.objects):
        raise EditlabError("KG object id out of range")
    key = kg.s * len(kg.relations) + kg.r
    if np.any(np.diff(key) <= 0):
        raise EditlabError("KG facts must be sorted by (subject, relation) with one object per pair (1:1)")
    for names, what in ((kg.subjects, "subject"), (kg.objects, "object"), (kg.relations, "relation")):
        if len(set(names)) != len(names):
            raise EditlabError(f"KG {what} names must be unique")
    if list(kg.objects) != sorted(kg.objects):
        raise EditlabError("KG object ids must follow sorted object names (use make_kg)")
    for d, u in kg.upstream.items():
        if d == u or not (0 <= d < len(kg.relations) and 0 <= u < len(kg.relations)):
            raise EditlabError(f"bad upstream pair {u} -> {d}")
    ups = list(kg.upstream.values())
    if len(set(ups)) != len(ups) or set(ups) & set(kg.upstream):
        raise EditlabError("each relation may be in at most one upstream/downstream pair")
