"""Report tables (golden text on a hand-written summary) and plots (figure objects, not just files)."""

from __future__ import annotations

import math

import pytest
from matplotlib.lines import Line2D

from editlab.errors import EditlabError
from editlab.eval import plots
from editlab.eval.report import editing_markdown, fmt, table4_markdown, table5_markdown, tidy_csv, tidy_rows

SUMMARY = {"protocol": "paper", "subsets": {
    "fixing_errors": {"n": 1, "pre/s1r1_acc": 0.0, "post/s1r1_acc": 1.0},
    "all": {"n": 4, "pre/s1r1_acc": 0.75, "post/s1r1_acc": 1.0, "pre/s2r2_prob_coh": 0.25, "post/s2r2_prob_coh": 0.3125,
            "pre/logic_or": 0.1, "post/logic_or": 0.05, "post/edit_exact": 0.5, "post/locality_kl": 0.012345,
            "pre/fluency": 5.5, "post/fluency": 5.25, "post/logic_and_ba": float("nan")},
}}

TABLE4 = """\
### Table 4 (protocol `paper`, golds `single`, method `rome`, mode `single`)

| subset | stage | acc s1r1 | acc s1r2 | acc s2r1 | acc s2r2 | coh s1r1 | coh s1r2 | coh s2r1 | coh s2r2 | \
TF | not | and | or |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| All requests (n=4) | pre | 75.0 | – | – | – | – | – | – | 0.250 | – | – | – | 0.100 |
|  | post | 100.0 | – | – | – | – | – | – | 0.312 | – | – | – | 0.050 |
|  | Δ post | +25.0 | – | – | – | – | – | – | +0.062 | – | – | – | -0.050 |
| Fixing errors (n=1) | pre | 0.0 | – | – | – | – | – | – | – | – | – | – | – |
|  | post | 100.0 | – | – | – | – | – | – | – | – | – | – | – |
|  | Δ post | +100.0 | – | – | – | – | – | – | – | – | – | – | – |

acc: generative accuracy (%, higher is better); coh: probabilistic coherence |p_LM - p_gold| and TF/not/and/or: \
logical coherence (LM against itself), lower is better.
"""

EDITING = """\
### Editing metrics (protocol `paper`, golds `single`)

| subset | stage | edit success (exact) | token acc | portability s1r2 | portability TF | locality agree | \
locality agree (answer) | locality acc | locality KL | s2 agree | fluency | consistency |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| All requests (n=4) | pre | – | – | – | – | – | – | – | – | – | 5.50 | – |
|  | post | 50.0 | – | – | – | – | – | – | 0.0123 | – | 5.25 | – |

KL(p_pre || p_post) of the next-token distribution in nats; fluency: ROME's n-gram entropy in bits.
"""

CSV = """\
protocol,subset,stage,metric,value
paper,all,,n,4
paper,all,post,edit_exact,0.5
paper,all,post,fluency,5.25
paper,all,post,locality_kl,0.012345
paper,all,post,logic_and_ba,
paper,all,post,logic_or,0.05
paper,all,post,s1r1_acc,1.0
paper,all,post,s2r2_prob_coh,0.3125
paper,all,pre,fluency,5.5
paper,all,pre,logic_or,0.1
paper,all,pre,s1r1_acc,0.75
paper,all,pre,s2r2_prob_coh,0.25
paper,fixing_errors,,n,1
paper,fixing_errors,post,s1r1_acc,1.0
paper,fixing_errors,pre,s1r1_acc,0.0
"""


def test_table4_golden_text_subsets_in_paper_order():
    assert table4_markdown(SUMMARY, {"method": "rome", "mode": "single"}) == TABLE4


def test_table5_is_the_fixing_errors_block_only():
    text = table5_markdown(SUMMARY)
    assert text.startswith("### Table 5: fixing errors (protocol `paper`, golds `single`)")
    assert "Fixing errors (n=1)" in text and "All requests" not in text
    assert "| Fixing errors (n=1) | pre | 0.0 |" in text and "|  | Δ post | +100.0 |" in text


def test_editing_table_golden_text():
    assert editing_markdown(SUMMARY) == EDITING


def test_tidy_csv_golden_full_precision_and_nan_empty():
    assert tidy_csv(SUMMARY) == CSV
    rows = tidy_rows(SUMMARY)
    assert ("all", "post", "s2r2_prob_coh", 0.3125) in rows and ("fixing_errors", "", "n", 1) in rows


def test_sequential_final_stage_gets_its_own_delta():
    s = {"protocol": "paper", "subsets": {"all": {"n": 2, "pre/s1r1_acc": 0.5, "post/s1r1_acc": 1.0,
                                                  "final/s1r1_acc": 0.25}}}
    lines = table4_markdown(s).splitlines()
    stages = [ln.split("|")[2].strip() for ln in lines if ln.startswith("| All") or ln.startswith("|  |")]
    assert stages == ["pre", "post", "final", "Δ post", "Δ final"]
    assert "|  | Δ final | -25.0 |" in table4_markdown(s)


@pytest.mark.parametrize(("value", "kind", "signed", "text"), [
    (0.93251, "%", False, "93.3"), (0.1234, "coh", False, "0.123"), (-1e-9, "%", True, "+0.0"),
    (-0.0625, "coh", True, "-0.062"), (0.5, "coh", True, "+0.500"), (float("nan"), "%", False, "–"),
    (None, "p", False, "–"), (12.3456, "bits", False, "12.35"),
])
def test_fmt_like_the_paper(value, kind, signed, text):
    assert fmt(value, kind, signed) == text


# ---- plots ---------------------------------------------------------------------------------------------

def _case() -> dict:
    probes = []
    for kind, targets in (("s1r1", ("original", "requested", "new_argmax")), ("s1r2", ("original", "new_argmax")),
                          ("s2r1", ("original", "new_argmax")), ("s2r2", ("original", "new_argmax"))):
        probes += [{"kind": kind, "target": t, "object": f"o-{kind}-{t}", "p_pre": 0.1, "p_post": 0.2}
                   for t in targets]
    probes += [{"kind": k, "label": "true", "p_pre": 0.3, "p_post": 0.4}
               for k in ("tf_A", "not_A", "and_AB", "and_BA", "or_BA", "tf_B")]
    probes.append({"kind": "atomic_A", "object": "oA", "p_pre": 0.5, "p_post": 0.6})
    for i, pr in enumerate(probes):  # distinct gold per probe, so a misaligned index shows
        pr["p_pre"], pr["p_post"] = i / 100, 0.5 + i / 100
    return {"case_id": "eval-000007", "subject": "S", "relation": "r", "requested_object": "o*",
            "request_type": "contradict", "probes": probes}


def _record(case: dict, steps: int = 4) -> dict:
    n = len(case["probes"])
    return {"case_id": case["case_id"], "trace": {"step": list(range(steps)),
                                                  "p": [[(i + 10 * s) / 1000 for i in range(n)] for s in range(steps)],
                                                  "p_false": [[None] * n for _ in range(steps)]}}


def test_edit_panels_plot_the_traced_probe_against_prior_and_posterior(tmp_path):
    case = _case()
    rec = _record(case)
    fig = plots.edit_panels(rec, case)
    assert len(fig.axes) == 8
    want = {"s1r1": 1, "s1r2": 4, "s2r1": 6, "s2r2": 8, "tf_A": 9, "not_A": 10, "and_AB": 11, "or_BA": 13}
    for ax, (kind, _) in zip(fig.axes, plots.PANELS, strict=True):
        lines = [ln for ln in ax.get_children() if isinstance(ln, Line2D) and ln.get_label() in
                 ("LM", "agent prior", "agent posterior")]
        assert len(lines) == 3, kind
        i = want[kind]
        by = {ln.get_label(): ln for ln in lines}
        assert list(by["LM"].get_xdata()) == [0, 1, 2, 3]
        assert list(by["LM"].get_ydata()) == pytest.approx([(i + 10 * s) / 1000 for s in range(4)])
        assert by["agent prior"].get_ydata()[0] == pytest.approx(i / 100)
        assert by["agent posterior"].get_ydata()[0] == pytest.approx(0.5 + i / 100)
    png = plots.save(fig, tmp_path / "fig4.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_edit_panels_use_the_records_gold_post_in_sequential_runs(tmp_path):
    case = _case()
    rec = _record(case)
    rec["gold_post"] = [0.9 - i / 1000 for i in range(len(case["probes"]))]
    fig = plots.edit_panels(rec, case)
    post = next(ln for ln in fig.axes[1].get_lines() if ln.get_label() == "agent posterior")
    assert post.get_ydata()[0] == pytest.approx(0.9 - 4 / 1000)  # s1r2 new_argmax is probe 4
    plots.save(fig, tmp_path / "g.png")


def test_edit_panels_without_trace_is_a_user_error():
    with pytest.raises(EditlabError, match=r"edits\.trace=true"):
        plots.edit_panels({"case_id": "x"}, _case())


def test_sequential_curves_one_panel_per_numeric_key(tmp_path):
    pts = [{"edits": k, "retention": 1 - k / 100, "locality_kl": k / 1000, "gold_logic_err": 0.1, "tag": "a",
            "flag": True} for k in (10, 20, 40)]
    pts[1]["immediate_exact"] = 1.0  # a key present at one point only still gets its panel
    fig = plots.sequential_curves(pts)
    visible = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == ["retention", "locality_kl", "gold_logic_err", "immediate_exact"]
    (line,) = visible[0].get_lines()
    assert list(line.get_xdata()) == [10, 20, 40] and list(line.get_ydata()) == pytest.approx([0.9, 0.8, 0.6])
    assert len(visible[3].get_lines()[0].get_xdata()) == 1
    png = plots.save(fig, tmp_path / "seq.png")
    assert png.stat().st_size > 5_000
    with pytest.raises(EditlabError):
        plots.sequential_curves([])


def test_training_curve_over_millions_of_tokens_with_optional_loss(tmp_path):
    curve = [{"step": 200, "tokens": 1_740_800, "gen_acc": 0.318, "prob_coherence": 0.46},
             {"step": 400, "tokens": 3_481_600, "gen_acc": 0.776, "prob_coherence": 0.23}]
    fig = plots.training_curve(curve)
    assert len([ax for ax in fig.axes if ax.axison]) == 2
    (acc,) = fig.axes[0].get_lines()
    assert list(acc.get_xdata()) == pytest.approx([1.7408, 3.4816]) and list(acc.get_ydata()) == [0.318, 0.776]
    plots.save(fig, tmp_path / "a.png")
    fig = plots.training_curve(curve, loss=[(87_040.0, 7.05), (174_080.0, 5.95)])
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 3 and visible[2].get_title() == "train loss"
    assert not math.isnan(visible[2].get_lines()[0].get_ydata()[1])
    assert plots.save(fig, tmp_path / "b.png").stat().st_size > 5_000
