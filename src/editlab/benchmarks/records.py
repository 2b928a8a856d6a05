"""One benchmark case (a request and its probes) and the checks every format's reader shares.

The probe kinds are the benchmarks' own categories, named once here (docs/benchmarks.md):

- ``paraphrase``: the request restated (CounterFact ``paraphrase_prompts``, zsRE ``rephrase``, KnowEdit
  ``rephrase_prompt``); the new target should follow.
- ``neighborhood``: another subject whose answer must not move to the new target (CounterFact
  ``neighborhood_prompts``: scored as p(target_true) > p(target_new)).
- ``attribute``: a subject that truly has the new target (CounterFact ``attribute_prompts``).
- ``generation``: a free-text prompt about the subject (CounterFact ``generation_prompts``).
- ``portability/<name>``: a consequence of the edit with its answers (KnowEdit ``portability``: reasoning,
  subject_aliasing, logical_generalization).
- ``locality/<name>``: a fact the edit must leave alone, with its answers (KnowEdit ``locality``:
  relation_specificity, forgetfulness; zsRE's ``loc`` question is ``locality/nq``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from editlab.errors import EditlabError

PORTABILITY = ("reasoning", "subject_aliasing", "logical_generalization")
LOCALITY = ("relation_specificity", "forgetfulness", "nq")
KINDS = ("paraphrase", "neighborhood", "attribute", "generation", *(f"portability/{k}" for k in PORTABILITY),
         *(f"locality/{k}" for k in LOCALITY))


@dataclass(frozen=True)
class Probe:
    """A prompt of one ``kind`` (:data:`KINDS`) and its acceptable answers (aliases, the first canonical).

    ``answers`` is empty where the format scores the probe against the request's own targets (CounterFact's
    paraphrase, neighborhood and attribute prompts) or against nothing (generation prompts).
    """

    kind: str
    prompt: str
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class BenchmarkCase:
    """One edit request of a benchmark and the probes that judge it.

    Attributes:
        case_id: the record's id in its file (CounterFact ``case_id``, else its position).
        subject: the edited subject, as it appears in ``prompt``.
        prompt: the request prompt with the subject filled in (the model should continue it with ``target_new``).
        target_new: the requested answer.
        target_true: the answer(s) before the edit (aliases, canonical first); empty where the format has none.
        relation_id: the relation's id where the format names one (CounterFact's Wikidata property, e.g. P103).
        probes: the probes, in file order within each kind.
        extra: fields a format carries that editlab does not score (target ids, ``pararel_idx``, zsRE's ``cond``),
            kept so that writing the case back gives the file it came from.
    """

    case_id: str
    subject: str
    prompt: str
    target_new: str
    target_true: tuple[str, ...] = ()
    relation_id: str = ""
    probes: tuple[Probe, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Probe]:
        """The probes of one kind, in order."""
        return [p for p in self.probes if p.kind == kind]


class RecordReader:
    """Field access for one record of one file, every failure one line naming the file, the record and the fix."""

    def __init__(self, path: Path, index: int, record: Any, fmt: str) -> None:
        self.path, self.index, self.fmt = path, index, fmt
        if not isinstance(record, dict):
            self.fail(f"is a {type(record).__name__}, not an object")
        self.record = record

    def fail(self, what: str) -> NoReturn:
        raise EditlabError(f"{self.path}: record {self.index} {what}; is this a {self.fmt} file "
                           f"(docs/benchmarks.md shows the format)? fix or drop the record")

    def text(self, key: str, record: dict | None = None, where: str = "") -> str:
        """A required non-empty string."""
        rec = self.record if record is None else record
        value = rec.get(key)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"has no text field '{where}{key}'" if value is None
                      else f"field '{where}{key}' should be a non-empty string, not {value!r:.60}")
        return value

    def texts(self, key: str, required: bool = False) -> list[str]:
        """A list of strings (an absent key is [] unless ``required``)."""
        value = self.record.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(f"field '{key}' should be a list of strings")
        return value

    def answers(self, value: Any, where: str) -> tuple[str, ...]:
        """KnowEdit's ground truths: a string, a list of strings, or a list of alias lists (flattened in order)."""
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and value:
            flat = [a for v in value for a in (v if isinstance(v, list) else [v])]
            if flat and all(isinstance(a, str) for a in flat):
                return tuple(flat)
        self.fail(f"field '{where}' should be a string, a list of strings or a list of alias lists")

    def mapping(self, key: str) -> dict:
        """An optional object (an absent key is {})."""
        value = self.record.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(f"field '{key}' should be an object")
        return value
