"""zsRE question answering edits (Levy et al., 2017; Mitchell et al., 2022, MEND), the ``zsre_mend_eval.json`` /
``zsre_mend_train.json`` that MEND, ROME's ``dsets/zsre.py`` and EasyEdit's ``ZsreDataset`` read.

A file is a JSON array of records::

    {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "Trinity College",
     "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
     "answers": ["Illinois Institute of Technology"],
     "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving",
     "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?"}

Which field is the edit's target differs between the reference loaders: EasyEdit (and KnowEdit's ZsRE) edits
toward ``alt`` with ``answers`` as the truth; ROME/MEMIT's ``MENDQADataset`` edits toward ``answers[0]`` with no
true target. ``target="alt"`` (the default) reads the first, ``target="answers"`` the second.
"""

from __future__ import annotations

from pathlib import Path

from editlab.benchmarks.records import BenchmarkCase, Probe, RecordReader
from editlab.errors import EditlabError

NAME = "zsRE (MEND format)"
TARGETS = ("alt", "answers")


def read(records: list, path: Path, target: str = "alt") -> list[BenchmarkCase]:
    """The cases of a zsRE file's records, edited toward ``alt`` or ``answers[0]`` (``target``)."""
    if target not in TARGETS:
        raise EditlabError(f"zsRE target={target!r}: choose alt (EasyEdit, KnowEdit) or answers (ROME, MEMIT)")
    out = []
    for i, rec in enumerate(records):
        r = RecordReader(path, i, rec, NAME)
        subject, src = r.text("subject"), r.text("src")
        if subject not in src:
            r.fail(f"subject {subject!r} does not occur in its question 'src' {src!r}")
        answers = r.texts("answers", required=True)
        if not answers:
            r.fail("field 'answers' is empty")
        alt = r.text("alt") if target == "alt" else rec.get("alt")
        new, true = (alt, tuple(answers)) if target == "alt" else (answers[0], ())
        extra = {k: rec[k] for k in ("pred", "cond") if k in rec}
        if target == "answers":
            extra.update({"answers": answers, **({"alt": alt} if alt is not None else {})})
        probes = (Probe("paraphrase", r.text("rephrase")), Probe("locality/nq", r.text("loc"), (r.text("loc_ans"),)))
        out.append(BenchmarkCase(str(i), subject, src, new, true, "", probes, extra))
    return out


def write(cases: list[BenchmarkCase], target: str = "alt") -> list[dict]:
    """zsRE records of ``cases``: one paraphrase and one ``locality/nq`` probe each."""
    out = []
    for c in cases:
        para, loc = c.of_kind("paraphrase"), c.of_kind("locality/nq")
        if len(para) != 1 or len(loc) != 1 or len(c.probes) != 2 or len(loc[0].answers) != 1:
            raise EditlabError(f"case {c.case_id} cannot be written as {NAME}: it needs exactly one paraphrase and "
                               "one locality/nq probe with one answer")
        answers = list(c.target_true) if target == "alt" else c.extra.get("answers", [c.target_new])
        rec = {"subject": c.subject, "src": c.prompt}
        if "pred" in c.extra:
            rec["pred"] = c.extra["pred"]
        rec["rephrase"] = para[0].prompt
        alt = c.target_new if target == "alt" else c.extra.get("alt")
        if alt is not None:
            rec["alt"] = alt
        rec.update({"answers": answers, "loc": loc[0].prompt, "loc_ans": loc[0].answers[0]})
        if "cond" in c.extra:
            rec["cond"] = c.extra["cond"]
        out.append(rec)
    return out
