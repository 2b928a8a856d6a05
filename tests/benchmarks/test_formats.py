"""The benchmark readers and writers on small files in the exact public formats (records as ROME's counterfact.json,
MEND's zsre_mend_eval.json and KnowEdit's files hold them), bad records as one line naming file and record, and
the world exported to each format read back unchanged."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from editlab.benchmarks import BenchmarkCase, Probe, read_benchmark, write_benchmark
from editlab.errors import EditlabError
from editlab.world.export import export_world, world_benchmark_cases
from editlab.world.loading import World

ROOT = Path(__file__).resolve().parents[2]

COUNTERFACT = [{
    "case_id": 0, "pararel_idx": 2796,
    "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                          "target_new": {"str": "English", "id": "Q1860"},
                          "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
    "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
                           "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke "
                           "the language"],
    "neighborhood_prompts": ["Léon Blum, a native", "The native language of Montesquieu is"],
    "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is", "Where Danielle Darrieux is from, people speak "
                           "the language of"],
}]

ZSRE = [{
    "subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "Trinity College",
    "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
    "answers": ["Illinois Institute of Technology"],
    "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving",
    "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?",
}]

KNOWEDIT = [
    {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
     "portability": {"Logical_Generalization": [{"prompt": "Is Leo Arons still alive?",
                                                 "ground_truth": [["no"], ["incorrect"], ["false"]]}],
                     "Reasoning": [{"prompt": "The name of the continent which the place of death of Leo Arons is "
                                              "part of is", "ground_truth": [["Europe", "European continent"]]}],
                     "Subject_Aliasing": [{"prompt": "The place of death of Martin Leo Arons is",
                                           "ground_truth": [["Berlin", "Berlin, Germany"]]}]},
     "locality": {"Relation_Specificity": [{"prompt": "The name of the father of Leo Arons is",
                                            "ground_truth": [["Albert Arons"]]}]}},
    {"subject": "Frederic Piesch", "prompt": "The name of the position held by Frederic Piesch is",
     "target_new": "Archbishop of León, Mexico", "ground_truth": "mayor of Vienna",
     "portability": {"Subject_Aliasing": [{"prompt": "The name of the position held by Frederic of Pieschen is",
                                           "ground_truth": "Archbishop of León, Mexico"}]},
     "locality": {"Relation_Specificity": [{"prompt": "The gender of Frederic Piesch is", "ground_truth": "male"}],
                  "Forgetfulness": [{"prompt": "The name of the position held by Frederic Piesch, which is not "
                                               "Archbishop of León, Mexico, is", "ground_truth": "mayor of Vienna"}]}},
    {"subject": "Epaspidoceras", "target_new": "Noctuidae", "prompt": "Which family does Epaspidoceras belong to?",
     "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family are Epaspidoceras?",
     "cond": "Geometridae >> Noctuidae || Which family does Epaspidoceras belong to?",
     "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is",
                                            "ground_truth": ["genus"]}]},
     "portability": {"Reasoning": [{"prompt": "What is the common name for the family Epaspidoceras belongs to?",
                                    "ground_truth": "Owlet moths"}]}},
    {"text": "This is a Wikipedia passage about john russell reynolds. Sir John Russell Reynolds was a British "
             "neurologist.", "labels": "He received general education from his father.",
     "concept": "john russell reynolds",
     "locality": {"Relation_Specificity": [{"prompt": "The field of work of john russell reynolds is",
                                            "ground_truth": ["medicine"]}]}},
]


def _file(tmp_path: Path, records, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records, indent=2))
    return path


def test_counterfact_fields_and_exact_round_trip(tmp_path):
    (case,) = read_benchmark("counterfact", _file(tmp_path, COUNTERFACT))
    assert case.prompt == "The mother tongue of Danielle Darrieux is" and case.subject == "Danielle Darrieux"
    assert (case.target_new, case.target_true, case.relation_id) == ("English", ("French",), "P103")
    assert [p.kind for p in case.probes] == ["paraphrase"] * 2 + ["neighborhood"] * 2 + ["attribute"] + \
        ["generation"] * 2
    assert case.of_kind("neighborhood")[0] == Probe("neighborhood", "Léon Blum, a native")
    out = write_benchmark("counterfact", [case], tmp_path / "back.json")
    assert json.loads(out.read_text()) == COUNTERFACT


@pytest.mark.parametrize("target", ["alt", "answers"])
def test_zsre_fields_both_reference_targets_and_exact_round_trip(tmp_path, target):
    (case,) = read_benchmark("zsre", _file(tmp_path, ZSRE), target=target)
    assert case.prompt == ZSRE[0]["src"] and case.subject == "Watts Humphrey"
    if target == "alt":  # EasyEdit / KnowEdit: edit toward alt, answers are the truth
        assert (case.target_new, case.target_true) == ("University of Michigan", ("Illinois Institute of Technology",))
    else:  # ROME / MEMIT's MENDQADataset: edit toward answers[0], no true target
        assert (case.target_new, case.target_true) == ("Illinois Institute of Technology", ())
    assert case.probes == (Probe("paraphrase", ZSRE[0]["rephrase"]),
                           Probe("locality/nq", ZSRE[0]["loc"], ("Hugo Weaving",)))
    out = write_benchmark("zsre", [case], tmp_path / "back.json", target=target)
    assert json.loads(out.read_text()) == ZSRE


def test_knowedit_every_task_shape_and_case_round_trip(tmp_path):
    cases = read_benchmark("knowedit", _file(tmp_path, KNOWEDIT))
    recent, cf, zsre, bio = cases
    assert recent.target_true == () and recent.of_kind("portability/logical_generalization")[0].answers == (
        "no", "incorrect", "false")  # alias lists flattened in order
    assert recent.of_kind("portability/reasoning")[0].answers == ("Europe", "European continent")
    assert recent.of_kind("locality/relation_specificity") == [
        Probe("locality/relation_specificity", "The name of the father of Leo Arons is", ("Albert Arons",))]
    assert cf.target_true == ("mayor of Vienna",) and cf.of_kind("locality/forgetfulness")[0].answers == (
        "mayor of Vienna",)
    assert zsre.of_kind("paraphrase") == [Probe("paraphrase", "What family are Epaspidoceras?")]
    assert zsre.of_kind("portability/reasoning")[0].answers == ("Owlet moths",)
    assert (bio.subject, bio.target_new) == ("john russell reynolds", KNOWEDIT[3]["labels"])
    back = read_benchmark("knowedit", write_benchmark("knowedit", cases, tmp_path / "back.json"))
    assert back == cases


def _broken(records, path_fn):
    bad = copy.deepcopy(records)
    path_fn(bad)
    return bad


@pytest.mark.parametrize(("fmt", "mutate", "message"), [
    ("counterfact", lambda r: r[0]["requested_rewrite"].pop("subject"), "record 0 has no text field "
                                                                       "'requested_rewrite.subject'"),
    ("counterfact", lambda r: r[0]["requested_rewrite"].update(prompt="The mother tongue is"), "one '{}'"),
    ("counterfact", lambda r: r[0].update(neighborhood_prompts="Léon Blum"), "'neighborhood_prompts' should be a list"),
    ("zsre", lambda r: r[0].update(src="What university?"), "does not occur in its question"),
    ("zsre", lambda r: r[0].pop("loc_ans"), "record 0 has no text field 'loc_ans'"),
    ("knowedit", lambda r: r[1]["locality"].update(Neighborhood=[]), "record 1 has 'locality.Neighborhood'"),
    ("knowedit", lambda r: r[0]["portability"]["Reasoning"][0].update(ground_truth=[1]),
     "'portability.Reasoning[0].ground_truth' should be"),
    ("knowedit", lambda r: r.__setitem__(2, ["not", "a", "record"]), "record 2 is a list, not an object"),
])
def test_a_bad_record_is_one_line_naming_file_and_record(tmp_path, fmt, mutate, message):
    records = {"counterfact": COUNTERFACT, "zsre": ZSRE, "knowedit": KNOWEDIT}[fmt]
    path = _file(tmp_path, _broken(records, mutate), f"{fmt}.json")
    with pytest.raises(EditlabError) as err:
        read_benchmark(fmt, path)
    line = str(err.value)
    assert "\n" not in line and str(path) in line and message in line, line


def test_bad_files_and_formats(tmp_path):
    with pytest.raises(EditlabError, match="JSON array of records, not a dict"):
        read_benchmark("zsre", _file(tmp_path, {"data": ZSRE}))
    with pytest.raises(EditlabError, match="unknown benchmark format 'mquake'; choose counterfact, zsre, knowedit"):
        read_benchmark("mquake", tmp_path / "x.json")
    with pytest.raises(EditlabError, match="no zsre benchmark file at"):
        read_benchmark("zsre", tmp_path / "missing.json")
    case = BenchmarkCase("0", "s", "s r", "o", ("t",), probes=(Probe("locality/nq", "q", ("a",)),))
    with pytest.raises(EditlabError, match="cannot be written as CounterFact"):
        write_benchmark("counterfact", [case], tmp_path / "cf.json")
    assert not (tmp_path / "cf.json").exists()  # no half-written file


@pytest.mark.parametrize("fmt", ["counterfact", "zsre", "knowedit"])
def test_world_export_reads_back_as_the_same_cases(tiny_world, tmp_path, fmt):
    world = World.open(tiny_world.dir)
    want = world_benchmark_cases(world, fmt)
    assert len(want) == len(world.cases()) and all(c.probes for c in want)
    got = read_benchmark(fmt, export_world(world, fmt, tmp_path / f"{fmt}.json"))
    assert got == want


def test_world_export_follows_each_format_s_definitions(tiny_world):
    world = World.open(tiny_world.dir)
    modal = {(f["subject"], f["relation"]): f["modal"] for f in world.facts}
    for case, bench in zip(world.cases()[:50], world_benchmark_cases(world, "counterfact")[:50], strict=True):
        rel = case["relation"]
        near = [p.prompt.removesuffix(f" {rel}") for p in bench.of_kind("neighborhood")]
        attr = [p.prompt.removesuffix(f" {rel}") for p in bench.of_kind("attribute")]
        assert case["subject"] not in near + attr and len(near) <= 10
        assert all(modal[(s, rel)] == case["o_true"] for s in near)  # neighbours share the true object
        assert all(modal[(s, rel)] == case["requested_object"] for s in attr)
    for case, bench in zip(world.cases(), world_benchmark_cases(world, "knowedit"), strict=True):
        moved = bool(bench.of_kind("portability/reasoning"))
        assert moved == case["downstream_changes"] and moved != bool(bench.of_kind("locality/relation_specificity"))


def test_export_command(tiny_world, tmp_path, capsys):
    """The command: `export` is a word turned into export=true; format= and out= without it (or it without them)
    are one error naming the command."""
    from hydra import compose, initialize_config_dir

    from editlab.world.__main__ import _export_word, run

    assert _export_word(["export", "format=zsre", "out=x.json"]) == ["export=true", "format=zsre", "out=x.json"]
    cache = tiny_world.dir.parent.parent
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        def cfg(*overrides):
            return compose(config_name="world", overrides=[f"data.cache_dir={cache}", "progress=false", *overrides])

        run(cfg("export=true", "format=zsre", f"out={tmp_path}/z.json"))
        assert "exported the eval cases as zsre" in capsys.readouterr().out
        assert len(json.loads((tmp_path / "z.json").read_text())) == len(World.open(tiny_world.dir).cases())
        with pytest.raises(EditlabError, match="format= and out= belong to the export command"):
            run(cfg("format=zsre"))
        with pytest.raises(EditlabError, match="export needs both format="):
            run(cfg("export=true", "format=zsre"))
