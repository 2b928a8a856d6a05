"""evaluate.py: the report of an edit run directory, checkpoint scoring (editlab.runs.reports), and the CLI's
one-line errors (evaluate.py in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from editlab.errors import EditlabError
from editlab.eval.report import table4_markdown
from editlab.lm.checkpoint import export_checkpoint, load_checkpoint
from editlab.lm.presets import Arch, build_model
from editlab.runs.reports import CheckpointEval, evaluate_checkpoint, evaluate_run
from editlab.world.loading import World

ROOT = Path(__file__).resolve().parents[2]


def _cfg(world, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[f"data.cache_dir={world.dir.parent}", *overrides])


def _data(world) -> dict:
    return OmegaConf.to_container(_cfg(world, []).data, resolve=True)


def _cli(world, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate.py", f"data.cache_dir={world.dir.parent}", *overrides],
                          cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True,
                          timeout=120)


def _scores(case: dict, stage: str) -> dict:
    """Scores of a perfectly coherent LM: p equals the agent's gold, greedy output the scored object."""
    want = {"pre": "original", "post": "new_argmax"}[stage]
    gen = {pr["kind"]: pr["object"] for pr in case["probes"] if pr.get("target") == want}
    if stage == "post":
        gen["s1r1"] = case["requested_object"]
    p = [pr[f"p_{stage}"] for pr in case["probes"]]
    p_false = [None if "object" in pr else 1 - x for pr, x in zip(case["probes"], p, strict=True)]
    return {"p": p, "p_false": p_false, "gen": gen, "token_acc": 1.0, "req_tf": [0.9, 0.1]}


def _run_dir(world, path: Path, n: int = 3, traced: int = 2, summary: dict | None = None,
             curve: bool = False) -> Path:
    """An edit run directory as edit.py writes it (records.py), from the world's first ``n`` cases."""
    path.mkdir(parents=True)
    recs = []
    for i, case in enumerate(world.cases[:n]):
        r = {"case_id": case["case_id"], "index": i, "method": "toy", "mode": "single", "batch": i,
             "pre": _scores(case, "pre"), "post": _scores(case, "post")}
        if i < traced:
            p0, p1 = r["pre"]["p"], r["post"]["p"]
            r["trace"] = {"step": [0, 1, 2], "p": [p0, [(a + b) / 2 for a, b in zip(p0, p1, strict=True)], p1],
                          "p_false": [r["pre"]["p_false"]] * 3}
        recs.append(r)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    # the world the run edited
    (path / "run_config.yaml").write_text(yaml.safe_dump({"data": _data(world), "method": {"name": "toy"}}))
    if summary is not None:
        (path / "metrics.json").write_text(json.dumps({"method": "toy", "mode": "single", "n": n,
                                                       "summary": summary}))
    if curve:
        pts = [{"edits": k, "retention": 1 - k / 10, "locality_kl": k / 100} for k in (1, 2, 3)]
        (path / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pts))
    return path


def test_run_report_recomputes_the_summary_and_draws_traced_records(tiny_world, tmp_path):
    run = _run_dir(tiny_world, tmp_path / "run", n=3, traced=2, curve=True)
    rep = run / "report"
    out = evaluate_run(run, rep, {"name": "not the run's world"}, max_panels=8)  # run_config.yaml's world wins
    assert out["report"] == str(rep) and out["n"] == 3 and out["panels"] == 2
    assert sorted(p.name for p in rep.iterdir()) == sorted(
        ["COMPLETE", "table4.md", "table4.csv", "editing.md", "sequential.png",
         *(f"fig4_{c['case_id']}.png" for c in tiny_world.cases[:2])])
    # a perfectly coherent toy LM: 100 % accuracy and zero probabilistic coherence error, pre and post
    assert out["all/pre/s1r1_acc"] == 1.0 and out["all/post/s2r2_acc"] == 1.0
    assert out["all/pre/s1r2_prob_coh"] == pytest.approx(0.0) and out["all/post/s1r1_prob_coh"] == pytest.approx(0.0)
    table = (rep / "table4.md").read_text()
    assert "| All requests (n=3) | pre | 100.0 | 100.0 | 100.0 | 100.0 | 0.000 | 0.000 | 0.000 | 0.000 |" in table
    assert "### Table 5: fixing errors" in table and "method `toy`, mode `single`" in table
    assert "paper,all,post,s1r1_acc,1.0\n" in (rep / "table4.csv").read_text()
    for c in tiny_world.cases[:2]:
        with Image.open(rep / f"fig4_{c['case_id']}.png") as im:
            assert im.size == (1400, 600)


def test_run_report_uses_the_stored_summary_caps_panels_and_replaces_an_old_report(tiny_world, tmp_path):
    summary = {"protocol": "exact", "subsets": {"all": {"n": 3, "pre/s1r1_acc": 0.5, "post/s1r1_acc": 0.75}}}
    run = _run_dir(tiny_world, tmp_path / "run", n=3, traced=3, summary=summary)
    (run / "report").mkdir()
    (run / "report" / "stale.txt").write_text("old")
    rep = run / "report"
    out = evaluate_run(run, rep, _data(tiny_world), max_panels=1)
    assert out["panels"] == 1 and not out["sequential"] and not (rep / "stale.txt").exists()
    assert len(list(rep.glob("fig4_*.png"))) == 1 and not (rep / "sequential.png").exists()
    assert (rep / "table4.md").read_text().startswith(table4_markdown(summary, {"method": "toy", "mode": "single"}))


def test_cli_missing_run_dir_is_one_error_line(tiny_world, tmp_path):
    r = _cli(tiny_world, [f"run={tmp_path / 'nope'}"])
    assert r.returncode == 2 and r.stderr.strip().startswith("error: run=") and len(r.stderr.strip().splitlines()) == 1
    assert "is not a directory" in r.stderr


def test_cli_malformed_results_line_leaves_no_report(tiny_world, tmp_path):
    run = _run_dir(tiny_world, tmp_path / "run", n=2, traced=0)
    with (run / "results.jsonl").open("a") as f:
        f.write('{"case_id": "eval-0000\n')
    r = _cli(tiny_world, [f"run={run}"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: malformed results line") and "results.jsonl:3" in r.stderr
    assert not (run / "report").exists() and not list(run.glob(".*staging*"))


def test_missing_results_is_a_user_error(tiny_world, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EditlabError, match=r"no results\.jsonl"):
        evaluate_run(tmp_path / "empty", tmp_path / "empty" / "report", _data(tiny_world), 8)
    assert not (tmp_path / "empty" / "report").exists()


@pytest.mark.parametrize("which", [[], ["run=x", "checkpoint=y"], ["run=x", "sweep=z"]],
                         ids=["neither", "both", "run-and-sweep"])
def test_cli_needs_exactly_one_of_run_checkpoint_and_sweep(tiny_world, which):
    r = _cli(tiny_world, which)
    assert r.returncode == 2 and r.stderr.strip() == "error: set exactly one of run=<edit run dir>, " \
        "checkpoint=<model dir> or sweep=<multirun dir>", r.stderr[-2000:]


def _export(world, out: Path, world_hash: str) -> Path:
    torch.manual_seed(0)
    model = build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=2), world.cfg.tokenizer.vocab_size)
    return export_checkpoint(model, world.dir, out, {}, world_hash, {})


def test_checkpoint_scores_pre_edit_and_plots_the_training_curve(tiny_world, tmp_path):
    ckpt = _export(tiny_world, tmp_path / "train" / "model", tiny_world.world["hash"])
    curve = [{"step": 1, "tokens": 1000, "gen_acc": 0.1, "prob_coherence": 0.5},
             {"step": 2, "tokens": 2000, "gen_acc": 0.2, "prob_coherence": 0.4}]
    (ckpt.parent / "metrics.json").write_text(json.dumps({"curve": curve}))
    ev = tmp_path / "ev"
    world = World.from_config(_data(tiny_world), tiny_world.dir.parent)
    model = load_checkpoint(ckpt, world.hash)
    with pytest.raises(EditlabError, match="n_cases=0 must be positive"):
        CheckpointEval(world, ckpt, ev, 0)
    out = evaluate_checkpoint(model, CheckpointEval(world, ckpt, ev, 6, 256, "paper"))
    assert out["n"] == 6 and out["all/n"] == 6 and 0.0 <= out["all/pre/s1r1_acc"] <= 1.0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["world_hash"] == tiny_world.world["hash"] and m["summary"]["subsets"]["all"]["n"] == 6
    assert not any(k.startswith("post/") for k in m["summary"]["subsets"]["all"])
    recs = [json.loads(x) for x in (ev / "results.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in recs] == [c["case_id"] for c in tiny_world.cases[:6]]
    assert all(len(r["pre"]["p"]) == len(c["probes"]) for r, c in zip(recs, tiny_world.cases, strict=False))
    assert "| All requests (n=6) | pre |" in (ev / "table4.md").read_text()
    assert (ev / "fig3_training.png").stat().st_size > 5_000


def test_checkpoint_of_another_world_is_refused_before_writing(tiny_world, tmp_path):
    ckpt = _export(tiny_world, tmp_path / "model", "0123456789ab")
    r = _cli(tiny_world, [f"checkpoint={ckpt}", "n_cases=2"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "trained on world 0123456789ab" in r.stderr and tiny_world.world["hash"] in r.stderr
    assert not (ckpt / "eval").exists()


def test_cli_takes_the_run_level_keys_of_every_entry_script(tiny_world, tmp_path):
    """threads=, progress= and device= mean what they mean for train.py and edit.py."""
    ckpt = _export(tiny_world, tmp_path / "model", tiny_world.world["hash"])
    r = _cli(tiny_world, [f"checkpoint={ckpt}", "n_cases=2", "threads=1", "progress=false", "device=cpu"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (ckpt / "eval" / "metrics.json").is_file()
    r = _cli(tiny_world, [f"checkpoint={ckpt}", "n_cases=2", "device=tpu"])
    assert r.returncode == 2 and "device=tpu is not a device" in r.stderr, r.stderr[-2000:]


def test_cli_refuses_an_added_top_level_key(tiny_world, tmp_path):
    r = _cli(tiny_world, ["+foo=1", f"run={tmp_path}"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "+foo=1 adds a key that nothing reads" in r.stderr
