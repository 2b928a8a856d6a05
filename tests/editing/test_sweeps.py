"""Hydra multirun sweeps of edit.py over any key: the values asked for, one run directory per job (named from
its overrides), reused on re-run; the command line beats the per-model value (conf/method_model/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHEAP = ["metrics.n_samples=0", "metrics.n_locality=5"]  # in every job's directory name: they change results
BASE = "edit/wikidata_synth_tiny/mistral_tiny-s0/lora-single-n5-s0"


def _multirun(world, ckpt: Path, outputs: Path, sweep: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "edit.py", "-m", *sweep, "edits.n=5", *CHEAP, f"data.cache_dir={world.dir.parent}",
           f"checkpoint={ckpt}", "progress=false", "device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDITLAB_OUTPUTS": str(outputs)}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _jobs(outputs: Path) -> dict[str, dict]:
    """Job directory name -> its recorded method hparams, for every finished run under the sweep's base path."""
    return {d.name: yaml.safe_load((d / "run_config.yaml").read_text())["method"]["hparams"]
            for d in sorted((outputs / BASE).iterdir()) if (d / "metrics.json").is_file()}


def test_sweep_over_lr_gets_the_values_asked_for_in_two_directories_reused_on_rerun(tiny_world, random_checkpoint,
                                                                                    tmp_path):
    out = tmp_path / "outputs"
    _multirun(tiny_world, random_checkpoint, out, ["method.hparams.lr=1e-4,1e-3", "method.hparams.steps=2"])
    jobs = _jobs(out)
    tail = "method.hparams.steps=2,metrics.n_locality=5,metrics.n_samples=0"
    # Hydra writes the swept values as it parsed them (1e-4 -> 0.0001)
    assert sorted(jobs) == [f"method.hparams.lr=0.0001,{tail}", f"method.hparams.lr=0.001,{tail}"]
    # the command line wins over conf/method_model/tuned/lora_mistral_tiny.yaml (lr 1e-3); its other value stays
    assert jobs[f"method.hparams.lr=0.0001,{tail}"]["lr"] == 1e-4
    assert jobs[f"method.hparams.lr=0.001,{tail}"]["lr"] == 1e-3
    assert all(hp["steps"] == 2 and hp["stop_loss"] == 0.1 for hp in jobs.values())
    stamps = {p: p.stat().st_mtime_ns for p in (out / BASE).glob("*/metrics.json")}
    again = _multirun(tiny_world, random_checkpoint, out, ["method.hparams.lr=1e-4,1e-3", "method.hparams.steps=2"])
    assert again.stdout.count("finished earlier with this config") == 2
    assert {p: p.stat().st_mtime_ns for p in (out / BASE).glob("*/metrics.json")} == stamps
    assert not (out / BASE / "run_config.yaml").exists()  # no job ran in the shared base path


def test_sweep_over_steps_gets_the_values_asked_for_in_two_directories(tiny_world, random_checkpoint, tmp_path):
    out = tmp_path / "outputs"
    _multirun(tiny_world, random_checkpoint, out, ["method.hparams.steps=1,3"])
    jobs = _jobs(out)
    tail = "metrics.n_locality=5,metrics.n_samples=0"
    assert {name: hp["steps"] for name, hp in jobs.items()} == {f"method.hparams.steps=1,{tail}": 1,
                                                                 f"method.hparams.steps=3,{tail}": 3}
    assert all(hp["lr"] == 1e-3 for hp in jobs.values())  # the per-model value where the command line is silent


def test_sweep_jobs_are_recorded_and_compared_in_one_table(tiny_world, random_checkpoint, tmp_path):
    """edit.py -m records its jobs in the sweep directory; evaluate.py sweep=<it> makes one row per job."""
    from editlab.eval import compare
    from editlab.runs.reports import evaluate_sweep

    out = tmp_path / "outputs"
    _multirun(tiny_world, random_checkpoint, out, ["method.hparams.steps=1,3"])
    (sweep,) = (out / "multirun" / "edit").iterdir()
    assert sorted(p.name for p in (sweep / "jobs").iterdir()) == ["0.json", "1.json"]
    res = evaluate_sweep(sweep, sweep / "comparison")
    assert res["n"] == 2 and res["setups"] == 2 and res["missing"] == 0
    assert res["keys"] == ["method.name", "method.hparams.steps"]
    table = (sweep / "comparison" / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| method.name | method.hparams.steps | seeds | golds | edit success")
    assert [line.split("|")[2].strip() for line in table[2:4]] == ["1", "3"]
    runs, _ = compare.find_runs(sweep)
    assert {r.values["s1r1 acc"] for r in runs} == {
        yaml.safe_load((r.path / "run_config.yaml").read_text()) and compare.read_run(r.path).values["s1r1 acc"]
        for r in runs}
    for png in ("success_locality.png", "bars_editing.png", "bars_table4.png", "bars_coherence.png", "bars_cost.png"):
        assert (sweep / "comparison" / png).stat().st_size > 0
    generations = (sweep / "comparison" / "generations.md").read_text()  # one row per setup under each request
    assert all(row in generations for row in ("| lora (steps=1) |", "| lora (steps=3) |", "| **agent** |"))
    # a later sweep extends the table: several sweep directories are one comparison; a run listed twice counts once
    _multirun(tiny_world, random_checkpoint, out, ["method.hparams.steps=2,3"])
    later = next(d for d in (out / "multirun" / "edit").iterdir() if d != sweep)
    both = evaluate_sweep([sweep, later], tmp_path / "both")
    assert both["n"] == 3 and both["setups"] == 3
