"""Each metric on toy tensors against hand-computed values, and DDP-style state reduction."""

from __future__ import annotations

import math

import pytest
import torch

from editlab.eval.locality import LocalityState
from editlab.metrics import (
    AgentCoherence,
    Agreement,
    Consistency,
    EditSuccess,
    Fluency,
    GenerativeAccuracy,
    GroupedMean,
    LabelMass,
    Locality,
    LogicalCoherence,
    Portability,
    ProbabilisticCoherence,
    case_consistency,
    case_fluency,
    logical_gaps,
    next_token_kl,
    ngram_entropy,
    stated_objects,
    words,
)

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731  (float32 inputs)


def values(metric) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute().items()}


def test_grouped_mean_per_group_and_empty_group_is_nan():
    m = GroupedMean(("a", "b", "c"), stage="post")
    m.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 1, 0, 1]))
    m.update(torch.tensor([6.0]), 0)
    out = values(m)
    assert out["post/a"] == approx(10 / 3) and out["post/b"] == approx(3.0)
    assert math.isnan(out["post/c"])


def test_states_reduce_by_sum():
    m = GroupedMean(("a",))
    assert all(m._reductions[s].__name__ == "dim_zero_sum" for s in ("total", "count"))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_merge_state_equals_one_metric_over_all_data():
    """Two ranks' states merged (what DDP's sum reduction does) give the mean over the union, not of means."""
    hits = torch.tensor([True, False, True, True, False, True, False])
    kinds = torch.tensor([0, 0, 1, 3, 3, 0, 2])
    full, r0, r1 = GenerativeAccuracy(), GenerativeAccuracy(), GenerativeAccuracy()
    full.update(hits, kinds)
    r0.update(hits[:2], kinds[:2])
    r1.update(hits[2:], kinds[2:])
    summed = {k: getattr(r0, k) + getattr(r1, k) for k in ("total", "count")}
    r0.merge_state(r1)
    assert values(r0) == values(full)
    manual = GenerativeAccuracy()
    manual.merge_state(summed)
    assert values(manual) == values(full)
    assert values(full)["s1r1_acc"] == approx(2 / 3)  # rank means would give (1/2 + 1/1) / 2 = 3/4


def test_generative_accuracy():
    m = GenerativeAccuracy(stage="pre")
    m.update(torch.tensor([True, False, True, True]), torch.tensor([0, 0, 1, 3]))
    out = values(m)
    assert out["pre/s1r1_acc"] == approx(0.5) and out["pre/s1r2_acc"] == approx(1.0)
    assert math.isnan(out["pre/s2r1_acc"]) and out["pre/s2r2_acc"] == approx(1.0)


def test_probabilistic_and_agent_coherence():
    m = ProbabilisticCoherence()
    m.update(torch.tensor([0.9, 0.2, 0.3]), torch.tensor([0.5, 0.7, 0.3]), torch.tensor([0, 0, 2]))
    out = values(m)
    assert out["s1r1_prob_coh"] == approx(0.45) and out["s2r1_prob_coh"] == approx(0.0)
    a = AgentCoherence(stage="post")
    a.update(torch.tensor([0.6, 0.1, 0.8]), torch.tensor([0.9, 0.2, 0.3]), torch.tensor([0, 0, 6]))
    out = values(a)
    assert out["post/tf_A_gold_err"] == approx(0.2) and out["post/atomic_A_gold_err"] == approx(0.5)
    assert set(out) == {f"post/{k}_gold_err" for k in ("tf_A", "not_A", "and_AB", "and_BA", "or_BA", "tf_B",
                                                        "atomic_A")}


# three items with different operands: (atomic_A, tf_A, not_A, and_AB, and_BA, or_BA, tf_B)
ITEMS = torch.tensor([[0.8, 0.6, 0.3, 0.2, 0.25, 0.9, 0.5],
                      [0.1, 0.2, 0.9, 0.0, 0.1, 0.5, 0.4],
                      [0.5, 0.9, 0.05, 0.9, 0.7, 1.0, 1.0]], dtype=torch.float64)
# per item: tf |atomic - tfA|, not |tfA - (1 - notA)|, and |AB - tfA tfB|, and_ba |BA - tfA tfB|, or |BA_or - (a+b-ab)|
GAPS = torch.tensor([[0.2, 0.1, 0.1, 0.05, 0.1],
                     [0.1, 0.1, 0.08, 0.02, 0.02],
                     [0.4, 0.05, 0.0, 0.2, 0.0]], dtype=torch.float64)


def test_logical_gaps_use_each_items_own_operands():
    assert torch.allclose(logical_gaps(*ITEMS.T), GAPS, atol=1e-12)


def test_logical_coherence_batch():
    m = LogicalCoherence(stage="post")
    m.update(*ITEMS.T)
    out = values(m)
    expect = GAPS.mean(0).tolist()  # tf 0.2333, not 0.0833, and 0.06, and_ba 0.09, or 0.04
    assert [out[f"post/logic_{k}"] for k in ("tf", "not", "and", "and_ba", "or")] == pytest.approx(expect)
    assert out["post/logic_and"] == approx(0.06)  # item 0's operands for all items would give 0.1 + 0.3 + 0.6


def test_label_mass():
    m = LabelMass()
    m.update(torch.tensor([0.6, 0.2]), torch.tensor([0.3, 0.5]))
    assert values(m)["label_mass"] == approx(0.8)


def test_edit_success_and_portability():
    e = EditSuccess(stage="post")
    e.update(torch.tensor([True, False, False, True]), torch.tensor([1.0, 0.5, 0.0, 1.0]))
    assert values(e) == {"post/edit_exact": approx(0.5), "post/edit_token_acc": approx(0.625)}
    p = Portability()
    p.update(torch.tensor([True, False, False]), torch.tensor([0.7, 0.2]), torch.tensor([0.1, 0.6]))
    assert values(p) == {"portability_s1r2": approx(1 / 3), "portability_tf": approx(0.5)}


def test_next_token_kl():
    pre = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]).log()
    post = torch.tensor([[0.25, 0.5, 0.25], [1.0, 0.0, 0.0]]).log()
    kl = next_token_kl(pre, post)
    assert kl.tolist() == pytest.approx([0.5 * math.log(2), 0.0])  # 0 log 0 terms vanish, no NaN
    a, b = torch.randn(4, 7).log_softmax(-1), torch.randn(4, 7).log_softmax(-1)
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=a),
                                            torch.distributions.Categorical(logits=b))
    assert torch.allclose(next_token_kl(a, b), ref.double(), atol=1e-6)


def test_locality_and_agreement():
    m = Locality(stage="post")
    m.update(torch.tensor([True, False]), torch.tensor([True, True]), torch.tensor([0.2, 0.4]),
             torch.tensor([True, True]))
    assert values(m) == {"post/locality_agree": approx(0.5), "post/locality_acc": approx(1.0),
                         "post/locality_kl": approx(0.3), "post/locality_agree_answer": approx(1.0)}


def test_locality_answer_agreement_reads_the_answer_not_the_next_sentence():
    """A continuation that keeps its answer and starts the next sentence differently (what a context prefix does)
    agrees on the answer, not on the whole continuation; a changed answer agrees on neither."""
    base = LocalityState(["Paris. The", "Lyon. He", "Rome"], torch.zeros(3, 4).log_softmax(-1))
    post = LocalityState(["Paris. A", "Nice. He", "Rome"], torch.zeros(3, 4).log_softmax(-1))
    facts = [{"modal": "Paris"}, {"modal": "Lyon"}, {"modal": "Rome"}]
    got = post.compare(base, facts)
    assert got["agree"] == approx(1 / 3) and got["agree_answer"] == approx(2 / 3) and got["acc"] == approx(2 / 3)
    a = Agreement(stage="post")
    a.update(["a", "b", "c"], ["a", "x", "c"])
    assert values(a) == {"post/s2_agree": approx(2 / 3)}


def test_ngram_entropy_matches_rome_formula():
    assert words('"Ab c" is true.') == ['"', "Ab", "c", '"', "is", "true", "."]
    # a b a b: bigrams {ab: 2, ba: 1}, trigrams {aba: 1, bab: 1}
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("a b.") == approx((2 / 3 * 1.0 + 4 / 3 * 0.0) / 2)  # one trigram: entropy 0
    assert ngram_entropy("") == 0.0 and ngram_entropy("a") == 0.0
    m = Fluency(stage="post")
    m.update(["a b a b", "a b."])
    assert values(m)["post/fluency"] == approx(((2 / 3 * h2 + 4 / 3) / 2 + 1 / 3) / 2)


def test_consistency_counts_plain_statements_only():
    text = 'Kovil sport Lultrurball. "Kovil sport X" is true. Kovil sport X. not Kovil sport Y. Kovil sport Lultrurball'
    assert stated_objects(text, "Kovil sport") == ["Lultrurball", "X", "Lultrurball"]
    m = Consistency()
    m.update([[text], ["Other thing here."]], ["Kovil sport", "Kovil sport"], ["Lultrurball", "Lultrurball"])
    assert values(m)["consistency"] == approx(2 / 3)


def test_consistency_is_the_mean_over_cases_of_each_cases_share():
    """One definition: per case, the share over its pooled documents; then the mean over cases that state the
    fact. Pooling all sentences of all cases would give 1/4 here (one hit in four statements), not 1/2."""
    one = ["Kovil sport X."]  # case 1: 1 of 1 statements is o*
    three = ["Abu sport Y. Abu sport Y.", "Abu sport Y."]  # case 2: 0 of 3 (two documents, pooled)
    assert case_consistency(one, "Kovil sport", "X") == 1.0 and case_consistency(three, "Abu sport", "X") == 0.0
    assert math.isnan(case_consistency(["nothing here"], "Kovil sport", "X"))
    m = Consistency(stage="post")
    m.update([one, three, ["nothing here"]], ["Kovil sport", "Abu sport", "Kovil sport"], ["X", "X", "X"])
    assert values(m)["post/consistency"] == approx(0.5)
    assert case_fluency(["a b a b", "a b."]) == approx((ngram_entropy("a b a b") + ngram_entropy("a b.")) / 2)
