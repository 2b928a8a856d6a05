"""Parallel and cluster launchers: threads per job under joblib / submitit, and the SLURM config rendered to a valid
sbatch script in a dry run (submitit's own renderer, nothing submitted)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from editlab.errors import EditlabError
from editlab.utils import threads

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(("launcher", "cores", "want"), [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}, 8, 2),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 16, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 6}, 64, 6),
    ({}, 8, None),  # not a multirun (or the basic launcher, one job at a time): torch's default
])
def test_auto_threads_share_the_cores(monkeypatch, launcher, cores, want):
    monkeypatch.setattr(threads, "_launcher", lambda: launcher)
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    assert threads.job_threads("auto") == want


@pytest.mark.parametrize(("width", "launcher", "want"), [
    (128, {}, 1), (256, {}, 1), (512, {}, None),
    (128, {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 1),
    (512, {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 4),
])
def test_auto_threads_give_a_small_model_one_thread(monkeypatch, width, launcher, want):
    monkeypatch.setattr(threads, "_launcher", lambda: launcher)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert threads.job_threads("auto", width) == want
    assert threads.job_threads(3, width) == 3  # an explicit count wins


def test_explicit_threads_win_and_bad_values_are_refused():
    assert threads.job_threads(3) == 3
    for bad in (0, -2, "four", True):
        with pytest.raises(EditlabError, match="must be a positive integer or auto"):
            threads.job_threads(bad)


def _launcher_cfg(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="edit", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_slurm_config_renders_a_valid_sbatch_script(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # pretend srun exists (dry run)

    params = _launcher_cfg("slurm", ["hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=2",
                                     "hydra.launcher.timeout_min=90"])
    assert params["_target_"].endswith("SlurmLauncher")
    params = {k: v for k, v in params.items() if k != "_target_"}
    params["name"], params["account"] = "edit", None  # resolved by Hydra / the environment at launch time
    # the launcher's own mapping of its keys to submitit's (hydra_submitit_launcher.submitit_launcher.launch)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    init_keys = {"submitit_folder", "max_num_timeout"}
    ex = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path), slurm_max_num_timeout=params["max_num_timeout"])
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in init_keys})
    ex._executor.parameters["map_count"] = 3  # a 3-job sweep: one array
    text = ex._executor._make_submission_file_text("python edit.py method=lora", "uid")
    lines = set(text.splitlines())
    for want in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=90", "#SBATCH --array=0-2%2", "#SBATCH --mem=64GB", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --signal=USR2@120"):
        assert want in lines, text
    assert text.startswith("#!/bin/bash") and "python edit.py method=lora" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run([shutil.which("bash") or "bash", "-n", str(script)]).returncode == 0  # valid shell


def test_local_and_joblib_launchers_compose():
    local = _launcher_cfg("local", [])
    assert local["_target_"].endswith("LocalLauncher") and local["gpus_per_node"] == 0
    joblib = _launcher_cfg("joblib", ["hydra.launcher.n_jobs=4"])
    assert joblib["_target_"].endswith("JoblibLauncher") and joblib["n_jobs"] == 4


def test_slurm_without_slurm_is_one_line_before_hydra_starts(monkeypatch):
    """Without sbatch/srun on PATH, hydra/launcher=slurm is refused by the entry scripts' pre-check (submitit would
    raise from inside the launcher, outside the entry point's error handling); with them it passes."""
    import shutil

    from editlab.cli import check_launcher
    from editlab.errors import EditlabError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EditlabError, match="not on the PATH here"):
        check_launcher(["-m", "hydra/launcher=slurm", "method=lora"])
    check_launcher(["-m", "hydra/launcher=joblib", "method=lora"])  # other launchers are not its business
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    check_launcher(["-m", "hydra/launcher=slurm", "method=lora"])


def test_a_missing_stats_dataset_is_refused_before_any_statistic(tmp_path):
    from editlab.editing.locate.stats import text_key
    from editlab.errors import EditlabError

    with pytest.raises(EditlabError, match="no text dataset at"):
        text_key(tmp_path / "wiki.parquet")
