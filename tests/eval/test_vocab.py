"""The evaluation vocabulary (editlab.vocab): one rendering of prompts, the subject's token span on the real
tokenizer, hit rules, and the target per stage, checked against the world's own case records."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from editlab import vocab
from editlab.eval import scoring


@pytest.fixture(scope="module")
def tok(tiny_world) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(tiny_world.dir))


def test_prompt_rendering_is_what_the_world_writes_into_its_cases(tiny_world):
    for case in tiny_world.cases[:200]:
        assert vocab.case_prompt(case) == case["probes"][0]["prompt"]  # the s1 r1 probe
        for pr in case["probes"]:
            if pr["kind"] in vocab.ATOMIC or pr["kind"] == vocab.ATOMIC_A:
                assert vocab.has_object(pr)
                if "subject" in pr:
                    assert pr["prompt"] == vocab.prompt(pr["subject"], pr["relation"])
            else:
                assert not vocab.has_object(pr) and pr["kind"] in vocab.LOGICAL
            if pr["kind"] in ("tf_A", "tf_B"):
                assert pr["prompt"] == vocab.tf_prompt(*pr["facts"][0])
        kinds = {pr["kind"] for pr in case["probes"]}
        assert kinds == {*vocab.ATOMIC, *vocab.AGENT_KINDS} and set(vocab.LOGIC_OPERANDS) <= kinds
    case = tiny_world.cases[0]
    assert vocab.request_tf_prompt(case) == f'"{case["subject"]} {case["relation"]} {case["requested_object"]}" is'
    assert vocab.with_prefix("", "a b") == "a b" and vocab.with_prefix("x y.", "a b") == "x y. a b"


def test_subject_span_covers_exactly_the_subject_at_the_start_and_after_a_prefix(tiny_world, tok):
    relation = tiny_world.world["relations"][0]["name"]
    prefix = "Some earlier sentence."
    differ = 0
    for subject in tiny_world.world["subjects"][:300]:
        ids, (a, b) = vocab.subject_span(tok, subject, relation)
        assert ids == vocab.prompt_ids(tok, [vocab.prompt(subject, relation)])[0] and ids[0] == tok.bos_token_id
        assert tok.decode(ids[a:b]) == subject and a == 1
        assert tok.decode(ids[b:]).strip() == relation  # nothing of the relation inside the span
        pids, (pa, pb) = vocab.subject_span(tok, subject, relation, prefix)
        assert pids == vocab.prompt_ids(tok, [vocab.with_prefix(prefix, vocab.prompt(subject, relation))])[0]
        assert tok.decode(pids[pa:pb]).strip() == subject and tok.decode(pids[1:pa]) == prefix
        # the subject's tokens after a prefix (" Kovil") differ from its tokens at the start ("Kovil"):
        # a span computed by tokenising the subject alone would be wrong in one of the two cases
        differ += ids[a:b] != pids[pa:pb]
    assert differ > 0


def test_hit_rules_live_in_the_vocabulary_only():
    assert not hasattr(scoring, "hit_exact") and not hasattr(scoring, "hit_paper")  # one definition, in vocab
    assert vocab.hit_paper("the Paris. area", "paris") and not vocab.hit_exact("Paris area", "Paris")
    assert vocab.hit_exact(' Paris." is', "Paris") and vocab.hit_rule("exact") is vocab.hit_exact
    with pytest.raises(Exception, match="fuzzy"):
        vocab.hit_rule("fuzzy")


def test_target_per_stage():
    assert vocab.targets("pre") == dict.fromkeys(vocab.ATOMIC, "original")
    for stage in ("post", "final"):
        assert vocab.targets(stage) == {"s1r1": "requested", "s1r2": "new_argmax", "s2r1": "new_argmax",
                                        "s2r2": "new_argmax"}
    with pytest.raises(ValueError):
        vocab.target("later", "s1r1")
    probes = [{"kind": "s1r1", "target": t, "p_pre": 0.1 * i, "p_post": 0.5 + 0.1 * i}
              for i, t in enumerate(("original", "requested", "new_argmax"))]
    case = {"probes": probes}
    assert [vocab.target_index(case, "s1r1", s) for s in ("pre", "post")] == [0, 1]
    rec = {"gold_post": [1.0, 2.0, 3.0], "gold_final": [4.0, 5.0, 6.0]}
    assert vocab.stage_gold("pre", rec, probes) == [0.0, 0.1, 0.2]
    assert vocab.stage_gold("post", rec, probes) == [1.0, 2.0, 3.0]
    assert vocab.stage_gold("final", rec, probes) == [4.0, 5.0, 6.0]
    assert vocab.stage_gold("post", {}, probes) == [0.5, 0.6, 0.7]
