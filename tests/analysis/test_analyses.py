"""The analyses of ``python evaluate.py analysis=<name>`` (editlab.analysis): configs, the tracing entry point and
its ``${editlab.traced_layer:}`` resolver, and klob / delta_w / hase on the tests' small random checkpoint with
the methods on main (ft_m, ice). Hand-checkable pieces (token categories, best-layer rule, Jaccard and its
chance level, column shares, logit-lens hits, rewrite score) are checked against direct computations."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from transformers import PreTrainedTokenizerFast

from editlab.analysis import delta_w, facts, hase, klob, trace_run
from editlab.cli import run_cli
from editlab.errors import EditlabError
from editlab.lm.checkpoint import load_checkpoint
from editlab.runs.analysis import ANALYSES, AnalysisRun, run_analysis
from editlab.runs.hparams import method_hparams
from editlab.utils.jsonio import read_json
from editlab.world.loading import World

ROOT = Path(__file__).resolve().parents[2]


def _cfg(overrides: list[str], name: str = "evaluate"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _settings(world_dir: Path, analysis: str, overrides: list[str]) -> dict:
    cfg = _cfg([f"analysis={analysis}", f"data.cache_dir={world_dir.parent}", *overrides])
    s = OmegaConf.to_container(cfg.analysis, resolve=True)
    for key in ("name", "out_dir", "checkpoint"):
        s.pop(key)
    return s


@pytest.fixture(scope="module")
def setup(tiny_world, random_checkpoint):
    world = World.open(tiny_world.dir)
    model = load_checkpoint(random_checkpoint, world.hash).eval()
    return world, model, random_checkpoint


def _run(setup, name: str, overrides: list[str], out: Path, methods: tuple[str, ...] = ()) -> dict:
    world, model, ckpt = setup
    hp = {m: method_hparams(m, "mistral_tiny") for m in methods}
    run = AnalysisRun(name, _settings(world.dir, name, overrides), world, ckpt, out, hp, out.parent / "stats",
                      progress=False)
    return run_analysis(model, run)


@pytest.mark.parametrize("name", ANALYSES)
def test_every_analysis_config_composes_with_its_output_directory(name):
    cfg = _cfg([f"analysis={name}", "paths.outputs=/o"])
    out = OmegaConf.to_container(cfg, resolve=True)
    assert out["analysis"]["name"] == name
    assert out["analysis"]["out_dir"] == f"/o/analysis/wikidata_synth_tiny/mistral_tiny-s0/{name}"
    assert out["analysis"]["checkpoint"] == "/o/train/wikidata_synth_tiny/mistral_tiny-s0/model"
    text = (ROOT / "conf" / "analysis" / f"{name}.yaml").read_text()
    assert text.startswith("#") and f"python evaluate.py analysis={name}" in text
    assert _cfg([]).get("analysis") is None  # run= / checkpoint= modes are unchanged


def test_token_categories_and_best_layer_rule():
    assert trace_run.category_positions((1, 4), 7) == [[1], [2], [3], [4], [5], [6]]
    assert trace_run.category_positions((1, 2), 4) == [[1], [], [1], [2], [], [3]]  # one-token subject
    assert trace_run.category_positions((1, 3), 4) == [[1], [], [2], [], [], [3]]  # one relation token
    grid = np.arange(14.0).reshape(2, 7)
    cat = trace_run.by_category(grid, (1, 5))
    assert cat[0].tolist()[:3] == [1.0, 2.5, 4.0] and cat[1, 5] == 13.0
    assert np.isnan(trace_run.by_category(grid, (1, 2))[0, 1])
    mean = np.zeros((4, 6))
    mean[[1, 3], trace_run.LAST_SUBJECT] = 0.5  # a tie: the lower layer wins
    mean[2, 0] = 9.0  # other categories do not count
    assert trace_run.best_layer(mean) == 1


def _check_tracing(out: Path) -> dict:
    assert {"heatmap.png", "tracing.csv", "facts.csv", "result.json"} <= {p.name for p in out.iterdir()}
    res = read_json(out / "result.json")
    assert res["n_facts"] == 3 and res["n_layers"] == 2 and not res["window_covers_all"]
    assert res["best_layer"] == res["best_layer_by_kind"]["mlp"] and 0 <= res["best_layer"] < 2
    assert res["best_layer"] == int(np.argmax(np.array(res["mean_ie"]["mlp"])[:, trace_run.LAST_SUBJECT]))
    header = (out / "tracing.csv").read_text().splitlines()
    assert header[0] == "kind,category,layer,mean_ie,n_facts" and len(header) == 1 + 3 * 6 * 2
    return res


def test_tracing_writes_the_heatmap_and_a_layer_method_configs_can_take(setup, tmp_path):
    out = tmp_path / "tracing"
    res = _run(setup, "tracing", ["analysis.n_facts=3", "analysis.known_only=false", "analysis.trace.samples=2",
                                  "analysis.trace.window=1"], out)
    assert res == {**read_json(out / "result.json"), "report": str(out), "n": 3, "unit": "facts"}
    _check_tracing(out)
    layer = _cfg(["method=ft_m", f"method.hparams.layer=${{editlab.traced_layer:{out}/result.json}}"], "edit")
    assert OmegaConf.to_container(layer.method.hparams, resolve=True)["layer"] == res["best_layer"]


@pytest.mark.slow
def test_tracing_cli(tiny_world, random_checkpoint, tmp_path):
    out = tmp_path / "tracing"
    r = subprocess.run([sys.executable, "evaluate.py", "analysis=tracing", f"checkpoint={random_checkpoint}",
                        f"data.cache_dir={tiny_world.dir.parent}", f"out_dir={out}", "analysis.n_facts=3",
                        "analysis.known_only=false", "analysis.trace.samples=2", "analysis.trace.window=1",
                        "progress=false"], cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"report: {out} (3 facts)" in r.stdout
    _check_tracing(out)
    bad = subprocess.run([sys.executable, "evaluate.py", "analysis=tracing", f"checkpoint={tmp_path}/nothing",
                          f"data.cache_dir={tiny_world.dir.parent}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: no checkpoint at {tmp_path}/nothing; train one with: python train.py data=wikidata_synth_tiny "
        "model=mistral_tiny (or pass checkpoint=<dir>)"]


def test_traced_layer_of_a_missing_result_is_one_clear_error(tmp_path, capsys):
    cfg = _cfg(["method=ft_m", f"method.hparams.layer=${{editlab.traced_layer:{tmp_path}/none.json}}"], "edit")
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: OmegaConf.to_container(cfg.method, resolve=True))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "none.json" in err and "analysis=tracing" in err
    (tmp_path / "bad.json").write_text('{"layer": 3}')
    with pytest.raises(InterpolationResolutionError, match="no integer best_layer"):
        OmegaConf.to_container(_cfg(["method=ft_m", f"method.hparams.layer=${{editlab.traced_layer:{tmp_path}/"
                                     "bad.json}"], "edit").method, resolve=True)


def test_jaccard_top_layers_and_exact_chance():
    assert klob.top_layers(np.array([0.1, 0.3, 0.3, 0.0]), 2) == {1, 2}
    assert klob.top_layers(np.array([0.2, 0.2, 0.2]), 1) == {0}
    assert klob.jaccard(frozenset({0, 1}), frozenset({1, 2})) == pytest.approx(1 / 3)
    for n, k in ((4, 1), (4, 2), (5, 3), (6, 6)):
        subsets = [frozenset(c) for c in itertools.combinations(range(n), k)]
        brute = np.mean([klob.jaccard(a, b) for a in subsets for b in subsets])
        assert klob.chance_jaccard(n, k) == pytest.approx(brute)


def test_dependency_groups_follow_the_worlds_relations(setup):
    world = setup[0]
    down = {r["name"]: r["downstream"] for r in world.info["relations"] if r.get("downstream")}
    known = {(f["subject"], f["relation"]): f["modal"] for f in world.facts}
    groups = facts.dependency_groups(world, seed=0)
    assert groups and groups == facts.dependency_groups(world, seed=0)
    for g in groups[:50]:
        s1, r1 = g.fact.subject, g.fact.relation
        assert down[r1] == g.dependent.relation and g.dependent.subject == s1 == g.same_subject.subject
        assert g.same_subject.relation not in (r1, g.dependent.relation)
        assert g.other_subject.subject != s1 and g.other_subject.relation == r1
        assert all(known[(f.subject, f.relation)] == f.object for f in g.members())


def test_klob_writes_curves_that_reach_one_at_k_equal_l(setup, tmp_path):
    res = _run(setup, "klob", ["analysis.n_groups=3", "analysis.known_only=false", "analysis.trace.samples=2"],
               tmp_path / "klob")
    assert {"klob.png", "klob.csv", "groups.csv", "result.json"} <= {p.name for p in (tmp_path / "klob").iterdir()}
    assert res["n"] == 3 and res["k"] == [1, 2]
    for curve in res["mean_jaccard"].values():
        assert curve[-1] == 1.0 and min(curve) >= 0.0


def test_column_shares_and_logit_lens_hits_by_hand(setup):
    shares, frac = delta_w.column_shares(torch.tensor([1.0, 0.0, 3.0, 6.0], dtype=torch.float64), [1, 2, 4])
    assert shares == pytest.approx([0.6, 0.9, 1.0]) and frac == 0.5
    model = setup[1]
    cols = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = model.lm_head(model.model.norm(cols.float()[:, None]))[:, 0]
    top1 = int(logits[1].argmax())  # the top token of column 1
    hits = delta_w.column_hits(model, {"after": cols}, top1, [1, 5])
    assert hits == {"after@1": True, "after@5": True}
    worst = int(logits.min(dim=0).values.argmin())
    ranks = [(logits[i] > logits[i, worst]).sum() for i in range(3)]
    assert delta_w.column_hits(model, {"x": cols}, worst, [10])["x@10"] == bool(min(ranks) < 10)


def test_delta_w_of_ft_m_sits_in_its_layer_and_in_context_methods_have_none(setup, tmp_path):
    res = _run(setup, "delta_w", ["analysis.n_edits=2", "analysis.known_only=false", "analysis.methods=[ft_m,ice]",
                                  "analysis.top_columns=[1,64]"], tmp_path / "dw", methods=("ft_m", "ice"))
    ft = res["methods"]["ft_m"]
    layer = method_hparams("ft_m", "mistral_tiny")["layer"]
    assert ft["weight_change"] and ft["modules"] == [f"model.layers.{layer}.mlp.down_proj"]
    assert 0 < ft["share_top_k"][0] < ft["share_top_k"][1] == pytest.approx(1.0)  # 64 = every column of d_in
    assert set(ft["hit_at_k"]) == {f"{v}@{k}" for v in ("before", "after", "delta") for k in (10, 50)}
    assert res["methods"]["ice"]["weight_change"] is False
    assert (tmp_path / "dw" / "delta_w.png").is_file() and (tmp_path / "dw" / "edits.csv").is_file()


def test_hase_edits_at_every_layer_and_restores_the_model(setup, tmp_path):
    model = setup[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = _run(setup, "hase", ["analysis.n_facts=2", "analysis.known_only=false", "analysis.method=ft_m",
                               "analysis.layer_key=layer", "analysis.trace.samples=2"], tmp_path / "hase",
               methods=("ft_m",))
    assert res["layers"] == [0, 1] and len(res["per_layer"]) == 2 and res["n"] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # every edit restored
    rows = (tmp_path / "hase" / "hase.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2
    assert hase.rewrite_score(np.array([0.2]), np.array([0.6]))[0] == pytest.approx(0.5)
    assert hase.at_layer({"layers": [3], "lr": 1}, "layers", 1, "m") == {"layers": [1], "lr": 1}
    with pytest.raises(EditlabError, match="layer_key"):
        hase.at_layer({"lr": 1}, "layer", 1, "m")


def test_facts_known_only_and_too_few_is_one_clear_error(setup):
    world, model, _ = setup
    tok = PreTrainedTokenizerFast.from_pretrained(world.dir)
    with pytest.raises(EditlabError, match="known_only=false"):  # a random model knows no fact
        facts.draw_facts(model, tok, facts.world_facts(world)[:20], 1, 0, known_only=True)
    drawn, skipped = facts.draw_facts(model, tok, facts.world_facts(world), 5, 0, known_only=False)
    assert len(drawn) == 5 and skipped == 0 and drawn == facts.draw_facts(model, tok, facts.world_facts(world), 5, 0,
                                                                         False)[0]
