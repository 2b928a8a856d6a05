"""Meta-training examples of trainable editors (KE, MEND, MALMEN, SERAC) from the world's ``meta`` split.

methods.md ("Meta-learned editors"): each example holds the edit, what must change with it and what
must not. In this formal language there are no paraphrases, so per meta case (world.md section 6;
its subject belongs to the meta split, disjoint from every evaluation case's subject):

- ``request``: the edit ``s r -> o*`` (:class:`~editlab.editing.base.EditRequest`);
- ``equivalents``: prompts whose answer the edit must set: the request itself (``"s r"`` -> ``o*``) and its
  TF sentence (``'"s r o*" is'`` -> ``true``), both rendered by :mod:`editlab.vocab`;
- ``soft`` (only with ``soft_downstream``): the downstream fact ``s r2`` the edit moves in the agent,
  with the agent's posterior after the edit as soft targets over the objects the case records for it
  (its original modal object and the agent's new argmax); empty when the edit leaves ``s r2`` alone;
- ``downstream`` (always, when the case records it): the case's ``s r2`` fact with the agent's posterior
  after the edit over the same recorded objects, and ``downstream_changes``: the case's flag, true when
  the agent's argmax for ``s r2`` changes with the edit (SERAC's ``scope: agent`` trains it in scope then,
  a hard negative otherwise);
- ``locality``: facts of *other* subjects of the same split (``"s' r'"`` -> its modal object), drawn with
  a seed per example, whose predictions the edit must leave unchanged;
- ``alternatives``: the other objects the split's cases name for the request's relation (requested or
  modal objects, the case's own modal object excluded): counterfactual objects an editor's training may
  swap in (:func:`with_target`) so that it cannot learn a split's few hundred edits by heart.

The facts of a split's subjects are read off its own cases (each case records its subject's
``s r`` and ``s r2`` facts with their modal objects), so the train and validation splits (disjoint
subjects, :func:`~editlab.editing.trainable.split_by_subject`) never share a locality fact, and no
file beyond the cases is needed. Same cases + seed -> the same examples.

Each :class:`Target` has ``prompt`` and ``target`` like an edit request, so
:func:`editlab.editing.loss.target_batch` tokenises equivalents and locality facts exactly as the
evaluation scores them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from editlab.benchmarks import BenchmarkCase
from editlab.editing.base import EditRequest
from editlab.errors import EditlabError
from editlab.vocab import TRUE, tf_prompt


@dataclass(frozen=True)
class Target:
    """A prompt and the object it should be answered with (``target_batch`` takes it like a request)."""

    prompt: str
    target: str


@dataclass(frozen=True)
class SoftTarget:
    """A prompt with a distribution over objects: the agent's posterior after the edit."""

    prompt: str
    objects: tuple[str, ...]
    probs: tuple[float, ...]


@dataclass(frozen=True)
class MetaExample:
    """One meta-training example (see the module docstring)."""

    request: EditRequest
    equivalents: tuple[Target, ...]
    locality: tuple[Target, ...]
    soft: tuple[SoftTarget, ...] = ()
    alternatives: tuple[str, ...] = ()
    downstream: SoftTarget | None = None
    downstream_changes: bool = False

    @property
    def subject(self) -> str:
        return self.request.subject


class MetaBatch:
    """A batch of examples, opaque to Lightning.

    Lightning moves batches to the device by recursing into lists and dataclasses and rebuilding them,
    which a frozen dataclass refuses; the examples are text, the training module tokenises them on its
    device, so the batch is handed over as it is.
    """

    def __init__(self, examples: Sequence[MetaExample]) -> None:
        self.examples = list(examples)

    def __iter__(self) -> Iterator[MetaExample]:
        return iter(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> MetaExample:
        return self.examples[i]


@dataclass(frozen=True)
class MetaDataOptions:
    """How examples are built (``train.yaml``'s ``editor`` node carries these).

    Attributes:
        n_locality: locality facts per example (facts of other subjects of the same split).
        soft_downstream: add the downstream fact with the agent's posterior as soft targets.
    """

    n_locality: int = 4
    soft_downstream: bool = False

    def __post_init__(self) -> None:
        if self.n_locality < 1:
            raise EditlabError("editor.n_locality must be >= 1 (the locality term needs examples)")


def equivalents(request: EditRequest) -> tuple[Target, ...]:
    """The request ``"s r" -> o*`` and its TF sentence ``'"s r o*" is' -> true``."""
    return (Target(request.prompt, request.target),
            Target(tf_prompt(request.subject, request.relation, request.target), TRUE))


def with_target(example: MetaExample, obj: str) -> MetaExample:
    """``example`` with the edit's object replaced by ``obj`` (equivalents rebuilt; no soft targets and no
    downstream fact, which the agent computed for the original object)."""
    request = replace(example.request, target=obj)
    return replace(example, request=request, equivalents=equivalents(request), soft=(), downstream=None,
                   downstream_changes=False)


def subject_facts(case: dict) -> list[tuple[str, Target]]:
    """(subject, fact) of the case's own subject as the case records them: ``s r`` and ``s r2`` with their
    original (modal) objects."""
    out = []
    for p in case["probes"]:
        if p["kind"] in ("s1r1", "s1r2") and p.get("target") == "original":
            out.append((p["subject"], Target(p["prompt"], p["object"])))
    return out


def downstream_fact(case: dict) -> SoftTarget | None:
    """The case's ``s r2`` fact with the agent's posterior after the edit (``p_post``) over the objects the
    case probes there (the original modal object and the new argmax, once each); ``None`` if it has none."""
    probes = [p for p in case["probes"] if p["kind"] == "s1r2"]
    if not probes:
        return None
    seen: dict[str, float] = {}
    for p in probes:
        seen.setdefault(p["object"], float(p["p_post"]))
    return SoftTarget(probes[0]["prompt"], tuple(seen), tuple(seen.values()))


def downstream(case: dict) -> tuple[SoftTarget, ...]:
    """The ``s r2`` fact with the agent's posterior after the edit, if the edit moves it (else empty).

    The case records the posterior (``p_post``) of the objects it probes at ``s r2`` (the original modal
    object and the new argmax); an edit of a relation that is not ``r2``'s upstream leaves every
    ``p_post`` equal to ``p_pre``, and then the fact is no downstream fact of this edit.
    """
    probes = [p for p in case["probes"] if p["kind"] == "s1r2"]
    if not probes or all(abs(p["p_post"] - p["p_pre"]) < 1e-12 for p in probes):
        return ()
    return (downstream_fact(case),)


def meta_examples(cases: Sequence[dict], options: MetaDataOptions, seed: int) -> list[MetaExample]:
    """The examples of ``cases`` (one split), locality facts drawn from the split's other subjects."""
    facts: dict[Target, str] = {}
    for c in cases:
        for subj, fact in subject_facts(c):
            facts.setdefault(fact, subj)
    pool = sorted(facts.items(), key=lambda kv: (kv[1], kv[0].prompt, kv[0].target))
    objects: dict[str, set[str]] = {}
    for c in cases:
        objects.setdefault(c["relation"], set()).update(
            [c["requested_object"]] + [p["object"] for p in c["probes"] if p["kind"] == "s1r1"])
    out = []
    for c in cases:
        others = [f for f, s in pool if s != c["subject"]]
        if not others:
            raise EditlabError("the meta split needs cases of at least 2 subjects per train/val split for "
                               "locality examples; build a world with more meta cases or change editor.val_fraction")
        rng = random.Random(f"{seed}:{c['case_id']}")
        k = min(options.n_locality, len(others))
        request = EditRequest.from_case(c)
        modal = {p["object"] for p in c["probes"] if p["kind"] == "s1r1" and p.get("target") == "original"}
        out.append(MetaExample(request, equivalents(request), tuple(rng.sample(others, k)),
                               downstream(c) if options.soft_downstream else (),
                               tuple(sorted(objects[c["relation"]] - modal)), downstream_fact(c),
                               bool(c.get("downstream_changes", False))))
    return out


def benchmark_examples(cases: Sequence[BenchmarkCase], options: MetaDataOptions, seed: int) -> list[MetaExample]:
    """The examples of a benchmark file's cases (one split), as MEND trains on zsRE (``zsre_mend_train.json``):

    - ``request``: the case's prompt with its subject -> ``target_new``;
    - ``equivalents``: the request and every paraphrase (CounterFact ``paraphrase_prompts``, zsRE ``rephrase``,
      KnowEdit ``rephrase_prompt``) -> ``target_new``;
    - ``locality``: the case's own locality questions with their first answer (zsRE's ``loc`` / ``loc_ans``,
      KnowEdit's locality blocks) and CounterFact's neighbourhood prompts with the true target, topped up to
      ``options.n_locality`` from other subjects' (seeded per case; MEND draws its NQ questions the same way).

    No soft targets, alternatives or downstream facts: a benchmark has no agent.
    """
    own: list[list[Target]] = []
    for c in cases:
        loc = [Target(p.prompt, p.answers[0]) for p in c.probes if p.kind.startswith("locality/") and p.answers]
        if c.target_true:
            loc += [Target(p.prompt, c.target_true[0]) for p in c.of_kind("neighborhood")]
        own.append(loc)
    out = []
    for i, c in enumerate(cases):
        others = [t for j, ts in enumerate(own) for t in ts if cases[j].subject != c.subject]
        rng = random.Random(f"{seed}:{c.case_id}")
        loc = own[i][: options.n_locality]
        if len(loc) < options.n_locality and others:
            loc += rng.sample(others, min(options.n_locality - len(loc), len(others)))
        if not loc:
            raise EditlabError(f"benchmark case {c.case_id} has no locality question and no other subject has one; "
                               "meta-training needs locality examples (zsRE's loc, KnowEdit's locality, "
                               "CounterFact's neighborhood_prompts)")
        request = EditRequest(c.subject, c.relation_id, c.target_new, c.case_id, text=c.prompt)
        equivalents = (Target(c.prompt, c.target_new), *(Target(p.prompt, c.target_new)
                                                         for p in c.of_kind("paraphrase")))
        out.append(MetaExample(request, equivalents, tuple(loc)))
    return out
