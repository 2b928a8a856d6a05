"""The benchmarks' own metrics (CounterFact ES/PS/NS and magnitudes, token accuracy and locality agreement) against
independent per-pair computations on a small trained model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from editlab.benchmarks import BenchmarkCase, Probe
from editlab.eval.benchmark_scores import (
    counterfact_metrics,
    summarize_counterfact,
    summarize_tokens,
    teacher_forced,
    token_metrics,
    token_scores,
)


def _direct(model, tok, prompt: str, target: str) -> tuple[list[float], list[int]]:
    """Per-token log p and argmax of ``target`` after ``prompt``: one unpadded forward of the whole sequence."""
    p = tok(prompt)["input_ids"]
    t = tok(" " + target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lsm = torch.log_softmax(model(torch.tensor([p + t])).logits[0].double(), -1)
    rows = range(len(p) - 1, len(p) - 1 + len(t))
    return [lsm[r, x].item() for r, x in zip(rows, t, strict=True)], [int(lsm[r].argmax()) for r in rows]


def _cases(lm, n: int = 6) -> list[BenchmarkCase]:
    out = []
    for i, c in enumerate(lm.world.cases[:n]):
        s2 = next(p for p in c["probes"] if p["kind"] == "s2r1")
        s1r2 = next(p for p in c["probes"] if p["kind"] == "s1r2" and p["target"] == "original")
        out.append(BenchmarkCase(str(i), c["subject"], f"{c['subject']} {c['relation']}", c["requested_object"],
                                 (c["o_true"],), probes=(
                                     Probe("paraphrase", f"{c['subject']} {c['relation']}"),
                                     Probe("neighborhood", s2["prompt"]),
                                     Probe("portability/reasoning", s1r2["prompt"], (s1r2["object"],)),
                                     Probe("locality/relation_specificity", s2["prompt"], (s2["object"],)))))
    return out


def test_teacher_forced_matches_one_forward_per_pair(tiny_lm):
    model, tok = tiny_lm.model, tiny_lm.tok
    pairs = [(c.prompt, t) for c in _cases(tiny_lm) for t in (c.target_new, c.target_true[0])]
    got = teacher_forced(model, tok, pairs, batch_size=3)  # several padded batches
    assert any(len(f.target) > 1 for f in got.values())  # multi-token targets are in the test
    for (p, t), f in got.items():
        logp, argmax = _direct(model, tok, p, t)
        assert max(abs(a - b) for a, b in zip(f.logp, logp, strict=True)) < 1e-4 and list(f.argmax) == argmax


def test_counterfact_metrics_follow_rome(tiny_lm):
    model, tok = tiny_lm.model, tiny_lm.tok
    cases = _cases(tiny_lm)
    rows = counterfact_metrics(model, tok, cases)

    def nll(p, t):
        return -sum(_direct(model, tok, p, t)[0]) / len(_direct(model, tok, p, t)[0])  # mean per token

    for c, row in zip(cases, rows, strict=True):
        n_new, n_true = nll(c.prompt, c.target_new), nll(c.prompt, c.target_true[0])
        assert row["rewrite_success"] == float(n_true > n_new)
        assert row["rewrite_diff"] == pytest.approx(math.exp(-n_new) - math.exp(-n_true), abs=1e-5)
        nb = c.of_kind("neighborhood")[0].prompt
        m_new, m_true = nll(nb, c.target_new), nll(nb, c.target_true[0])
        assert row["neighborhood_success"] == float(m_true < m_new)
        assert row["neighborhood_diff"] == pytest.approx(math.exp(-m_true) - math.exp(-m_new), abs=1e-5)
    summary = summarize_counterfact([{"rewrite_success": 1.0, "paraphrase_success": 0.5, "neighborhood_success": 0.5,
                                      "rewrite_diff": 0.2, "paraphrase_diff": None, "neighborhood_diff": 0.1}])
    assert summary["score"] == pytest.approx(3 / (1 + 2 + 2)) and summary["score_reference_code"] == 0.5
    no_truth = counterfact_metrics(model, tok, [BenchmarkCase("0", "s", cases[0].prompt, "x")])
    assert no_truth[0]["rewrite_success"] is None


def test_token_metrics_accuracy_and_locality_agreement(tiny_lm):
    model, tok = tiny_lm.model, tiny_lm.tok
    cases = _cases(tiny_lm)
    pre = token_scores(model, tok, cases)
    same = token_metrics(pre, pre)
    assert all(r["locality/relation_specificity agree"] == 1.0 for r in same)
    for c, row in zip(cases, same, strict=True):
        _, argmax = _direct(model, tok, c.prompt, c.target_new)
        target = tok(" " + c.target_new, add_special_tokens=False)["input_ids"]
        assert row["edit_succ"] == pytest.approx(sum(a == b for a, b in zip(argmax, target)) / len(target))
        assert row["portability"] == row["portability/reasoning"]
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn_like(other.lm_head.weight, generator=torch.Generator().manual_seed(0)))
    post = token_scores(other, tok, cases)
    moved = token_metrics(post, pre)
    assert fmean_key(moved, "locality/relation_specificity agree") < 1.0
    summary = summarize_tokens(moved)
    assert set(summary) == {"edit_succ", "rephrase", "portability/reasoning", "portability",
                            "locality/relation_specificity acc", "locality/relation_specificity agree"}


def fmean_key(rows, key):
    return sum(r[key] for r in rows) / len(rows)
