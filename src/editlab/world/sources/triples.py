"""Generic KG source: a TSV of ``head<TAB>relation<TAB>tail`` lines plus optional label files.

Use it for any KG that is not Wikidata5m. It applies the same Appendix A.1 construction as the
``wikidata5m`` source (:mod:`editlab.world.sources.triples_core`) without the Wikidata-specific
drop lists. Label files hold ``ID<TAB>label[<TAB>alias...]`` lines. Without a label file, every id
of that kind is its own (only) alias; with one, ids it does not list have no alias and their
triples are dropped, as in Wikidata5m.

The streaming readers here (:func:`iter_triples`, :func:`read_aliases`) are shared with the
``wikidata5m`` source: its files use the same two formats.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from editlab.errors import EditlabError
from editlab.world.kg import KG
from editlab.world.sources.triples_core import build_kg, validate_params


def iter_triples(
    path: Path, max_lines: int | None = None, skip_comments: bool = True
) -> Iterator[tuple[str, str, str]]:
    """Yield (head, relation, tail) from the first ``max_lines`` physical lines of a TSV file.

    Blank lines are skipped, and so are lines starting with ``#`` when ``skip_comments``. Fields are
    stripped of surrounding spaces. A line without exactly 3 non-empty tab-separated fields raises
    an :class:`EditlabError` naming the file and the 1-based line number.
    """
    lineno = 0
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                lineno += 1
                if max_lines is not None and lineno > max_lines:
                    return
                line = line.rstrip("\r\n")
                if not line.strip() or (skip_comments and line.startswith("#")):
                    continue
                fields = [x.strip() for x in line.split("\t")]
                if len(fields) != 3:
                    raise EditlabError(
                        f"malformed triple line in {path} line {lineno}: "
                        f"expected 3 tab-separated fields, got {len(fields)}"
                    )
                if not all(fields):
                    raise EditlabError(f"malformed triple line in {path} line {lineno}: empty field")
                yield fields[0], fields[1], fields[2]
    except UnicodeDecodeError as e:
        raise EditlabError(f"{path} line {lineno + 1} is not UTF-8 text; re-encode the file as UTF-8") from e


class AliasTable(Mapping[str, list[str]]):
    """Id -> aliases, stored as one tab-joined string per id and split on lookup.

    Wikidata5m's alias files are large; one string per id instead of a list of strings keeps the
    table several times smaller. Only ids with at least one non-blank alias are present.
    """

    def __init__(self, raw: dict[str, str]) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> list[str]:
        return [a for a in self._raw[key].split("\t") if a.strip()]

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def read_aliases(path: Path, keep: set[str] | frozenset[str] | None = None) -> AliasTable:
    """Read ``ID<TAB>alias[<TAB>alias...]`` lines, streaming, keeping only ids in ``keep`` (all
    when ``None``). The first line of a repeated id wins; lines without a non-blank alias are
    ignored (the id then has no alias)."""
    raw: dict[str, str] = {}
    lineno = 0
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                lineno += 1
                ident, _, rest = line.rstrip("\r\n").partition("\t")
                ident = ident.strip()
                if not ident or ident in raw or (keep is not None and ident not in keep):
                    continue
                if rest.strip():
                    raw[ident] = rest
    except UnicodeDecodeError as e:
        raise EditlabError(f"{path} line {lineno + 1} is not UTF-8 text; re-encode the file as UTF-8") from e
    return AliasTable(raw)


def collect_ids(triples: Iterator[tuple[str, str, str]]) -> tuple[set[str], set[str]]:
    """Entity ids and relation ids of ``triples`` (first pass: which aliases to read)."""
    ents: set[str] = set()
    rels: set[str] = set()
    for h, r, t in triples:
        ents.add(h)
        ents.add(t)
        rels.add(r)
    return ents, rels


def _existing_file(path: str, what: str, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise EditlabError(f"{what} {p} does not exist or is not a file: set {key} to an existing file")
    return p


@dataclass(frozen=True)
class Config:
    """Parameters of the generic triples source (``data.kg.*``).

    ``pairs`` optionally fixes the upstream -> downstream pairs as ``[[up_id, down_id], ...]``
    (source ids); otherwise they come from the exact matching.
    """

    path: str
    entity_labels: str | None = None
    relation_labels: str | None = None
    n_relations: int = 10
    max_object_words: int = 4
    pairs: list | tuple | None = None

    def __post_init__(self) -> None:
        for key in ("path", "entity_labels", "relation_labels"):
            value = getattr(self, key)
            if (key == "path" or value is not None) and (not isinstance(value, str) or not value):
                raise EditlabError(f"data.kg.{key} must be a non-empty path string, got {value!r}")
        object.__setattr__(self, "pairs", validate_params(self.n_relations, self.max_object_words, self.pairs))


def load(cfg: Config, seed: int) -> KG:
    """Read the files (two streaming passes over the triples) and build the KG."""
    path = _existing_file(cfg.path, "triples file", "data.kg.path")
    ent_file = cfg.entity_labels and _existing_file(cfg.entity_labels, "entity label file", "data.kg.entity_labels")
    rel_file = cfg.relation_labels and _existing_file(
        cfg.relation_labels, "relation label file", "data.kg.relation_labels"
    )
    ent_ids, rel_ids = collect_ids(iter_triples(path))
    ent_aliases: Mapping[str, list[str]] = (
        read_aliases(ent_file, ent_ids) if ent_file else {x: [x] for x in sorted(ent_ids)}
    )
    rel_aliases: Mapping[str, list[str]] = (
        read_aliases(rel_file, rel_ids) if rel_file else {x: [x] for x in sorted(rel_ids)}
    )
    del ent_ids, rel_ids
    return build_kg(
        iter_triples(path),
        ent_aliases,
        rel_aliases,
        n_relations=cfg.n_relations,
        max_object_words=cfg.max_object_words,
        pairs=cfg.pairs,
        source="triples",
    )
