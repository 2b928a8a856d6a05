"""Meta-training examples (editing/meta_data.py) and their data module (editing/trainable.py)."""

from __future__ import annotations

import pytest

from editlab.editing.base import EditRequest
from editlab.editing.loss import target_batch
from editlab.editing.meta_data import MetaDataOptions, Target, meta_examples, with_target
from editlab.editing.trainable import EditorTraining, MetaDataModule
from editlab.errors import EditlabError
from editlab.vocab import TRUE, PromptEncoder, prompt, tf_prompt


def _modal(world) -> dict[str, str]:
    """prompt "s r" -> the modal object of every fact of the world (facts.jsonl)."""
    import json

    facts = [json.loads(x) for x in (world.dir / "facts.jsonl").read_text().splitlines()]
    return {prompt(f["subject"], f["relation"]): f["modal"] for f in facts}


def test_examples_hold_the_edit_its_equivalents_and_other_subjects_facts(tiny_world):
    cases = tiny_world.meta_cases[:120]
    examples = meta_examples(cases, MetaDataOptions(n_locality=5), seed=0)
    modal = _modal(tiny_world)
    split_subjects = {c["subject"] for c in cases}
    assert len(examples) == len(cases)
    for case, ex in zip(cases, examples, strict=True):
        s, r, o = case["subject"], case["relation"], case["requested_object"]
        assert ex.request == EditRequest.from_case(case)
        assert ex.equivalents == (Target(prompt(s, r), o), Target(tf_prompt(s, r, o), TRUE))
        assert len(ex.locality) == 5 and len(set(ex.locality)) == 5 and ex.soft == ()
        for fact in ex.locality:
            subj = next(x for x in split_subjects if fact.prompt.startswith(x + " "))
            assert subj != s  # another subject of this split
            assert modal[fact.prompt] == fact.target  # the fact's modal object, what the base model learnt
    # the world's promise the examples rely on: meta subjects are not evaluation subjects
    assert not split_subjects & {c["subject"] for c in tiny_world.cases}


def test_alternatives_are_other_objects_of_the_relation_and_with_target_rebuilds_the_equivalents(tiny_world):
    cases = tiny_world.meta_cases[:120]
    examples = meta_examples(cases, MetaDataOptions(soft_downstream=True), seed=0)
    named: dict[str, set[str]] = {}
    for c in cases:  # every object the split's cases name for a relation (requested, or the fact's own)
        named.setdefault(c["relation"], set()).update(
            [c["requested_object"]] + [p["object"] for p in c["probes"] if p["kind"] == "s1r1"])
    modal = _modal(tiny_world)
    assert any(len(ex.alternatives) >= 3 for ex in examples)
    for case, ex in zip(cases, examples, strict=True):
        s, r = case["subject"], case["relation"]
        assert set(ex.alternatives) <= named[r] and modal[prompt(s, r)] not in ex.alternatives
        assert list(ex.alternatives) == sorted(set(ex.alternatives))
        if not ex.alternatives:
            continue
        o = ex.alternatives[-1]
        swapped = with_target(ex, o)
        assert swapped.request == EditRequest(s, r, o, case["case_id"])
        assert swapped.equivalents == (Target(prompt(s, r), o), Target(tf_prompt(s, r, o), TRUE))
        assert swapped.locality == ex.locality and swapped.soft == () and swapped.alternatives == ex.alternatives


def test_examples_are_seeded(tiny_world):
    cases = tiny_world.meta_cases[:60]
    a = meta_examples(cases, MetaDataOptions(), seed=0)
    assert a == meta_examples(cases, MetaDataOptions(), seed=0)
    assert [x.locality for x in a] != [x.locality for x in meta_examples(cases, MetaDataOptions(), seed=1)]


def test_soft_downstream_targets_are_the_agents_posterior(tiny_world):
    cases = tiny_world.meta_cases
    examples = meta_examples(cases, MetaDataOptions(soft_downstream=True), seed=0)
    _, rel, obj = tiny_world.ids()
    rel_name = {i: n for n, i in rel.items()}
    agent = tiny_world.agent
    n_soft = 0
    for case, ex in zip(cases, examples, strict=True):
        ids = case["ids"]
        s, r1, r2 = ids["subject"], ids["relation"], ids["relation2"]
        moved = agent.upstream.get(r2) == r1  # r2 is downstream of the edited relation
        assert bool(ex.soft) == moved, case["case_id"]
        if not moved:
            continue
        n_soft += 1
        post = agent.edit(s, r1, ids["requested_object"], case["edit_weight"]).answer(s, r2)
        (soft,) = ex.soft
        assert soft.prompt == prompt(case["subject"], rel_name[r2])
        for o, p in zip(soft.objects, soft.probs, strict=True):
            assert p == pytest.approx(float(post[agent.local(r2, obj[o])]), abs=1e-9)
    assert n_soft > 20


def test_data_module_splits_by_subject_and_keeps_locality_inside_each_split(tiny_world):
    cases = tiny_world.meta_cases[:200]
    dm = MetaDataModule(cases, batch_size=8, val_fraction=0.25, seed=0, options=MetaDataOptions(n_locality=3))
    train_subj = {x.subject for x in dm.train_cases}
    val_subj = {x.subject for x in dm.val_cases}
    assert train_subj and val_subj and not train_subj & val_subj
    assert len(dm.train_cases) + len(dm.val_cases) == len(cases)
    for examples, subjects in ((dm.train_cases, train_subj), (dm.val_cases, val_subj)):
        for ex in examples:
            assert all(any(f.prompt.startswith(x + " ") for x in subjects) for f in ex.locality)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 8 and all(hasattr(x, "equivalents") for x in batch)
    again = MetaDataModule(cases, batch_size=8, val_fraction=0.25, seed=0, options=MetaDataOptions(n_locality=3))
    assert [x.request for x in next(iter(again.train_dataloader()))] == [x.request for x in batch]


def test_equivalents_tokenise_like_the_evaluation(tiny_world):
    from transformers import PreTrainedTokenizerFast

    ex = meta_examples(tiny_world.meta_cases[:10], MetaDataOptions(), seed=0)[0]
    enc = PromptEncoder(PreTrainedTokenizerFast.from_pretrained(tiny_world.dir))
    batch = target_batch(enc, ex.equivalents)
    for i, eq in enumerate(ex.equivalents):
        p, o = enc.prompts([("", eq.prompt)])[0], enc.objects([eq.target])[0]
        assert batch.ids[i, : len(p) + len(o)].tolist() == p + o


def test_bad_options_are_one_clear_error(tiny_world):
    with pytest.raises(EditlabError, match="n_locality"):
        EditorTraining(n_locality=0)
    one_subject = [c for c in tiny_world.meta_cases if c["subject"] == tiny_world.meta_cases[0]["subject"]]
    with pytest.raises(EditlabError, match="at least 2 subjects"):
        meta_examples(one_subject, MetaDataOptions(), seed=0)


def test_downstream_fact_and_flag_come_from_the_case(tiny_world):
    """``MetaExample.downstream``: the case's s1r2 fact with the agent's posterior after the edit over the objects
    the case records there; ``downstream_changes``: the case's flag (the agent's argmax moves); a swapped object
    drops both (the agent computed them for the case's own object)."""
    cases = tiny_world.meta_cases[:200]
    examples = meta_examples(cases, MetaDataOptions(), seed=0)
    n_changing = 0
    for case, ex in zip(cases, examples, strict=True):
        probes = [p for p in case["probes"] if p["kind"] == "s1r2"]
        assert ex.downstream.prompt == probes[0]["prompt"]
        assert dict(zip(ex.downstream.objects, ex.downstream.probs, strict=True)) == {
            p["object"]: p["p_post"] for p in probes}
        assert ex.downstream_changes == case["downstream_changes"] and ex.soft == ()
        if ex.downstream_changes:
            n_changing += 1
            new = next(p["object"] for p in probes if p["target"] == "new_argmax")
            assert len(ex.downstream.objects) == 2  # the original modal object and the new argmax differ
            assert ex.downstream.objects[max(range(2), key=ex.downstream.probs.__getitem__)] == new
        if ex.alternatives:
            swapped = with_target(ex, ex.alternatives[0])
            assert swapped.downstream is None and not swapped.downstream_changes
    assert 0 < n_changing < len(cases)


def test_coherence_aware_meta_training_sees_no_evaluation_subject(tiny_world):
    """The soft-downstream examples (the agent's posteriors as targets: coherence-aware meta-training) are built from
    meta-split subjects only: no prompt of a request, equivalent, soft target, downstream fact or locality fact names
    a subject that an evaluation case edits."""
    examples = meta_examples(tiny_world.meta_cases, MetaDataOptions(n_locality=4, soft_downstream=True), seed=0)
    assert sum(bool(ex.soft) for ex in examples) > 50  # downstream facts the edits move are in the data
    meta = {c["subject"] for c in tiny_world.meta_cases}
    edited = {c["subject"] for c in tiny_world.cases}
    for ex in examples:
        prompts = [t.prompt for t in (*ex.equivalents, *ex.locality, *ex.soft)]
        prompts += [ex.downstream.prompt] if ex.downstream is not None else []
        assert ex.subject in meta
        for text in prompts:
            assert not any(s in text for s in edited), (ex.request, text)
