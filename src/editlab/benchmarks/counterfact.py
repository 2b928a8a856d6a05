"""CounterFact (Meng et al., 2022, ROME): the ``counterfact.json`` that ROME's and MEMIT's
``dsets/counterfact.py`` read.

A file is a JSON array of records::

    {"case_id": 0, "pararel_idx": 2796,
     "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                           "target_new": {"str": "English", "id": "Q1860"},
                           "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
     "paraphrase_prompts": [...], "neighborhood_prompts": [...], "attribute_prompts": [...],
     "generation_prompts": [...]}

The request prompt is a template whose ``{}`` the subject fills. ROME's evaluation
(``experiments/py/eval_utils_counterfact.py``) compares p(target_new) with p(target_true) on the rewrite,
paraphrase and neighborhood prompts (and attribute prompts), and samples from the generation prompts.
"""

from __future__ import annotations

from pathlib import Path

from editlab.benchmarks.records import BenchmarkCase, Probe, RecordReader
from editlab.errors import EditlabError

NAME = "CounterFact"
LISTS = (("paraphrase_prompts", "paraphrase"), ("neighborhood_prompts", "neighborhood"),
         ("attribute_prompts", "attribute"), ("generation_prompts", "generation"))


def _target(r: RecordReader, rewrite: dict, key: str) -> tuple[str, object]:
    value = rewrite.get(key)
    if not isinstance(value, dict):
        r.fail(f"has no object 'requested_rewrite.{key}' (with 'str' and optionally 'id')")
    return r.text("str", value, f"requested_rewrite.{key}."), value.get("id")


def read(records: list, path: Path) -> list[BenchmarkCase]:
    """The cases of a CounterFact file's records."""
    out = []
    for i, rec in enumerate(records):
        r = RecordReader(path, i, rec, NAME)
        rewrite = r.mapping("requested_rewrite")
        if not rewrite:
            r.fail("has no object 'requested_rewrite'")
        template = r.text("prompt", rewrite, "requested_rewrite.")
        if template.count("{}") != 1:
            r.fail(f"requested_rewrite.prompt {template!r} should hold the subject's place as one '{{}}'")
        subject = r.text("subject", rewrite, "requested_rewrite.")
        new, new_id = _target(r, rewrite, "target_new")
        true, true_id = _target(r, rewrite, "target_true")
        extra = {k: v for k, v in (("pararel_idx", rec.get("pararel_idx")), ("target_new_id", new_id),
                                   ("target_true_id", true_id)) if v is not None}
        if "relation_id" in rewrite and not isinstance(rewrite["relation_id"], str):
            r.fail("field 'requested_rewrite.relation_id' should be a string")
        probes = tuple(Probe(kind, p) for key, kind in LISTS for p in r.texts(key))
        out.append(BenchmarkCase(str(rec.get("case_id", i)), subject, template.replace("{}", subject), new, (true,),
                                 rewrite.get("relation_id", ""), probes, extra))
    return out


def write(cases: list[BenchmarkCase]) -> list[dict]:
    """CounterFact records of ``cases`` (probes of other kinds, or with answers of their own, are refused)."""
    out = []
    for c in cases:
        kinds = dict((kind, key) for key, kind in LISTS)
        bad = [p.kind for p in c.probes if p.kind not in kinds or p.answers]
        if bad or len(c.target_true) != 1 or c.subject not in c.prompt:
            raise EditlabError(f"case {c.case_id} cannot be written as {NAME}: it needs one true target, the subject "
                               f"in its prompt and probes of kinds {sorted(kinds)} without answers (found {bad})")
        rewrite = {"prompt": c.prompt.replace(c.subject, "{}", 1), "relation_id": c.relation_id,
                   "target_new": {"str": c.target_new}, "target_true": {"str": c.target_true[0]},
                   "subject": c.subject}
        for key in ("target_new", "target_true"):
            if f"{key}_id" in c.extra:
                rewrite[key]["id"] = c.extra[f"{key}_id"]
        rec = {"case_id": int(c.case_id) if c.case_id.isdigit() else c.case_id}
        if "pararel_idx" in c.extra:
            rec["pararel_idx"] = c.extra["pararel_idx"]
        rec["requested_rewrite"] = rewrite
        rec.update({key: [p.prompt for p in c.of_kind(kind)] for key, kind in LISTS})
        out.append(rec)
    return out
