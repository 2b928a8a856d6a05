"""Wikidata5m KG source: the real-data world of Hase et al. (2024), Appendix A.1.

Reads, from ``cfg.path``, the files that ``scripts/download_wikidata5m.sh`` unpacks:
``wikidata5m_transductive_train.txt`` (``QID<TAB>PID<TAB>QID`` lines; only the first ``max_lines``
lines are read, as in the paper) and the alias files ``wikidata5m_entity.txt`` /
``wikidata5m_relation.txt`` (``ID<TAB>alias<TAB>...`` lines). As in the paper it drops the
entities Q16521 (taxon) and Q5 (human), whose triples would dominate the co-occurrence, and the
relations P735 (given name) and P131 (located in the administrative territorial entity). The rest
of the construction is :func:`editlab.world.sources.triples_core.build_kg`.

The triple file is read in two streaming passes (first the ids, to read only their aliases from
the multi-million-line alias files, then the triples themselves), so memory scales with
``max_lines``, not with the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from editlab.errors import EditlabError
from editlab.world.kg import KG
from editlab.world.sources.triples import collect_ids, iter_triples, read_aliases
from editlab.world.sources.triples_core import build_kg, validate_params

TRIPLES_FILE = "wikidata5m_transductive_train.txt"
ENTITY_FILE = "wikidata5m_entity.txt"
RELATION_FILE = "wikidata5m_relation.txt"
DROP_ENTITIES = ("Q16521", "Q5")  # taxon, human
DROP_RELATIONS = ("P735", "P131")  # given name, located in the administrative territorial entity
DOWNLOAD_HINT = "fetch and unpack them with: bash scripts/download_wikidata5m.sh DIR"


@dataclass(frozen=True)
class Config:
    """Parameters of the Wikidata5m source (``data.kg.*``).

    ``pairs`` optionally fixes the upstream -> downstream pairs as ``[[up_pid, down_pid], ...]``
    (e.g. the paper's table in world.md); otherwise they come from the exact matching.
    """

    path: str
    max_lines: int = 2_000_000
    n_relations: int = 10
    max_object_words: int = 4
    pairs: list | tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise EditlabError(f"data.kg.path must be the Wikidata5m directory, got {self.path!r}")
        if isinstance(self.max_lines, bool) or not isinstance(self.max_lines, int) or self.max_lines < 1:
            raise EditlabError(f"data.kg.max_lines must be an integer >= 1, got {self.max_lines!r}")
        object.__setattr__(self, "pairs", validate_params(self.n_relations, self.max_object_words, self.pairs))


def data_files(path: str) -> tuple[Path, Path, Path]:
    """The triple, entity and relation files under ``path``, or an error naming the missing one."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise EditlabError(
            f"Wikidata5m directory {root} does not exist; {DOWNLOAD_HINT.replace('DIR', str(root))}, "
            "or set data.kg.path to where they are"
        )
    files = tuple(root / name for name in (TRIPLES_FILE, ENTITY_FILE, RELATION_FILE))
    for f in files:
        if not f.is_file():
            raise EditlabError(
                f"missing Wikidata5m file {f}; {DOWNLOAD_HINT.replace('DIR', str(root))} "
                f"({TRIPLES_FILE}, {ENTITY_FILE}, {RELATION_FILE})"
            )
    return files  # type: ignore[return-value]


def load(cfg: Config, seed: int) -> KG:
    """Read the first ``cfg.max_lines`` triple lines and their aliases, and build the KG."""
    triples_file, entity_file, relation_file = data_files(cfg.path)
    ent_ids, rel_ids = collect_ids(iter_triples(triples_file, cfg.max_lines, skip_comments=False))
    ent_aliases = read_aliases(entity_file, ent_ids)
    rel_aliases = read_aliases(relation_file, rel_ids)
    del ent_ids, rel_ids
    return build_kg(
        iter_triples(triples_file, cfg.max_lines, skip_comments=False),
        ent_aliases,
        rel_aliases,
        drop_entities=DROP_ENTITIES,
        drop_relations=DROP_RELATIONS,
        n_relations=cfg.n_relations,
        max_object_words=cfg.max_object_words,
        pairs=cfg.pairs,
        source="wikidata5m",
    )
