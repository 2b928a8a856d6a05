"""The world's edit cases in the community benchmark formats, so that another toolkit can run on editlab's world.

``python -m editlab.world export format=counterfact|zsre|knowedit out=<file> [split=eval|meta]`` writes one
record per case. Each format gets what it can hold of a case (docs/benchmarks.md has the full mapping):

- CounterFact: the request as a template (``"{} <relation>"``), target_true the fact's modal object; neighborhood
  prompts: up to 10 other subjects whose modal object of the same relation is the true one (CounterFact's own
  definition), attribute prompts: up to 10 subjects whose modal object is the new target, generation prompts: the
  subject's prompts of each of its relations. No paraphrases: the world states each relation one way.
- zsRE: ``alt`` the new target, ``answers`` the true one; ``rephrase`` repeats the question (no paraphrase exists);
  ``loc`` the s2 r1 probe's prompt (behind ``"nq question: "``, which ROME's loader requires), ``loc_ans`` its answer.
- KnowEdit: the s1 r2 probe as portability (Reasoning, the agent's new answer) when the edit changes that answer,
  else as locality (Relation_Specificity, the original answer); the request as a true/false sentence
  (Logical_Generalization, answer "true").

Reading the written file back (:func:`editlab.benchmarks.read_benchmark`) gives the same cases (tested).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from editlab.benchmarks import BenchmarkCase, Probe, write_benchmark
from editlab.errors import EditlabError
from editlab.vocab import TRUE, case_prompt, prompt, request_tf_prompt
from editlab.world.loading import World

N_NEIGHBOURS = 10  # CounterFact's neighbourhood and attribute prompts per case


def _probe_object(case: dict, kind: str, target: str) -> str:
    return next(p["object"] for p in case["probes"] if p["kind"] == kind and p.get("target") == target)


def _probe_prompt(case: dict, kind: str) -> str:
    return next(p["prompt"] for p in case["probes"] if p["kind"] == kind)


def _counterfact(case: dict, holders: dict[tuple[str, str], list[str]], relations: dict[str, list[str]]
                 ) -> list[Probe]:
    s, r = case["subject"], case["relation"]
    near = [x for x in holders[(r, case["o_true"])] if x != s][:N_NEIGHBOURS]
    attr = [x for x in holders[(r, case["requested_object"])] if x != s][:N_NEIGHBOURS]
    return ([Probe("neighborhood", prompt(x, r)) for x in near] + [Probe("attribute", prompt(x, r)) for x in attr]
            + [Probe("generation", prompt(s, rel)) for rel in relations[s]])


def _zsre(case: dict) -> list[Probe]:
    return [Probe("paraphrase", case_prompt(case)),
            Probe("locality/nq", f"nq question: {_probe_prompt(case, 's2r1')}",
                  (_probe_object(case, "s2r1", "original"),))]


def _knowedit(case: dict) -> list[Probe]:
    s1r2 = _probe_prompt(case, "s1r2")
    logical = Probe("portability/logical_generalization", request_tf_prompt(case), (TRUE,))
    if case["downstream_changes"]:  # in the file's order: portability blocks, then locality
        return [Probe("portability/reasoning", s1r2, (_probe_object(case, "s1r2", "new_argmax"),)), logical]
    return [logical, Probe("locality/relation_specificity", s1r2, (_probe_object(case, "s1r2", "original"),))]


def world_benchmark_cases(world: World, fmt: str, split: str = "eval") -> list[BenchmarkCase]:
    """The ``split`` cases of ``world`` as benchmark cases holding what format ``fmt`` can hold."""
    if fmt not in ("counterfact", "zsre", "knowedit"):
        raise EditlabError(f"export format={fmt!r}: choose counterfact, zsre or knowedit")
    holders: dict[tuple[str, str], list[str]] = defaultdict(list)  # (relation, modal object) -> subjects
    relations: dict[str, list[str]] = defaultdict(list)
    if fmt == "counterfact":
        for f in world.facts:
            holders[(f["relation"], f["modal"])].append(f["subject"])
            relations[f["subject"]].append(f["relation"])
    out = []
    for i, case in enumerate(world.cases(split)):
        probes = {"counterfact": lambda c: _counterfact(c, holders, relations), "zsre": _zsre,
                  "knowedit": _knowedit}[fmt](case)
        extra = ({"pred": case["o_true"], "cond": f"{case['o_true']} >> {case['requested_object']} || "
                  f"{case_prompt(case)}"} if fmt == "zsre" else {})
        out.append(BenchmarkCase(str(i), case["subject"], case_prompt(case), case["requested_object"],
                                 (case["o_true"],), case["relation"] if fmt == "counterfact" else "", tuple(probes),
                                 extra))
    return out


def export_world(world: World, fmt: str, out: Path, split: str = "eval") -> Path:
    """Write the ``split`` cases of ``world`` as a ``fmt`` file at ``out``; returns the path."""
    return write_benchmark(fmt, world_benchmark_cases(world, fmt, split), out)
