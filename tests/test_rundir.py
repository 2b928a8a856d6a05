"""Run-directory rules (editlab.utils.rundir): fresh / resume / done, refuse a different config, overwrite."""

from __future__ import annotations

import pytest
import yaml

from editlab.errors import EditlabError
from editlab.utils.rundir import config_differences, prepare

CFG = {"method": {"name": "lora", "hparams": {"lr": 1e-3, "steps": 40}}, "seed": 0, "progress": True,
       "paths": {"outputs": "outputs"}, "run_dir": "outputs/edit/x"}
IGNORE = ("progress",)


def _finish(run_dir, *names):
    for n in names:
        (run_dir / n).write_text("{}")


def test_edit_rules_fresh_resume_done_and_reuse_ignoring_display_and_location_keys(tmp_path):
    run = tmp_path / "run"
    assert prepare(run, CFG, ignore=IGNORE, overwrite=False, done=("metrics.json", "results.jsonl")) == "fresh"
    assert yaml.safe_load((run / "run_config.yaml").read_text()) == CFG  # recorded at the start
    assert not list(run.glob(".*.tmp"))
    moved = {**CFG, "progress": False, "paths": {"outputs": "/elsewhere"}, "run_dir": "/elsewhere/edit/x"}
    assert prepare(run, moved, ignore=IGNORE, overwrite=False, done=("metrics.json", "results.jsonl")) == "resume"
    _finish(run, "metrics.json")
    assert prepare(run, CFG, ignore=IGNORE, overwrite=False, done=("metrics.json", "results.jsonl")) == "resume"
    _finish(run, "results.jsonl")
    assert prepare(run, CFG, ignore=IGNORE, overwrite=False, done=("metrics.json", "results.jsonl")) == "done"


def test_a_different_config_is_refused_naming_the_keys_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    prepare(run, CFG, ignore=IGNORE, overwrite=False)
    other = {**CFG, "method": {"name": "lora", "hparams": {"lr": 1e-4, "steps": 40}}}
    with pytest.raises(EditlabError) as err:
        prepare(run, other, ignore=IGNORE, overwrite=False)
    msg = str(err.value)
    assert "holds a run with a different config (method.hparams.lr: 0.001 -> 0.0001)" in msg
    assert "overwrite=true" in msg and "\n" not in msg
    (run / "results.jsonl").write_text("old")
    assert prepare(run, other, ignore=IGNORE, overwrite=True) == "fresh"
    assert not (run / "results.jsonl").exists()  # overwrite starts from an empty directory
    assert yaml.safe_load((run / "run_config.yaml").read_text()) == other


def test_train_rules_only_a_finished_export_is_compared_or_reused(tmp_path):
    run = tmp_path / "run"
    kw = {"ignore": ("ckpt_path",), "done": ("metrics.json",), "config_name": "model/run_config.yaml",
          "record": False}
    assert prepare(run, CFG, overwrite=False, **kw) == "fresh" and not run.exists()  # the run records its own config
    (run / "model").mkdir(parents=True)
    (run / "model" / "run_config.yaml").write_text(yaml.safe_dump(CFG))
    other = {**CFG, "seed": 1}
    assert prepare(run, other, overwrite=False, **kw) == "fresh"  # not finished: the caller resumes or restarts
    _finish(run, "metrics.json")
    assert prepare(run, {**CFG, "ckpt_path": "last"}, overwrite=False, **kw) == "done"
    with pytest.raises(EditlabError, match=r"holds a finished run with a different config \(seed: 0 -> 1\)"):
        prepare(run, other, overwrite=False, **kw)
    assert prepare(run, other, overwrite=True, **kw) == "fresh" and (run / "metrics.json").exists()  # retrains in place


def test_a_finished_pretraining_is_reused_whatever_the_logger_or_a_resume_asks(tmp_path):
    """train.py's reuse rule (runs/pretrain.finished_run): the logger and ckpt_path change no weight, so a finished
    run with another logger, or asked to resume, is the same run; a changed hyper-parameter is not."""
    from editlab.runs.pretrain import finished_run

    run = tmp_path / "run"
    cfg = {**CFG, "logger": {"_target_": "CSVLogger"}}
    (run / "model").mkdir(parents=True)
    (run / "model" / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.json").write_text('{"gen_acc": 0.5, "curve": []}')
    wandb = {**cfg, "logger": {"_target_": "wandb_logger"}, "ckpt_path": "last"}
    assert finished_run(run, wandb, overwrite=False) == {"gen_acc": 0.5, "reused": True}
    with pytest.raises(EditlabError, match="different config"):
        finished_run(run, {**cfg, "seed": 1}, overwrite=False)


def test_config_differences_lists_nested_added_and_removed_keys():
    a = {"x": {"y": 1, "z": 2}, "k": 1}
    b = {"x": {"y": 1, "w": 3}, "k": 1}
    assert config_differences(a, b) == ["x.w", "x.z"]
    assert config_differences(a, a) == []


def test_paths_under_a_moved_root_are_the_same_location(tmp_path, monkeypatch):
    """Setting EDITLAB_OUTPUTS / EDITLAB_CACHE (absolute) after a run keeps it reusable and resumable; a path
    that really points elsewhere is still a different config."""
    monkeypatch.chdir(tmp_path)
    old = {**CFG, "paths": {"outputs": "outputs", "cache": ".cache/editlab", "stats": "outputs/cache"},
           "checkpoint": "outputs/train/w/m-s0/model", "data": {"cache_dir": ".cache/editlab/worlds"},
           "editor_path": None, "stats_dir": "outputs/cache/abc"}
    for outputs, cache in [("/scratch/out", "/scratch/cache"), (str(tmp_path / "outputs"), ".cache/editlab")]:
        new = {**old, "paths": {"outputs": outputs, "cache": cache, "stats": f"{outputs}/cache"},
               "checkpoint": f"{outputs}/train/w/m-s0/model", "data": {"cache_dir": f"{cache}/worlds"},
               "stats_dir": f"{outputs}/cache/abc"}
        assert config_differences(old, new) == []
    other = {**old, "checkpoint": "outputs/train/w/m-s1/model", "editor_path": "/scratch/out/train/w/m-s0/editors"}
    assert config_differences(old, other) == ["checkpoint", "editor_path"]
    # a string that merely starts like a root is no path under it
    assert config_differences({**old, "tag": "outputsX"}, {**old, "tag": "/scratch/out/X"}) == ["tag"]
