"""Build a :class:`~editlab.world.kg.KG` from raw (head, relation, tail) id triples plus alias lists.

This is Appendix A.1 of Hase et al. (2024), shared by the ``wikidata5m`` and ``triples`` sources so
that both apply the same filters in the same order (world.md section 1):

1. drop triples whose head, relation or tail has no alias (an id mapped to an empty list counts as
   having none);
2. drop the given entity ids (as head or tail) and relation ids;
3. choose the ``n_relations`` most co-occurring relations: C[i, j] (i != j) is the number of
   subjects (heads) that have both relation i and relation j, a relation's score is sum_j C[i, j];
   ranked by score, descending, ties by relation id string order;
4. keep only triples of the chosen relations;
5. make each (subject, relation) 1:1 by keeping its FIRST listed object (input order);
6. keep subjects with >= 2 chosen relations;
7. pair the chosen relations upstream -> downstream (see :func:`best_pairing`), unless explicit pairs
   are given.

Relations in the KG are the chosen ones in relation id string order (KG relation index i is
``meta["relation_ids"][i]``). Subjects are ordered by id string; objects by name (``make_kg``).

Pairing uses the row-normalised co-occurrence among the chosen relations,
M[u, d] = C[u, d] / sum_j C[u, j] (j over the chosen relations; a zero row stays zero), computed with
exact fractions so that ties are real ties. Steps 5 and 6 do not change C among the chosen relations
(a subject with one chosen relation co-occurs with none), so M is the same before and after them.

Verbalisation (the first alias is not always the English label). An alias is *acceptable* when, after
collapsing runs of whitespace to one space, it is non-empty printable ASCII, has no double quote
(sentences quote facts as ``"<s> <r> <o>" is true``), contains at least one letter, and its
lower-cased words are not all template words (``TEMPLATE_WORDS``). Object names are first truncated
to ``max_object_words`` words; subject and relation names are not truncated. An id's candidate names
are its acceptable aliases in listed order (duplicates removed), or, if it has none, its first
alias. Names are unique per role (subjects, objects, relations): ids take names in sorted id-string
order, each the first candidate not yet taken; an id whose candidates are all taken gets
``"<first candidate> (<id>)"``. The same entity may therefore read differently as subject and as
object (truncation, collisions), which is harmless: subjects and objects are separate name spaces.

Everything is deterministic: ids are encoded in input order and every iteration over ids is sorted;
no randomness is used, so the sources built on it (triples, wikidata5m) ignore the ``seed`` of their
``load(cfg, seed)``, which is there for the source interface.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

from editlab.errors import EditlabError
from editlab.world.kg import KG, TEMPLATE_WORDS, make_kg

MAX_ENUMERATED_RELATIONS = 14  # (14 - 1)!! = 135135 matchings; beyond that give pairs explicitly

Number = TypeVar("Number", float, Fraction)


def normalize_pairs(pairs: object) -> tuple[tuple[str, str], ...] | None:
    """``pairs`` as a tuple of (upstream, downstream) id tuples, or an error naming the fix.

    Accepts any sequence of 2-sequences (Hydra passes ListConfig), so Config objects stay hashable.
    """
    if pairs is None:
        return None
    if isinstance(pairs, str) or not isinstance(pairs, Iterable):
        raise EditlabError("data.kg.pairs must be a list of [upstream_relation_id, downstream_relation_id]")
    out = []
    for p in pairs:
        items = list(p) if not isinstance(p, str) and isinstance(p, Iterable) else []
        if len(items) != 2 or not all(isinstance(x, str) and x for x in items):
            raise EditlabError(
                f"bad pair {p!r} in data.kg.pairs: each pair must be [upstream_relation_id, downstream_relation_id]"
            )
        out.append((items[0], items[1]))
    return tuple(out)


def validate_params(n_relations: int, max_object_words: int, pairs: object) -> tuple[tuple[str, str], ...] | None:
    """Check the parameters both loaders share; returns the normalised ``pairs``."""
    if isinstance(n_relations, bool) or not isinstance(n_relations, int) or n_relations < 2:
        raise EditlabError(f"data.kg.n_relations must be an even integer >= 2, got {n_relations!r}")
    if n_relations % 2:
        raise EditlabError(
            f"data.kg.n_relations must be even (relations form upstream/downstream pairs), got {n_relations}"
        )
    if isinstance(max_object_words, bool) or not isinstance(max_object_words, int) or max_object_words < 1:
        raise EditlabError(f"data.kg.max_object_words must be an integer >= 1, got {max_object_words!r}")
    norm = normalize_pairs(pairs)
    if norm is None and n_relations > MAX_ENUMERATED_RELATIONS:
        raise EditlabError(
            f"data.kg.n_relations={n_relations} is too many for exact pairing by enumeration "
            f"(at most {MAX_ENUMERATED_RELATIONS}); lower it or give data.kg.pairs explicitly"
        )
    return norm


# ----------------------------------------------------------------------------- pairing


def perfect_matchings(n: int) -> Iterator[list[tuple[int, int]]]:
    """All perfect matchings of 0..n-1 in lexicographic order ((n-1)!! of them; 945 for n = 10).

    Each matching is a list of pairs (a, b), a < b, sorted by a: the lowest unmatched index is
    paired with each higher index in ascending order, recursively.
    """
    if n % 2:
        raise ValueError(f"perfect matchings need an even number of items, got {n}")

    def rec(rest: tuple[int, ...]) -> Iterator[list[tuple[int, int]]]:
        if not rest:
            yield []
            return
        a = rest[0]
        for k in range(1, len(rest)):
            for tail in rec(rest[1:k] + rest[k + 1 :]):
                yield [(a, rest[k]), *tail]

    yield from rec(tuple(range(n)))


def orient(m: Sequence[Sequence[Number]], a: int, b: int) -> tuple[int, int]:
    """The better orientation (upstream, downstream) of the unordered pair {a, b}, a < b:
    a -> b if M[a][b] >= M[b][a] else b -> a (ties: the lower index is upstream)."""
    return (a, b) if m[a][b] >= m[b][a] else (b, a)


def best_pairing(m: Sequence[Sequence[Number]]) -> tuple[list[tuple[int, int]], Number]:
    """The exact optimum of the pairing integer program, by enumeration.

    Maximises sum M[u][d] over (upstream u, downstream d) pairs in which every index appears exactly
    once. That equals the best perfect matching with edge weight max(M[a][b], M[b][a]), each pair
    oriented by :func:`orient`. Ties between matchings go to the first in
    :func:`perfect_matchings` order (strict improvement only), so the result never depends on a
    solver. Pass :class:`fractions.Fraction` entries for exact ties.

    Returns the (upstream, downstream) pairs (sorted by the pair's lower index) and the total value.
    """
    n = len(m)
    w = [[max(m[a][b], m[b][a]) for b in range(n)] for a in range(n)]
    best: list[tuple[int, int]] | None = None
    best_val: Number | None = None
    for matching in perfect_matchings(n):
        val = sum(w[a][b] for a, b in matching)
        if best_val is None or val > best_val:
            best, best_val = matching, val
    if best is None or best_val is None:
        raise ValueError("best_pairing needs at least two items")
    return [orient(m, a, b) for a, b in best], best_val


def normalized_cooccurrence(c: np.ndarray) -> list[list[Fraction]]:
    """Row-normalised co-occurrence M[u][d] = C[u, d] / sum_j C[u, j] as exact fractions (diagonal
    ignored; an all-zero row stays zero)."""
    n = c.shape[0]
    c = np.array(c, dtype=np.int64)
    np.fill_diagonal(c, 0)
    out = []
    for i in range(n):
        total = int(c[i].sum())
        out.append([Fraction(int(c[i, j]), total) if total else Fraction(0) for j in range(n)])
    return out


# ----------------------------------------------------------------------------- names


def _clean(alias: str) -> str:
    """Collapse whitespace runs: sentences are plain words separated by single spaces."""
    return " ".join(alias.split())


def acceptable_alias(alias: str) -> bool:
    """Whether a (whitespace-normalised) alias may be used as a name; see the module docstring."""
    if not alias or '"' in alias or not all(" " <= ch <= "~" for ch in alias):
        return False
    if not any(ch.isalpha() for ch in alias):
        return False
    return not all(word in TEMPLATE_WORDS for word in alias.lower().split())


def name_candidates(aliases: Sequence[str], max_words: int | None = None) -> list[str]:
    """An id's candidate names in preference order: acceptable aliases (truncated to ``max_words``
    words when given, duplicates removed), else the first alias alone."""
    cleaned = [_clean(a) for a in aliases]
    cleaned = [a for a in cleaned if a]
    if max_words is not None:
        cleaned = [" ".join(a.split()[:max_words]) for a in cleaned]
    good = list(dict.fromkeys(a for a in cleaned if acceptable_alias(a)))
    return good or cleaned[:1]


def assign_names(
    ids: Iterable[str], aliases: Mapping[str, Sequence[str]], max_words: int | None = None
) -> dict[str, str]:
    """Unique names for ``ids``: in sorted id order, each id takes its first candidate not yet
    taken, else ``"<first candidate> (<id>)"`` (made unique with a counter in the rare case that
    this is taken too)."""
    taken: set[str] = set()
    names: dict[str, str] = {}
    for ident in sorted(ids):
        cands = name_candidates(aliases[ident], max_words) or [ident]
        name = next((c for c in cands if c not in taken), None)
        if name is None:
            name = f"{cands[0]} ({ident})"
            k = 2
            while name in taken:
                name, k = f"{cands[0]} ({ident}, {k})", k + 1
        taken.add(name)
        names[ident] = name
    return names


# ----------------------------------------------------------------------------- filters


class _Encoder:
    """Dense integer ids for string ids, in first-seen order (deterministic for a fixed input)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []

    def __call__(self, ident: str) -> int:
        i = self.index.get(ident)
        if i is None:
            i = self.index[ident] = len(self.ids)
            self.ids.append(ident)
        return i


def _alias_checker(aliases: Mapping[str, Sequence[str]]) -> Callable[[str], bool]:
    """Memoised "has at least one alias" (lookups may be costly for lazy alias tables)."""
    memo: dict[str, bool] = {}

    def has(ident: str) -> bool:
        v = memo.get(ident)
        if v is None:
            v = memo[ident] = ident in aliases and len(aliases[ident]) > 0
        return v

    return has


def _cooccurrence(h: np.ndarray, r: np.ndarray, n_rel: int) -> np.ndarray:
    """C[i, j] = number of distinct subjects having both relations i and j (diagonal zeroed)."""
    keys = np.unique(h * n_rel + r)
    subj, rel = keys // n_rel, keys % n_rel
    _, row = np.unique(subj, return_inverse=True)
    b = sp.csr_matrix((np.ones(len(keys), dtype=np.int64), (row.ravel(), rel)), shape=(int(row.max()) + 1, n_rel))
    c = np.asarray((b.T @ b).todense(), dtype=np.int64)
    np.fill_diagonal(c, 0)
    return c


def choose_relations(c: np.ndarray, rel_ids: Sequence[str], n_relations: int) -> list[int]:
    """Indices of the ``n_relations`` relations with the highest co-occurrence score sum_j C[i, j],
    ties by relation id string; returned in relation id string order."""
    score = c.sum(axis=1)
    ranked = sorted(range(len(rel_ids)), key=lambda i: (-int(score[i]), rel_ids[i]))
    return sorted(ranked[:n_relations], key=lambda i: rel_ids[i])


def build_kg(
    triples: Iterable[tuple[str, str, str]],
    entity_aliases: Mapping[str, Sequence[str]],
    relation_aliases: Mapping[str, Sequence[str]],
    *,
    drop_entities: Iterable[str] = (),
    drop_relations: Iterable[str] = (),
    n_relations: int = 10,
    max_object_words: int = 4,
    pairs: Sequence[Sequence[str]] | None = None,
    source: str = "triples",
) -> KG:
    """Apply Appendix A.1 (module docstring) to ``triples`` and return the KG.

    ``triples`` is consumed once, so it may be a streaming generator over a large file. ``meta``
    records ``source``, the counts after each filter, the chosen relation ids (KG relation order),
    the pairs as source ids, how they were chosen, and the pairing value.
    """
    norm_pairs = validate_params(n_relations, max_object_words, pairs)
    drop_e, drop_r = frozenset(drop_entities), frozenset(drop_relations)
    has_e, has_r = _alias_checker(entity_aliases), _alias_checker(relation_aliases)
    ents, rels = _Encoder(), _Encoder()
    h_list, r_list, t_list = array("q"), array("q"), array("q")  # 8 bytes a triple field
    n_read = n_aliased = 0
    for head, rel, tail in triples:
        n_read += 1
        if not (has_e(head) and has_r(rel) and has_e(tail)):
            continue
        n_aliased += 1
        if head in drop_e or tail in drop_e or rel in drop_r:
            continue
        h_list.append(ents(head))
        r_list.append(rels(rel))
        t_list.append(ents(tail))
    counts = {"triples_read": n_read, "with_aliases": n_aliased, "after_drops": len(h_list)}
    if not h_list:
        raise EditlabError(
            f"no triples left after dropping ids without an alias or in the drop lists ({counts}): "
            "check that label files are tab-separated ID<TAB>label lines matching the triple ids"
        )
    h, r, t = (np.frombuffer(x, dtype=np.int64).copy() for x in (h_list, r_list, t_list))
    del h_list, r_list, t_list

    c_all = _cooccurrence(h, r, len(rels.ids))
    counts["relations_available"] = len(rels.ids)
    if len(rels.ids) < n_relations:
        raise EditlabError(
            f"only {len(rels.ids)} relations remain after filtering but data.kg.n_relations={n_relations}: "
            "lower n_relations or read more triples"
        )
    chosen = choose_relations(c_all, rels.ids, n_relations)
    new_rel = np.full(len(rels.ids), -1, dtype=np.int64)
    new_rel[np.asarray(chosen, dtype=np.int64)] = np.arange(n_relations, dtype=np.int64)
    keep = new_rel[r] >= 0
    h, r, t = h[keep], new_rel[r[keep]], t[keep]
    counts["of_chosen_relations"] = int(h.shape[0])

    _, first = np.unique(h * n_relations + r, return_index=True)  # first occurrence (stable sort)
    first = np.sort(first)
    h, r, t = h[first], r[first], t[first]
    counts["one_to_one"] = int(h.shape[0])

    subj, n_per_subj = np.unique(h, return_counts=True)
    keep = np.isin(h, subj[n_per_subj >= 2])
    h, r, t = h[keep], r[keep], t[keep]
    counts["facts"] = int(h.shape[0])
    if counts["facts"] == 0:
        raise EditlabError(
            f"no subject has >= 2 of the {n_relations} chosen relations ({counts}): "
            "read more triples or lower data.kg.n_relations"
        )

    rel_ids = [rels.ids[i] for i in chosen]
    up_pairs, how, value = _pairs(c_all[np.ix_(chosen, chosen)], rel_ids, norm_pairs)

    subj_ids = sorted(ents.ids[i] for i in np.unique(h))
    obj_ids = sorted(ents.ids[i] for i in np.unique(t))
    subj_pos = np.full(len(ents.ids), -1, dtype=np.int64)
    subj_pos[[ents.index[x] for x in subj_ids]] = np.arange(len(subj_ids), dtype=np.int64)
    obj_pos = np.full(len(ents.ids), -1, dtype=np.int64)
    obj_pos[[ents.index[x] for x in obj_ids]] = np.arange(len(obj_ids), dtype=np.int64)
    subj_name = assign_names(subj_ids, entity_aliases)
    obj_name = assign_names(obj_ids, entity_aliases, max_object_words)
    rel_name = assign_names(rel_ids, relation_aliases)
    counts["subjects"], counts["objects"] = len(subj_ids), len(obj_ids)

    meta = {
        "source": source,
        "counts": counts,
        "relation_ids": rel_ids,
        "pairs": [[rel_ids[u], rel_ids[d]] for u, d in up_pairs],
        "pairing": how,
        "pairing_value": value,
    }
    return make_kg(
        relations=[rel_name[x] for x in rel_ids],
        upstream={d: u for u, d in up_pairs},
        subjects=[subj_name[x] for x in subj_ids],
        objects=[obj_name[x] for x in obj_ids],
        s=subj_pos[h],
        r=r,
        o=obj_pos[t],
        meta=meta,
    )


def _pairs(
    c: np.ndarray, rel_ids: list[str], explicit: tuple[tuple[str, str], ...] | None
) -> tuple[list[tuple[int, int]], str, float]:
    """(upstream, downstream) KG relation indices, how they were chosen, and their total M value."""
    m = normalized_cooccurrence(c)
    if explicit is None:
        best, value = best_pairing(m)
        return best, "exact_matching", float(value)
    pos = {x: i for i, x in enumerate(rel_ids)}
    seen: set[str] = set()
    out = []
    for up, down in explicit:
        if up == down:
            raise EditlabError(f"pair [{up}, {down}] in data.kg.pairs pairs a relation with itself")
        for x in (up, down):
            if x not in pos:
                raise EditlabError(
                    f"relation {x} in data.kg.pairs is not among the chosen relations {rel_ids}; "
                    "pair only these or change data.kg.n_relations"
                )
            if x in seen:
                raise EditlabError(f"relation {x} appears in more than one pair in data.kg.pairs")
            seen.add(x)
        out.append((pos[up], pos[down]))
    return out, "explicit", float(sum(m[u][d] for u, d in out))
