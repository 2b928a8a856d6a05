"""The corpus and the world statistics against the spec (world.md sections 2-3) and the config.

These read the artifacts (corpus.jsonl, facts.jsonl, stats.json) and re-derive everything from the
text, so a writer bug cannot hide behind shared code.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from scipy.stats import binom

from tests.world.parse import SentenceParser


def _facts(world):
    return [json.loads(x) for x in (world.dir / "facts.jsonl").read_text().splitlines()]


def _sentences(world):
    for line in (world.dir / "corpus.jsonl").read_text().splitlines():
        yield from json.loads(line)["text"].split(". ")


def test_documents_shape(tiny_world):
    cfg = tiny_world.cfg.corpus
    docs = [json.loads(x)["text"] for x in (tiny_world.dir / "corpus.jsonl").read_text().splitlines()]
    assert len(docs) == tiny_world.stats["documents"]
    lens = [len(d.split(". ")) for d in docs]
    assert max(lens) <= cfg.doc_sentences
    assert not any(d.endswith(".") for d in docs)
    # every distinct sentence appears exactly `resamples` times
    assert sum(lens) == tiny_world.stats["sentences"] * cfg.resamples


def test_sentence_counts_match_config(tiny_world):
    n = tiny_world.stats["true_atomic_facts"]
    c = tiny_world.cfg.corpus
    by = tiny_world.stats["sentences_by_type"]
    assert by["atomic"] == by["tf"] == c.n_samples * n
    assert by["or"] == c.n_or * n and by["and"] == c.n_and * n
    assert by["not"] == 2 * c.n_not * n  # every fact has a false object in this world
    parser = SentenceParser([r["name"] for r in tiny_world.world["relations"]])
    kinds = Counter(parser.parse(s).kind for s in _sentences(tiny_world))
    k = c.resamples
    assert kinds == {"atomic": k * by["atomic"], "tf": k * by["tf"], "or": k * by["or"], "and": k * by["and"],
                     "not": k * by["not"]}


def test_samples_have_modal_majority_and_expected_share(tiny_world):
    facts = _facts(tiny_world)
    parser = SentenceParser([r["name"] for r in tiny_world.world["relations"]])
    atomic = Counter(parser.parse(s).facts[0] for s in _sentences(tiny_world) if not s.startswith('"'))
    k = tiny_world.cfg.corpus.resamples
    m = tiny_world.cfg.corpus.n_samples
    modal_counts, expected, var = [], 0.0, 0.0
    for f in facts:
        per = {o: atomic[(f["subject"], f["relation"], o)] for o, _ in f["distribution"]}
        assert sum(per.values()) == m * k  # all samples come from the fact's distribution
        x = per[f["modal"]] // k
        assert x >= m // 2 + 1
        modal_counts.append(x)
        # E[X | X >= 6] for X ~ Bin(10, p_modal)
        support = np.arange(m // 2 + 1, m + 1)
        pmf = binom.pmf(support, m, f["p_modal"])
        pmf /= pmf.sum()
        mean = (support * pmf).sum()
        expected += mean
        var += ((support - mean) ** 2 * pmf).sum()
    share = sum(modal_counts) / (m * len(facts))
    assert abs(share - expected / (m * len(facts))) < 4 * np.sqrt(var) / (m * len(facts))
    assert abs(share - tiny_world.stats["modal_sample_share"]) < 1e-12


def test_downstream_share_matches_config(tiny_world):
    facts = _facts(tiny_world)
    share = np.mean([f["upstream_object"] is not None for f in facts])
    assert abs(share - tiny_world.cfg.kg.downstream_share) < 2 / len(facts)


def test_p_true_rule_and_mgtp(tiny_world):
    mgtp = tiny_world.cfg.generative.mgtp
    for f in _facts(tiny_world):
        if f["upstream_object"] is None:
            assert f["p_modal"] * 100 == round(f["p_modal"] * 100)
            assert round(100 * mgtp) <= round(100 * f["p_modal"]) <= 100
            assert f["modal"] == f["kg_object"]
        assert f["p_modal"] >= mgtp - 1e-12
        probs = [p for _, p in f["distribution"]]
        assert abs(sum(probs) - 1) < 1e-12 and max(probs) == f["p_modal"]


def test_logical_labels_are_noise_free_and_tf_noise_follows_p_modal(tiny_world):
    facts = _facts(tiny_world)
    modal = {(f["subject"], f["relation"]): f["modal"] for f in facts}
    p_modal = {(f["subject"], f["relation"]): f["p_modal"] for f in facts}
    parser = SentenceParser([r["name"] for r in tiny_world.world["relations"]])
    tf_true, tf_exp, n_tf = 0, 0.0, 0
    for s in _sentences(tiny_world):
        p = parser.parse(s)
        truth = [modal[(a, r)] == o for a, r, o in p.facts]
        if p.kind == "and":
            assert p.label == (truth[0] and truth[1]), s
        elif p.kind == "or":
            assert p.label == (truth[0] or truth[1]), s
        elif p.kind == "not":
            assert p.label == (not truth[0]), s
        elif p.kind == "tf" and truth[0]:
            n_tf += 1
            tf_true += p.label
            tf_exp += p_modal[p.facts[0][:2]]
    # TF labels of modal samples are true with probability p_modal (5 copies per sentence)
    sd = np.sqrt(n_tf / 5 * 0.25) * 5
    assert abs(tf_true - tf_exp) < 4 * sd


def test_stats_table6_fields(tiny_world):
    s = tiny_world.stats
    for key in ("true_atomic_facts", "atomic_sentences", "tf_sentences", "and_or_not_sentences", "sentences",
                "documents", "tokens", "subjects", "relations", "objects"):
        assert isinstance(s[key], int) and s[key] > 0
    assert s["relations"] == 10
    assert s["sentences"] == s["atomic_sentences"] + s["tf_sentences"] + s["and_or_not_sentences"]
