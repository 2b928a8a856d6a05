"""summarize() on three hand-written cases whose subset membership and metric values are known."""

from __future__ import annotations

import math

import pytest

from editlab.errors import EditlabError
from editlab.eval.summary import summarize

LOGICAL = ("tf_A", "not_A", "and_AB", "and_BA", "or_BA", "tf_B")
# probe layout of every case (kind, target); objects filled per case
ATOMIC_LAYOUT = [("s1r1", "original"), ("s1r1", "requested"), ("s1r1", "new_argmax"), ("s1r2", "original"),
                 ("s1r2", "new_argmax"), ("s2r1", "original"), ("s2r1", "new_argmax"), ("s2r2", "original"),
                 ("s2r2", "new_argmax")]
N_PROBES = len(ATOMIC_LAYOUT) + len(LOGICAL) + 1


def case(cid: str, downstream: bool, request_type: str, o_true: str, o_star: str) -> dict:
    """A case record (world.md section 6) with gold p_pre = 0.5 and p_post = 0.9 on every probe."""
    objects = {"original": {"s1r1": o_true, "s1r2": "r2old", "s2r1": "s2a", "s2r2": "s2b"},
               "requested": {"s1r1": o_star},
               "new_argmax": {"s1r1": o_star, "s1r2": "r2new", "s2r1": "s2a", "s2r2": "s2b"}}
    probes = [{"kind": k, "target": t, "object": objects[t][k], "prompt": f"{k} prompt", "p_pre": 0.5, "p_post": 0.9}
              for k, t in ATOMIC_LAYOUT]
    label = {"tf_A": "false"} if cid == "B" else {}  # p(label | A) = p_false for B: the "and" metric must ignore it
    probes += [{"kind": k, "prompt": f'"{k}" is', "label": label.get(k, "true"), "p_pre": 0.5, "p_post": 0.9}
               for k in LOGICAL]
    probes.append({"kind": "atomic_A", "prompt": "s1r1 prompt", "object": o_true, "p_pre": 0.5, "p_post": 0.9})
    return {"case_id": cid, "downstream_changes": downstream, "request_type": request_type, "o_true": o_true,
            "requested_object": o_star, "probes": probes}


def scores(gen: dict, s1r1: float, logic: tuple, token_acc: float, req_tf: tuple, p_false_tf_a: float = 0.1) -> dict:
    """CaseScores.to_json(): LM p 0.5 on atomic probes except the s1r1 probes; logical p as given."""
    p = [s1r1 if k == "s1r1" else 0.5 for k, _ in ATOMIC_LAYOUT] + list(logic[:6]) + [logic[6]]
    p_false = [None] * len(ATOMIC_LAYOUT) + [p_false_tf_a] + [0.1] * 5 + [None]
    return {"p": p, "p_false": p_false, "gen": gen, "token_acc": token_acc, "req_tf": list(req_tf)}


def gens(s1r1: str, s1r2: str, s2r1: str, s2r2: str) -> dict:
    return {"s1r1": s1r1, "s1r2": s1r2, "s2r1": s2r1, "s2r2": s2r2}


# logical p per case: tf_A, not_A, and_AB, and_BA, or_BA, tf_B, atomic_A
LOGIC = {"A": (0.6, 0.3, 0.2, 0.25, 0.9, 0.5, 0.8), "B": (0.2, 0.9, 0.0, 0.1, 0.5, 0.4, 0.1),
         "C": (0.9, 0.05, 0.9, 0.7, 1.0, 1.0, 0.5)}
# gaps tf, not, and, and_ba, or: A (.2 .1 .1 .05 .1), B (.1 .1 .08 .02 .02), C (.4 .05 0 .2 0)

CASES = {"A": case("A", True, "downstream_change", "Paris", "Rome"),   # pre hits o_true, misses o*: updating
         "B": case("B", False, "reinforce", "Oslo", "Oslo"),           # pre misses o_true: fixing errors, updating
         "C": case("C", False, "contradict", "Lima", "Quito")}         # pre "Quito is": paper hit, exact miss
RECORDS = [
    {"case_id": "A",
     "pre": scores(gens("Paris.", "r2old", "s2a", "zzz"), 0.7, LOGIC["A"], 0.0, (0.5, 0.5)),
     "post": scores(gens("Rome", "r2new", "s2a", "zzz"), 0.8, LOGIC["A"], 1.0, (0.8, 0.1)),
     "locality": {"agree": 1.0, "acc": 0.5, "kl": 0.2},
     "fluency": {"pre": 2.0, "post": 1.0, "consistency_pre": 0.0, "consistency_post": 1.0}},
    {"case_id": "B",
     "pre": scores(gens("Bergen", "r2old", "s2a", "s2b"), 0.4, LOGIC["B"], 0.0, (0.5, 0.5), p_false_tf_a=0.7),
     "post": scores(gens("Oslo.", "r2old", "other", "s2b"), 0.9, LOGIC["B"], 0.5, (0.3, 0.6), p_false_tf_a=0.7),
     "locality": {"agree": 0.5, "acc": 1.0, "kl": 0.4},
     "fluency": {"pre": 3.0, "post": 2.0, "consistency_pre": float("nan"), "consistency_post": 0.5}},
    {"case_id": "C",
     "pre": scores(gens("Quito is", "nope", "s2a", "s2b"), 0.5, LOGIC["C"], 0.0, (0.5, 0.5)),
     "post": scores(gens("quito", "r2new", "s2a", "s2b"), 0.3, LOGIC["C"], 0.0, (0.5, 0.4)),
     "final": scores(gens("Quito", "r2old", "s2a", "s2b"), 0.3, LOGIC["C"], 0.0, (0.5, 0.4)),
     "gold_post": [0.3] * N_PROBES},
]
approx = lambda x: pytest.approx(x, abs=1e-9)  # noqa: E731


@pytest.fixture(scope="module")
def paper() -> dict:
    return summarize(CASES, RECORDS, "paper")


def test_structure_and_subsets(paper):
    assert paper["protocol"] == "paper" and set(paper["subsets"]) == {"all", "downstream_changes", "fixing_errors",
                                                                      "updating"}
    assert {k: v["n"] for k, v in paper["subsets"].items()} == {"all": 3, "downstream_changes": 1,
                                                                "fixing_errors": 1, "updating": 2}
    exact = summarize(CASES, RECORDS, "exact")["subsets"]
    assert exact["updating"]["n"] == 3 and exact["fixing_errors"]["n"] == 1  # "Quito is" misses under exact
    names = ([f"{k}_{m}" for k in ("s1r1", "s1r2", "s2r1", "s2r2") for m in ("acc", "prob_coh")]
             + ["logic_tf", "logic_not", "logic_and", "logic_and_ba", "logic_or", "label_mass", "edit_exact",
                "edit_token_acc", "portability_s1r2", "portability_tf", "locality_agree", "locality_acc",
                "locality_kl", "s2_agree", "fluency", "consistency"]
             + [f"{k}_gold_err" for k in (*LOGICAL, "atomic_A")])
    assert {f"post/{n}" for n in names} <= set(paper["subsets"]["all"])


def test_generative_accuracy(paper):
    a = paper["subsets"]["all"]
    assert a["pre/s1r1_acc"] == approx(1 / 3)  # only A's "Paris." hits o_true
    assert a["pre/s1r2_acc"] == approx(2 / 3) and a["pre/s2r2_acc"] == approx(2 / 3)
    assert a["post/s1r1_acc"] == approx(1.0)  # "quito" hits "Quito" under the paper protocol
    assert a["post/s1r2_acc"] == approx(2 / 3)  # B stays at r2old instead of the new argmax
    assert summarize(CASES, RECORDS, "exact")["subsets"]["all"]["post/s1r1_acc"] == approx(2 / 3)
    assert paper["subsets"]["updating"]["pre/s1r1_acc"] == approx(0.5)


def test_probabilistic_coherence_uses_gold_post(paper):
    s = paper["subsets"]
    assert s["all"]["pre/s1r1_prob_coh"] == approx(0.1)  # |0.7-.5|, |0.4-.5|, |0.5-.5|
    assert s["updating"]["pre/s1r1_prob_coh"] == approx(0.15)
    assert s["all"]["post/s1r1_prob_coh"] == approx(0.1 / 3)  # |0.8-.9|, |0.9-.9|, C: |0.3 - gold_post 0.3|
    assert s["all"]["post/s1r2_prob_coh"] == approx(1.0 / 3)  # |0.5-.9| twice, |0.5-0.3|


def test_logical_metrics_per_item_and_p_true_only(paper):
    a, d = paper["subsets"]["all"], paper["subsets"]["downstream_changes"]
    for stage in ("pre", "post"):
        assert a[f"{stage}/logic_tf"] == approx(0.7 / 3) and a[f"{stage}/logic_not"] == approx(0.25 / 3)
        assert a[f"{stage}/logic_and"] == approx(0.06)  # B with p(label="false" | A) = 0.7 would give 0.126...
        assert a[f"{stage}/logic_and_ba"] == approx(0.09) and a[f"{stage}/logic_or"] == approx(0.04)
    assert d["post/logic_or"] == approx(0.1) and d["post/logic_and"] == approx(0.1)
    assert a["pre/tf_A_gold_err"] == approx(0.8 / 3)  # |.6-.5|, |.2-.5|, |.9-.5|
    assert a["post/tf_A_gold_err"] == approx(1.6 / 3)  # |.6-.9|, |.2-.9|, |.9-.3|
    assert a["post/atomic_A_gold_err"] == approx(1.1 / 3)
    assert a["post/label_mass"] == approx((9.4 + 2.4) / 18) and d["post/label_mass"] == approx(3.35 / 6)


def test_framework_metrics(paper):
    a, f = paper["subsets"]["all"], paper["subsets"]["fixing_errors"]
    assert a["pre/edit_exact"] == approx(0.0) and a["post/edit_exact"] == approx(2 / 3)  # exact even for "paper"
    assert a["post/edit_token_acc"] == approx(0.5)
    assert a["post/portability_s1r2"] == approx(2 / 3) and a["post/portability_tf"] == approx(2 / 3)
    assert a["post/s2_agree"] == approx(5 / 6)  # B's s2r1 changed
    assert a["post/locality_agree"] == approx(0.75) and a["post/locality_kl"] == approx(0.3)
    assert f["post/locality_acc"] == approx(1.0)
    assert a["pre/fluency"] == approx(2.5) and a["post/fluency"] == approx(1.5)
    assert a["pre/consistency"] == approx(0.0) and a["post/consistency"] == approx(0.75)  # NaN skipped


def test_final_stage_only_where_recorded(paper):
    a, d = paper["subsets"]["all"], paper["subsets"]["downstream_changes"]
    assert a["final/s1r1_acc"] == approx(1.0) and a["final/s1r2_acc"] == approx(0.0)
    assert a["final/s2_agree"] == approx(1.0) and a["final/s1r1_prob_coh"] == approx(0.0)
    assert math.isnan(d["final/s1r1_acc"])  # A has no final scores
    assert "final/locality_agree" not in a and "pre/s2_agree" not in a


def test_errors():
    with pytest.raises(EditlabError, match="protocol"):
        summarize(CASES, RECORDS, "fuzzy")
    with pytest.raises(EditlabError, match="not in the world"):
        summarize({"A": CASES["A"]}, RECORDS)
    bad = [dict(RECORDS[0], pre=dict(RECORDS[0]["pre"], p=[0.5]))]
    with pytest.raises(EditlabError, match="probe scores"):
        summarize(CASES, bad)


def test_final_stage_uses_the_fully_accumulated_agent():
    """A sequential record's final scores are compared with ``gold_final`` (agent holding every edit), not gold_post."""
    recs = [dict(r) for r in RECORDS]
    recs[2] = {**recs[2], "gold_final": [0.7] * N_PROBES}
    a = summarize(CASES, recs, "paper")["subsets"]["all"]
    assert a["final/s1r1_prob_coh"] == approx(0.4)  # |0.3 - 0.7| (with gold_post it was 0)
    assert a["post/s1r1_prob_coh"] == approx(0.1 / 3)  # post still against gold_post


def test_targets_and_downstream_flag_of_the_agent_holding_the_same_edits():
    """A batch/stream record's ``target_<stage>`` is what its atomic probes must produce, and its
    ``downstream_changes`` replaces the case's flag; records without them keep the case's single-edit values."""
    base = summarize(CASES, RECORDS, "exact")
    assert base["gold_agent"] == "single"  # legacy / single records
    assert base["subsets"]["all"]["post/s1r2_acc"] == approx(2 / 3)  # A and C produce r2new; B says r2old
    recs = [dict(r) for r in RECORDS]
    # B's downstream fact is another request of its batch, whose object is r2old: B's continuation is now right
    recs[1] = {**recs[1], "gold_agent": "batch", "target_post": {"s1r2": "r2old"}, "downstream_changes": True}
    out = summarize(CASES, recs, "exact")
    assert out["gold_agent"] == "batch, single"
    a = out["subsets"]["all"]
    assert a["post/s1r2_acc"] == approx(1.0) and a["post/portability_s1r2"] == approx(1.0)
    assert a["pre/s1r2_acc"] == base["subsets"]["all"]["pre/s1r2_acc"]  # pre-edit targets never move
    assert out["subsets"]["downstream_changes"]["n"] == 2  # A (case flag) and B (record flag)
    # C's final stage: without target_final the probe object; with it, the stream's answer
    recs[2] = {**recs[2], "target_final": {"s1r2": "r2old"}}
    assert summarize(CASES, recs, "exact")["subsets"]["all"]["final/s1r2_acc"] == approx(1.0)
