"""The propagation report (editlab.eval.propagation): per setup, downstream s1r2 accuracy and coherence before and
after, the request, the other subjects, the facts changed beyond the request, locality; checked by hand on fake
runs, and the figure marks the paper's LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from editlab.eval import compare, plots, propagation


def _run(root: Path, name: str, method: str, preset: str, seed: int, down_post: float, agree: float,
         s1r2_after: list[str]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"method": {"name": method}, "preset": {"name": preset}, "seed": seed, "edits": {"n": 2}}
    (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    allsub = {"pre/s1r1_acc": 0.1, "post/s1r1_acc": 1.0, "post/s1r1_prob_coh": 0.05, "pre/s2r1_acc": 0.8,
              "post/s2r1_acc": 0.7, "pre/s2r2_acc": 0.6, "post/s2r2_acc": 0.6, "post/locality_agree": agree}
    down = {"pre/s1r2_acc": 0.9, "post/s1r2_acc": down_post, "pre/s1r2_prob_coh": 0.3, "post/s1r2_prob_coh": 0.4}
    (d / "metrics.json").write_text(json.dumps({"summary": {"subsets": {"all": allsub, "downstream_changes": down}}}))
    recs = [{"case_id": f"c{i}", "pre": {"gen": {"s1r2": " Paris. Then"}}, "post": {"gen": {"s1r2": after}}}
            for i, after in enumerate(s1r2_after)]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_columns_by_hand_and_means_over_seeds(tmp_path):
    runs = [compare.read_run(_run(tmp_path, "a0", "lora", "paper", 0, 0.1, 0.98, [" Paris.", " Rome."])),
            compare.read_run(_run(tmp_path, "a1", "lora", "paper", 1, 0.3, 0.96, [" Rome", " Rome."])),
            compare.read_run(_run(tmp_path, "b0", "schema_propagate", "tuned", 0, 0.9, 0.9, [" Rome"] * 2))]
    one = propagation.run_values(runs[0], n_facts=102)
    assert one["downstream s1r2 acc pre"] == 0.9 and one["downstream s1r2 acc"] == 0.1
    assert one["s2 acc change"] == pytest.approx(-0.05)  # ((0.7 - 0.8) + (0.6 - 0.6)) / 2
    assert one["s1r2 changed"] == 0.5  # " Paris." and " Paris. Then" give the same answer; " Rome." does not
    assert one["facts changed"] == pytest.approx(0.5 + 0.02 * 100)
    assert propagation.run_values(runs[0], n_facts=None)["facts changed"] is None
    comp = compare.compare(runs)
    rows = propagation.propagation_rows(runs, comp.keys, {r.path: 102 for r in runs})
    lora = next(r for r in rows if r["paper_lora"])
    assert lora["seeds"] == 2 and lora["downstream s1r2 acc"][0] == pytest.approx(0.2)
    assert lora["downstream s1r2 acc"][1] == pytest.approx(12.706 * 0.1, rel=1e-3)  # t(0.975, 1) x stdev / sqrt 2
    assert lora["facts changed"][0] == pytest.approx(((0.5 + 2.0) + (1.0 + 4.0)) / 2)
    other = next(r for r in rows if not r["paper_lora"])
    assert other["seeds"] == 1 and other["downstream s1r2 acc"] == (0.9, None)
    text = propagation.propagation_markdown(rows)
    assert "(paper's LoRA)" in text and "| 20.0 ± 127.1 |" in text and "3.8 ± 15.9" in text
    fig = plots.propagation_scatter(rows)
    assert any("paper's LoRA" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_a_final_locality_of_zero_is_read_as_zero(tmp_path):
    """A sequential run is judged on its final model: final/locality_agree 0.0 is the value, not a missing one."""
    d = _run(tmp_path, "s0", "ice", "tuned", 0, 0.1, 0.9, [" Rome"])
    m = json.loads((d / "metrics.json").read_text())
    m["summary"]["subsets"]["all"].update({"final/locality_agree": 0.0, "final/s1r1_acc": 1.0})
    (d / "metrics.json").write_text(json.dumps(m))
    assert propagation.run_values(compare.read_run(d), n_facts=12)["locality agree"] == 0.0
