"""The generic triples KG source and the shared construction in ``triples_core``.

The pairing is checked against hand-computed optima and against PuLP/CBC's integer program (the
paper's solver), and determinism is checked across processes with different hash seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from editlab.errors import EditlabError
from editlab.world.kg import KG
from editlab.world.sources import source_config
from editlab.world.sources.triples import Config, load
from editlab.world.sources.triples_core import (
    acceptable_alias,
    assign_names,
    best_pairing,
    name_candidates,
    normalized_cooccurrence,
    perfect_matchings,
    validate_params,
)

TRIPLES = """# head\trel\ttail
alice\tborn_in\tlyon
alice\tcitizen_of\tfrance

bob\tborn_in\tparis
bob\tcitizen_of\tfrance
bob\tborn_in\tlyon
carl\tborn_in\tparis
dora\tborn_in\tnice
dora\tcitizen_of\tfrance
"""


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def named_facts(kg: KG) -> set[tuple[str, str, str]]:
    return {(kg.subjects[s], kg.relations[r], kg.objects[o]) for s, r, o in zip(kg.s, kg.r, kg.o, strict=True)}


# ----------------------------------------------------------------------------- loader


def test_ids_are_names_without_label_files(tmp_path: Path) -> None:
    kg = load(Config(path=write(tmp_path / "kg.tsv", TRIPLES), n_relations=2), seed=0)
    assert named_facts(kg) == {
        ("alice", "born_in", "lyon"),
        ("alice", "citizen_of", "france"),
        ("bob", "born_in", "paris"),  # first listed object
        ("bob", "citizen_of", "france"),
        ("dora", "born_in", "nice"),
        ("dora", "citizen_of", "france"),
    }
    assert kg.meta["source"] == "triples"
    assert kg.meta["counts"]["triples_read"] == 8  # comment and blank line skipped


def test_label_files_name_ids_and_unlabelled_ids_are_dropped(tmp_path: Path) -> None:
    ents = write(
        tmp_path / "ents.tsv",
        "alice\tAlice Ames\nbob\tBob Byrd\tRobert Byrd\nlyon\tLyon\nparis\tParis\nfrance\tFrance\n",
    )
    rels = write(tmp_path / "rels.tsv", "born_in\tplace of birth\ncitizen_of\tcountry of citizenship\n")
    cfg = Config(path=write(tmp_path / "kg.tsv", TRIPLES), entity_labels=ents, relation_labels=rels, n_relations=2)
    kg = load(cfg, seed=0)
    # dora and nice have no label: dora's born_in triple goes, then dora has one relation
    assert named_facts(kg) == {
        ("Alice Ames", "place of birth", "Lyon"),
        ("Alice Ames", "country of citizenship", "France"),
        ("Bob Byrd", "place of birth", "Paris"),
        ("Bob Byrd", "country of citizenship", "France"),
    }


def test_deterministic_across_hash_seeds(tmp_path: Path) -> None:
    lines = [f"s{i % 37}\tr{(i * 7) % 6}\to{(i * 13) % 29}" for i in range(400)]
    path = write(tmp_path / "kg.tsv", "\n".join(lines) + "\n")
    code = (
        "import json, sys\n"
        "from editlab.world.sources.triples import Config, load\n"
        "kg = load(Config(path=sys.argv[1], n_relations=4), seed=0)\n"
        "print(json.dumps([kg.relations, kg.subjects, kg.objects, sorted(kg.upstream.items()),\n"
        "                  kg.s.tolist(), kg.r.tolist(), kg.o.tolist(), kg.meta]))\n"
    )
    outs = []
    for hash_seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        res = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, text=True, check=True)
        outs.append(res.stdout)
    assert outs[0] == outs[1]
    kg = load(Config(path=path, n_relations=4), seed=0)
    assert json.loads(outs[0])[4] == kg.s.tolist()


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(EditlabError, match=r"triples file .*missing.tsv does not exist.*set data.kg.path"):
        load(Config(path=str(tmp_path / "missing.tsv")), seed=0)
    good = write(tmp_path / "kg.tsv", TRIPLES)
    with pytest.raises(EditlabError, match=r"entity label file .* set data.kg.entity_labels"):
        load(Config(path=good, entity_labels=str(tmp_path / "nope.tsv")), seed=0)
    bad = write(tmp_path / "bad.tsv", TRIPLES + "erin born_in rome\n")
    with pytest.raises(EditlabError) as err:
        load(Config(path=bad, n_relations=2), seed=0)
    assert str(err.value) == f"malformed triple line in {bad} line 11: expected 3 tab-separated fields, got 1"
    assert "\n" not in str(err.value)
    with pytest.raises(EditlabError, match="n_relations must be even"):
        Config(path=good, n_relations=5)
    with pytest.raises(EditlabError, match="no subject has >= 2"):
        load(Config(path=write(tmp_path / "one.tsv", "a\tr1\tx\nb\tr2\ty\n"), n_relations=2), seed=0)
    cfg = source_config("triples", {"path": good, "n_relations": 2})
    assert isinstance(cfg, Config) and load(cfg, seed=0).n_facts == 6


# ----------------------------------------------------------------------------- pairing


def test_perfect_matchings_are_all_enumerated_in_order() -> None:
    assert [len(list(perfect_matchings(n))) for n in (2, 4, 6, 10)] == [1, 3, 15, 945]
    assert list(perfect_matchings(4)) == [[(0, 1), (2, 3)], [(0, 2), (1, 3)], [(0, 3), (1, 2)]]
    all10 = [tuple(m) for m in perfect_matchings(10)]
    assert len(set(all10)) == 945 and all10 == sorted(all10)


def test_pairing_hand_example_beats_greedy() -> None:
    # greedy takes 0-1 (0.9) and is left with 2-3 (0.1) = 1.0; the optimum is 0->2, 1->3 = 1.2
    f = Fraction
    m = [
        [f(0), f(9, 10), f(6, 10), f(0)],
        [f(1, 10), f(0), f(0), f(6, 10)],
        [f(5, 10), f(0), f(0), f(1, 10)],
        [f(0), f(5, 10), f(5, 100), f(0)],
    ]
    assert best_pairing(m) == ([(0, 2), (1, 3)], f(12, 10))


def test_pairing_six_relations_orientation_and_ties() -> None:
    w = np.zeros((6, 6))
    for (u, d), v in {(0, 1): 5, (2, 3): 5, (4, 5): 1, (1, 2): 4, (3, 4): 4, (5, 0): 4}.items():
        w[u, d], w[d, u] = v, v / 2
    # {01, 23, 45} = 11 < {05, 12, 34} = 12; pair {0, 5} is oriented 5 -> 0
    pairs, value = best_pairing(w.tolist())
    assert pairs == [(5, 0), (1, 2), (3, 4)] and value == 12
    # all matchings tie: the first in enumeration order, lower index upstream
    assert best_pairing(np.ones((6, 6)).tolist()) == ([(0, 1), (2, 3), (4, 5)], 3.0)


def test_normalized_cooccurrence_is_exact() -> None:
    c = np.array([[7, 1, 3], [2, 0, 0], [0, 0, 9]])
    assert normalized_cooccurrence(c) == [[0, Fraction(1, 4), Fraction(3, 4)], [1, 0, 0], [0, 0, 0]]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # PuLP 3.x warns about its 4.0 API
def test_pairing_matches_pulp_optimum() -> None:
    pulp = pytest.importorskip("pulp")
    if "PULP_CBC_CMD" not in pulp.listSolvers(onlyAvailable=True):
        pytest.skip("PuLP's CBC solver is not available")
    rng = np.random.default_rng(0)
    n = 10
    for trial in range(20):
        c = rng.integers(0, 50, size=(n, n))
        m = np.array(normalized_cooccurrence(c), dtype=float)
        pairs, value = best_pairing(m.tolist())
        assert sorted(x for p in pairs for x in p) == list(range(n))
        assert value == pytest.approx(sum(m[u, d] for u, d in pairs))

        prob = pulp.LpProblem(f"pairing_{trial}", pulp.LpMaximize)
        arcs = [(u, d) for u in range(n) for d in range(n) if u != d]
        x = pulp.LpVariable.dicts("x", arcs, cat="Binary")
        prob += pulp.lpSum(float(m[u, d]) * x[u, d] for u, d in arcs)
        for i in range(n):
            prob += (
                pulp.lpSum(x[i, d] for d in range(n) if d != i) + pulp.lpSum(x[u, i] for u in range(n) if u != i) == 1
            )
        prob.solve(pulp.PULP_CBC_CMD(msg=False))
        assert pulp.LpStatus[prob.status] == "Optimal"
        assert value == pytest.approx(pulp.value(prob.objective), abs=1e-7)


def test_too_many_relations_for_enumeration_need_pairs() -> None:
    with pytest.raises(EditlabError, match=r"give data\.kg\.pairs explicitly"):
        validate_params(16, 4, None)
    assert validate_params(16, 4, [["P1", "P2"]]) == (("P1", "P2"),)


# ----------------------------------------------------------------------------- alias rule


def test_acceptable_alias() -> None:
    assert acceptable_alias("Zurich") and acceptable_alias("is not Zurich")
    for bad in ("Zürich", '"Weird" Al', "1984", "is", "Not And", "", "東京"):
        assert not acceptable_alias(bad), bad


def test_name_candidates_truncate_and_fall_back() -> None:
    assert name_candidates(["Zürich", "Zurich", "  Zurich "]) == ["Zurich"]
    assert name_candidates(["United Kingdom of Great Britain", "UK"], max_words=4) == ["United Kingdom of Great", "UK"]
    assert name_candidates(["東京", "1234"]) == ["東京"]  # nothing acceptable: the first alias


def test_assign_names_resolves_collisions_in_id_order() -> None:
    aliases = {"Q2": ["Paris", "Paname"], "Q10": ["Paris"], "Q3": ["Paris"], "Q4": ["Paname", "Paris"]}
    # sorted ids: Q10 < Q2 < Q3 < Q4
    assert assign_names(["Q4", "Q3", "Q2", "Q10"], aliases) == {
        "Q10": "Paris",
        "Q2": "Paname",
        "Q3": "Paris (Q3)",
        "Q4": "Paname (Q4)",
    }
