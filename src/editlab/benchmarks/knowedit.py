"""KnowEdit (Zhang et al., 2024), the JSON files of its ZsRE, WikiData_counterfact and WikiData_recent tasks
that EasyEdit's ``KnowEditDataset`` reads (the KnowEdit README in EasyEdit's examples shows each).

A file is a JSON array of records::

    {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
     "ground_truth": ["Bonn"],                                  # a string or a list; absent in WikiData_recent
     "rephrase_prompt": "...",                                  # ZsRE only
     "portability": {"Reasoning": [{"prompt": "...", "ground_truth": [["Kai Wegner", "Kai Peter Wegner"]]}],
                     "Subject_Aliasing": [...], "Logical_Generalization": [...]},
     "locality": {"Relation_Specificity": [{"prompt": "...", "ground_truth": [["Albert Arons"]]}],
                  "Forgetfulness": [...]}}

A ground truth is a string, a list of strings or a list of alias lists; every alias is an acceptable answer.
WikiBio's records (``concept``, ``text``, ``labels``) are read as subject, prompt and target, as EasyEdit does.
Written files use the alias-list form (``[["a", "b"]]``) for every probe.
"""

from __future__ import annotations

from pathlib import Path

from editlab.benchmarks.records import LOCALITY, PORTABILITY, BenchmarkCase, Probe, RecordReader
from editlab.errors import EditlabError

NAME = "KnowEdit"
GROUPS = {"portability": {k: "_".join(w.capitalize() for w in k.split("_")) for k in PORTABILITY},
          "locality": {k: "_".join(w.capitalize() for w in k.split("_")) for k in LOCALITY if k != "nq"}}


def _group(r: RecordReader, group: str) -> list[Probe]:
    out = []
    block = r.mapping(group)
    names = {v: k for k, v in GROUPS[group].items()}
    for key, items in block.items():
        if key not in names:
            r.fail(f"has '{group}.{key}'; KnowEdit's {group} blocks are {', '.join(names)}")
        if not isinstance(items, list):
            r.fail(f"field '{group}.{key}' should be a list of {{prompt, ground_truth}} objects")
        for j, item in enumerate(items):
            where = f"{group}.{key}[{j}]."
            if not isinstance(item, dict):
                r.fail(f"field '{where[:-1]}' should be an object with 'prompt' and 'ground_truth'")
            prompts = item.get("prompt")
            prompts = [prompts] if isinstance(prompts, str) else prompts
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
                r.fail(f"field '{where}prompt' should be a string or a list of strings")
            answers = r.answers(item.get("ground_truth"), f"{where}ground_truth")
            out += [Probe(f"{group}/{names[key]}", p, answers) for p in prompts]
    return out


def read(records: list, path: Path) -> list[BenchmarkCase]:
    """The cases of a KnowEdit file's records."""
    out = []
    for i, rec in enumerate(records):
        r = RecordReader(path, i, rec, NAME)
        bio = "concept" in rec and "subject" not in rec
        subject = r.text("concept" if bio else "subject")
        prompt = r.text("text" if bio else "prompt")
        new = r.text("labels" if bio else "target_new")
        true = () if rec.get("ground_truth") is None else r.answers(rec["ground_truth"], "ground_truth")
        probes = [Probe("paraphrase", r.text("rephrase_prompt"))] if "rephrase_prompt" in rec else []
        probes += _group(r, "portability") + _group(r, "locality")
        out.append(BenchmarkCase(str(i), subject, prompt, new, true, "", tuple(probes)))
    return out


def write(cases: list[BenchmarkCase]) -> list[dict]:
    """KnowEdit records of ``cases`` (at most one paraphrase, as ``rephrase_prompt``; every other probe in its
    portability or locality block, ground truths as alias lists)."""
    out = []
    for c in cases:
        rec: dict = {"subject": c.subject, "prompt": c.prompt, "target_new": c.target_new}
        if c.target_true:
            rec["ground_truth"] = list(c.target_true)
        para = c.of_kind("paraphrase")
        if len(para) > 1:
            raise EditlabError(f"case {c.case_id} cannot be written as {NAME}: it holds {len(para)} paraphrases")
        if para:
            rec["rephrase_prompt"] = para[0].prompt
        blocks: dict[str, dict] = {"portability": {}, "locality": {}}
        for p in c.probes:
            group, _, name = p.kind.partition("/")
            if p.kind == "paraphrase":
                continue
            if group not in GROUPS or name not in GROUPS[group] or not p.answers:
                raise EditlabError(f"case {c.case_id} cannot be written as {NAME}: probe kind {p.kind!r} "
                                   f"(KnowEdit holds paraphrase and answered portability/locality probes)")
            blocks[group].setdefault(GROUPS[group][name], []).append({"prompt": p.prompt,
                                                                       "ground_truth": [list(p.answers)]})
        if blocks["portability"]:
            rec["portability"] = blocks["portability"]
        rec["locality"] = blocks["locality"]  # EasyEdit's KnowEditDataset reads this key on every record
        out.append(rec)
    return out
