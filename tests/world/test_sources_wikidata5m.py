"""The wikidata5m KG source on small files written in exactly the Wikidata5m formats.

Each test builds a hand-checked miniature so that every Appendix A.1 filter, the relation choice,
the pairing and the alias rule are pinned to numbers computed by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from editlab.errors import EditlabError
from editlab.world.kg import KG
from editlab.world.sources import source_config
from editlab.world.sources.wikidata5m import Config, load


def write_w5m(root: Path, triples: list[str], entities: dict[str, list[str]], relations: dict[str, list[str]]) -> str:
    """Write the three Wikidata5m files; ``triples`` are "H R T" strings (spaces become tabs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wikidata5m_transductive_train.txt").write_text(
        "".join("\t".join(t.split()) + "\n" for t in triples), encoding="utf-8"
    )
    for name, table in (("wikidata5m_entity.txt", entities), ("wikidata5m_relation.txt", relations)):
        text = "".join("\t".join([k, *v]) + "\n" for k, v in table.items())
        (root / name).write_text(text, encoding="utf-8")
    return str(root)


def named_facts(kg: KG) -> set[tuple[str, str, str]]:
    return {(kg.subjects[s], kg.relations[r], kg.objects[o]) for s, r, o in zip(kg.s, kg.r, kg.o, strict=True)}


FILTER_TRIPLES = [
    "Q1 P19 Q10",
    "Q1 P27 Q20",
    "Q1 P19 Q11",  # second object of (Q1, P19): the first listed (Q10) is kept
    "Q2 P19 Q11",
    "Q2 P27 Q20",
    "Q3 P19 Q10",  # Q3 has one relation: dropped
    "Q4 P19 Q5",  # tail is Q5 (human): dropped, so Q4 keeps one relation and goes too
    "Q4 P27 Q20",
    "Q5 P19 Q10",  # head Q5: dropped
    "Q5 P27 Q20",
    "Q6 P19 Q16521",  # taxon: dropped
    "Q6 P27 Q20",
    "Q1 P735 Q30",  # given name: dropped relation (would otherwise co-occur most)
    "Q1 P131 Q31",  # located in admin. territory: dropped relation
    "Q2 P735 Q30",
    "Q2 P131 Q31",
    "Q7 P19 Q99",  # Q99 has no alias line: dropped
    "Q7 P27 Q20",
    "Q8 P999 Q10",  # P999 has no alias: dropped
    "Q8 P19 Q10",
    "Q9 P19 Q10",  # Q9's alias line is blank after the id: no alias
    "Q9 P27 Q20",
    "Q1 P27 Q21",  # second object of (Q1, P27): ignored
]
FILTER_ENTITIES = {
    "Q1": ["Alice Smith"],
    "Q2": ["Bob Jones"],
    "Q3": ["Carl"],
    "Q4": ["Dora"],
    "Q5": ["human"],
    "Q6": ["Eve"],
    "Q7": ["Finn"],
    "Q8": ["Gus"],
    "Q9": [""],
    "Q10": ["Lyon"],
    "Q11": ["Paris"],
    "Q16521": ["taxon"],
    "Q20": ["France"],
    "Q21": ["Spain"],
    "Q30": ["Alice"],
    "Q31": ["Rhone"],
}
FILTER_RELATIONS = {
    "P19": ["place of birth", "birthplace"],
    "P27": ["country of citizenship"],
    "P735": ["given name"],
    "P131": ["located in the administrative territorial entity"],
}


def test_filters_match_appendix_a1(tmp_path: Path) -> None:
    path = write_w5m(tmp_path / "w5m", FILTER_TRIPLES, FILTER_ENTITIES, FILTER_RELATIONS)
    kg = load(Config(path=path, n_relations=2), seed=0)
    assert named_facts(kg) == {
        ("Alice Smith", "place of birth", "Lyon"),
        ("Alice Smith", "country of citizenship", "France"),
        ("Bob Jones", "place of birth", "Paris"),
        ("Bob Jones", "country of citizenship", "France"),
    }
    assert kg.meta["relation_ids"] == ["P19", "P27"]
    assert kg.meta["counts"] == {
        "triples_read": 23,
        "with_aliases": 19,  # minus Q99, P999, 2x Q9
        "after_drops": 11,  # minus Q5 (3), Q16521, P735 (2), P131 (2)
        "relations_available": 2,
        "of_chosen_relations": 11,
        "one_to_one": 9,  # minus Q1's second P19 and second P27 objects
        "facts": 4,  # minus Q3, Q4, Q6, Q7, Q8 (one relation each)
        "subjects": 2,
        "objects": 3,
    }


def test_max_lines_reads_only_the_first_lines(tmp_path: Path) -> None:
    path = write_w5m(tmp_path / "w5m", FILTER_TRIPLES, FILTER_ENTITIES, FILTER_RELATIONS)
    kg = load(Config(path=path, n_relations=2, max_lines=4), seed=0)
    # lines 1-4: Q2 has only P19 there, so only Alice's two facts survive
    assert named_facts(kg) == {
        ("Alice Smith", "place of birth", "Lyon"),
        ("Alice Smith", "country of citizenship", "France"),
    }
    assert kg.meta["counts"]["triples_read"] == 4


# Relation sets per subject: S1 {P1, P2, P3}, S2 {P1, P2}, S3 {P1, P10}, S4 {P3, P9},
# S5-S7 {P9} (P9 is the most frequent relation but co-occurs only once).
# Scores sum_j C[i, j]: P1 = 2+1+1 = 4, P2 = 2+1 = 3, P3 = 1+1+1 = 3, P10 = 1, P9 = 1;
# the tie P10 / P9 goes to "P10" (string order), so the chosen relations are P1, P10, P2, P3.
# Row-normalised M among them: P10->P1 = 1, P1->P10 = 1/4, P3->P2 = 1/2, P2->P3 = 1/3,
# P2->P1 = 2/3, P1->P2 = 1/2, P3->P1 = 1/2, P1->P3 = 1/4.
# Matchings: {P1-P10, P2-P3} = 1 + 1/2 = 1.5 (best); {P1-P2, P10-P3} = 2/3; {P1-P3, P10-P2} = 1/2.
CHOICE_TRIPLES = [
    "S1 P1 O1",
    "S1 P2 O2",
    "S1 P3 O3",
    "S2 P1 O1",
    "S2 P2 O4",
    "S3 P1 O5",
    "S3 P10 O6",
    "S4 P3 O3",
    "S4 P9 O7",
    "S5 P9 O7",
    "S6 P9 O8",
    "S7 P9 O8",
]


def choice_world(tmp_path: Path) -> str:
    ents = {f"S{i}": [f"subject {i}"] for i in range(1, 8)} | {f"O{i}": [f"object {i}"] for i in range(1, 9)}
    rels = {p: [f"rel {p}"] for p in ("P1", "P2", "P3", "P9", "P10")}
    return write_w5m(tmp_path / "choice", CHOICE_TRIPLES, ents, rels)


def test_top_relations_and_pairing_hand_example(tmp_path: Path) -> None:
    kg = load(Config(path=choice_world(tmp_path), n_relations=4), seed=0)
    assert kg.meta["relation_ids"] == ["P1", "P10", "P2", "P3"]
    assert kg.relations == ("rel P1", "rel P10", "rel P2", "rel P3")
    assert kg.meta["pairs"] == [["P10", "P1"], ["P3", "P2"]]
    assert kg.upstream == {0: 1, 2: 3}  # downstream P1 <- upstream P10, P2 <- P3
    assert kg.meta["pairing"] == "exact_matching"
    assert kg.meta["pairing_value"] == pytest.approx(1.5)
    assert kg.subjects == ("subject 1", "subject 2", "subject 3")  # S4 has one chosen relation
    assert kg.n_facts == 7


def test_explicit_pairs_override_and_are_validated(tmp_path: Path) -> None:
    path = choice_world(tmp_path)
    kg = load(Config(path=path, n_relations=4, pairs=[["P1", "P2"], ["P3", "P10"]]), seed=0)
    assert kg.meta["pairs"] == [["P1", "P2"], ["P3", "P10"]]
    assert kg.upstream == {2: 0, 1: 3}
    assert kg.meta["pairing"] == "explicit"
    with pytest.raises(EditlabError, match=r"P9 in data\.kg\.pairs is not among the chosen relations"):
        load(Config(path=path, n_relations=4, pairs=[["P9", "P1"]]), seed=0)
    with pytest.raises(EditlabError, match="more than one pair"):
        load(Config(path=path, n_relations=4, pairs=[["P1", "P2"], ["P2", "P3"]]), seed=0)
    with pytest.raises(EditlabError, match="each pair must be"):
        Config(path=path, pairs=[["P1"]])


def test_alias_rule_skips_collides_and_truncates(tmp_path: Path) -> None:
    triples = [
        "Q1 P1 Q101",
        "Q1 P2 Q201",
        "Q2 P1 Q102",
        "Q2 P2 Q201",
        "Q3 P1 Q101",
        "Q3 P2 Q202",
        "Q10 P1 Q103",
        "Q10 P2 Q203",
    ]
    ents = {
        "Q1": ["Zürich", "Zurich"],  # non-ASCII first alias skipped
        "Q2": ["is", '"Weird" Al', "1984", "Paris", "Paname"],  # template word, quote, no letter skipped
        "Q10": ["Paris", "City of Light"],  # Q10 < Q2 in id order: Q10 keeps "Paris", Q2 takes "Paname"
        "Q3": ["Zurich"],  # collides with Q1 and has nothing else: "Zurich (Q3)"
        "Q101": ["Lake   Geneva  Region"],  # whitespace collapsed
        "Q102": ["1234"],  # nothing acceptable: falls back to the first alias
        "Q103": ["Lake Geneva Region North"],
        "Q201": ["United Kingdom of Great Britain and Northern Ireland"],
        "Q202": ["United Kingdom of Great Britain", "UK"],  # truncated name collides: takes "UK"
        "Q203": ["Ab Cd Ef Gh Ij"],
    }
    rels = {"P1": ["ÆP", "rel one"], "P2": ["rel two"]}
    kg = load(Config(path=write_w5m(tmp_path / "a", triples, ents, rels), n_relations=2), seed=0)
    # subjects are ordered by id string: Q1 < Q10 < Q2 < Q3, which is also the order names are taken
    assert kg.subjects == ("Zurich", "Paris", "Paname", "Zurich (Q3)")
    assert set(kg.objects) == {
        "Lake Geneva Region",
        "1234",
        "Lake Geneva Region North",
        "United Kingdom of Great",
        "UK",
        "Ab Cd Ef Gh",
    }
    assert kg.relations == ("rel one", "rel two")


def test_deterministic(tmp_path: Path) -> None:
    path = write_w5m(tmp_path / "w5m", FILTER_TRIPLES, FILTER_ENTITIES, FILTER_RELATIONS)
    a, b = (load(Config(path=path, n_relations=2), seed=s) for s in (0, 1))
    for name in ("relations", "subjects", "objects", "upstream", "meta"):
        assert getattr(a, name) == getattr(b, name)
    for name in ("s", "r", "o"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_w5m(tmp_path / "data" / "w5m", FILTER_TRIPLES, FILTER_ENTITIES, FILTER_RELATIONS)
    monkeypatch.chdir(tmp_path)
    assert load(Config(path="data/w5m", n_relations=2), seed=0).n_facts == 4
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load(Config(path="~/data/w5m", n_relations=2), seed=0).n_facts == 4


def test_errors_name_the_fix(tmp_path: Path) -> None:
    from editlab.world.sources import source_config

    with pytest.raises(EditlabError) as err:  # the YAML's path: ??? left unset on the command line
        source_config("wikidata5m", {"path": "???"})
    assert str(err.value) == "data.kg.path is required and not set; add data.kg.path=<value> to the command"
    with pytest.raises(EditlabError, match=r"does not exist; fetch and unpack them with: bash scripts/"):
        load(Config(path=str(tmp_path / "nowhere")), seed=0)
    path = write_w5m(tmp_path / "w5m", FILTER_TRIPLES, FILTER_ENTITIES, FILTER_RELATIONS)
    (Path(path) / "wikidata5m_relation.txt").unlink()
    with pytest.raises(EditlabError, match=r"missing Wikidata5m file .*relation\.txt; fetch and unpack them with"):
        load(Config(path=path), seed=0)

    bad = write_w5m(tmp_path / "bad", ["Q1 P19 Q10", "Q1 P27 Q20"], FILTER_ENTITIES, FILTER_RELATIONS)
    with (Path(bad) / "wikidata5m_transductive_train.txt").open("a", encoding="utf-8") as f:
        f.write("Q2\tP19\n")
    msg = f"malformed triple line in {Path(bad) / 'wikidata5m_transductive_train.txt'} line 3: "
    msg += "expected 3 tab-separated fields, got 2"
    with pytest.raises(EditlabError) as err:
        load(Config(path=bad, n_relations=2), seed=0)
    assert str(err.value) == msg
    # a malformed line beyond max_lines is never read
    assert load(Config(path=bad, n_relations=2, max_lines=2), seed=0).n_facts == 2

    with pytest.raises(EditlabError, match="n_relations must be even"):
        Config(path=path, n_relations=3)
    with pytest.raises(EditlabError, match="max_lines must be an integer >= 1"):
        Config(path=path, max_lines=0)
    with pytest.raises(EditlabError, match="max_object_words"):
        Config(path=path, max_object_words=0)
    with pytest.raises(EditlabError, match="only 2 relations remain"):
        load(Config(path=write_w5m(tmp_path / "few", FILTER_TRIPLES, FILTER_ENTITIES, FILTER_RELATIONS)), 0)


def test_registry_builds_the_config(tmp_path: Path) -> None:
    cfg = source_config("wikidata5m", {"path": str(tmp_path), "n_relations": 4, "pairs": [["P1", "P2"]]})
    assert cfg.pairs == (("P1", "P2"),)
    hash(cfg)  # frozen and hashable: pairs are normalised to tuples
