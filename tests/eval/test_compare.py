"""The comparison table of many edit runs (editlab.eval.compare): setups from the differing config keys, mean and
95% Student-t interval over seeds (checked by hand), missing jobs listed, bad directories refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from editlab.errors import EditlabError
from editlab.eval import compare


def _run(root: Path, name: str, method: str, lr: float, seed: int, s1r1: float, stage: str = "post") -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"method": {"name": method, "hparams": {"lr": lr}}, "seed": seed, "edits": {"n": 5},
           "paths": {"outputs": str(root)}, "run_dir": str(d), "checkpoint": "x", "progress": False}
    (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    allsub = {f"{stage}/s1r1_acc": s1r1, f"{stage}/locality_agree": 0.5, "post/edit_exact": 1.0,
              "post/fluency": float("nan")}
    (d / "metrics.json").write_text(json.dumps({"summary": {"subsets": {"all": allsub}}, "median_edit_s": 0.02,
                                                "peak_mem_mb": 10.0, "wall_s": 3.0}))
    return d


def test_setups_means_and_student_t_intervals(tmp_path):
    for seed, v in enumerate((0.5, 0.7, 0.9)):
        _run(tmp_path, f"lora-{seed}", "lora", 1e-3, seed, v)
    _run(tmp_path, "lora-hi", "lora", 1e-2, 0, 0.4)
    _run(tmp_path, "rome", "rome", 1e-3, 0, 1.0, stage="final")  # a sequential run: its final stage is used
    d = _run(tmp_path, "ice", "ice", 1e-3, 0, 0.3)  # another method's own defaults do not name setups
    cfg = yaml.safe_load((d / "run_config.yaml").read_text())
    cfg["method"]["hparams"] = {"template": "sentence"}
    (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    runs, missing = compare.find_runs(tmp_path)
    comp = compare.compare(runs, missing)
    assert comp.keys == ["method.name", "method.hparams.lr"]  # seed aggregated; locations/display ignored
    rows = {(r["method.name"], r["method.hparams.lr"]): r for r in comp.rows}
    mean, half = rows[("lora", 1e-3)]["s1r1 acc"]
    # by hand: mean 0.7, sd 0.2, t_{0.975, 2} = 4.302652729911275
    assert mean == pytest.approx(0.7) and half == pytest.approx(4.302652729911275 * 0.2 / math.sqrt(3))
    assert rows[("lora", 1e-3)]["seeds"] == 3
    assert rows[("lora", 1e-2)]["s1r1 acc"] == (pytest.approx(0.4), None)
    assert rows[("rome", 1e-3)]["s1r1 acc"][0] == 1.0
    assert rows[("ice", "<unset>")]["s1r1 acc"][0] == pytest.approx(0.3)
    assert rows[("lora", 1e-3)]["ms/edit"][0] == pytest.approx(20.0)
    assert rows[("lora", 1e-3)]["fluency"] == (None, None)  # NaN is no value, not a number in the mean
    md = compare.comparison_markdown(comp)
    assert "| lora | 0.001 | 3 | single | 100.0 ± 0.0 | 70.0 ± 49.7 |" in md
    csv_lines = compare.comparison_csv(comp).splitlines()
    assert csv_lines[0] == "method.name,method.hparams.lr,metric,group,higher_is_better,mean,ci95,seeds,golds"
    assert len(csv_lines) == 1 + 4 * len(compare.METRICS)


def test_a_methods_paper_and_tuned_rows_are_named_by_the_preset_not_by_every_value(tmp_path):
    """preset=paper vs tuned changes many hparams at once; the table names the preset, and a hparam only where
    runs of one method under one preset differ in it."""
    for name, preset, lr, seed in (("p0", "paper", 1e-4, 0), ("p1", "paper", 1e-4, 1), ("t", "tuned", 1e-3, 0),
                                   ("t-hi", "tuned", 1e-2, 0)):
        d = _run(tmp_path, name, "lora", lr, seed, 0.5)
        cfg = yaml.safe_load((d / "run_config.yaml").read_text())
        cfg["preset"] = {"name": preset, "tag": "" if preset == "tuned" else "-paper"}
        cfg["method"]["hparams"]["stop_loss"] = 0.0 if preset == "paper" else 0.1
        (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
        m = json.loads((d / "metrics.json").read_text())  # the downstream-change requests' own subset
        m["summary"]["subsets"]["downstream_changes"] = {"post/s1r2_acc": 0.25 if preset == "paper" else 0.0}
        (d / "metrics.json").write_text(json.dumps(m))
    comp = compare.compare(*compare.find_runs(tmp_path))
    assert comp.keys == ["method.name", "preset.name", "method.hparams.lr"]  # not stop_loss, not preset.tag
    paper = next(r for r in comp.rows if r["preset.name"] == "paper")
    assert paper["downstream s1r2 acc"] == (0.25, 0.0) and paper["s1r2 acc"] == (None, None)
    assert compare.setup_label(paper, comp.keys) == "lora (preset=paper,lr=0.0001)"
    assert sorted((r["preset.name"], r["method.hparams.lr"], r["seeds"]) for r in comp.rows) == [
        ("paper", 1e-4, 2), ("tuned", 1e-3, 1), ("tuned", 1e-2, 1)]


def test_a_moved_cache_and_a_newer_null_key_do_not_split_a_setup(tmp_path):
    """Runs from two checkouts (another data.cache_dir) and of two versions (one records stats.dataset: null, the
    other has no such key) are one setup; a key set to a value still names its own."""
    for name, seed, extra in (("a", 0, {"data": {"name": "w", "cache_dir": "/one/.cache"}}),
                              ("b", 1, {"data": {"name": "w", "cache_dir": "/two/.cache"}, "stats": {"dataset": None}}),
                              ("c", 0, {"data": {"name": "w", "cache_dir": "/one/.cache"}, "stats": {"dataset": "t"}})):
        d = _run(tmp_path, name, "rome", 1e-3, seed, 0.5)
        cfg = {**yaml.safe_load((d / "run_config.yaml").read_text()), **extra}
        (d / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    comp = compare.compare(*compare.find_runs(tmp_path))
    assert comp.keys == ["method.name", "stats.dataset"]
    assert sorted((r["stats.dataset"], r["seeds"]) for r in comp.rows) == [("<unset>", 2), ("t", 1)]


def test_multirun_jobs_define_the_runs_and_unfinished_jobs_are_listed(tmp_path):
    a = _run(tmp_path / "runs", "a", "lora", 1e-3, 0, 0.5)
    _run(tmp_path / "runs", "b", "lora", 1e-2, 0, 0.6)  # not a job of this sweep: left out
    sweep = tmp_path / "sweep"
    (sweep / "jobs").mkdir(parents=True)
    (sweep / "jobs" / "0.json").write_text(json.dumps({"run_dir": str(a)}))
    (sweep / "jobs" / "1.json").write_text(json.dumps({"run_dir": str(tmp_path / "runs" / "killed")}))
    runs, missing = compare.find_runs(sweep)
    assert [r.path for r in runs] == [a] and missing == [str(tmp_path / "runs" / "killed")]
    assert "Missing (no metrics.json" in compare.comparison_markdown(compare.compare(runs, missing))


def test_bad_directories_are_one_clear_error(tmp_path):
    with pytest.raises(EditlabError, match="not a directory"):
        compare.find_runs(tmp_path / "nope")
    with pytest.raises(EditlabError, match="no finished edit runs"):
        compare.find_runs(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "0.json").write_text("{broken")
    with pytest.raises(EditlabError, match=r"malformed multirun job record file .*; delete it or re-run the multirun"):
        compare.find_runs(tmp_path)
