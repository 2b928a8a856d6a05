"""bench/edit.py's ``methods`` part on a small random checkpoint: the per-method measurements in process (a
trainable editor; an in-context one in the slow suite), one method through the real subprocess-per-method path
(slow: three interpreter start-ups), and bad options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from editlab.errors import EditlabError
from editlab.lm.checkpoint import load_weights, model_id
from editlab.world.loading import World
from tests.conftest import load_bench
from tests.editing import toys

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    return load_bench("edit")


@pytest.mark.parametrize("name", ["toy_learned_step", pytest.param("ice", marks=pytest.mark.slow)])
def test_bench_method_measures_a_method(name, tiny_world, ckpt, tmp_path):
    bench = _bench()
    world = World.open(tiny_world.dir)
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    with toys.toys_registered():
        out = bench.bench_method(name, load_weights(ckpt).eval(), tok, world, world.cases()[:2], "mistral_tiny",
                                 batch_n=3, meta_steps=2, model_id=model_id(ckpt), work=tmp_path)
    assert out["cases"] == 2 and out["ms_per_edit"] > 0 and out["edits_per_s"] > 0 and out["cpu_ms_per_edit"] > 0
    assert out["supports_batch"] and out["batch_n"] == 3 and out["edits_per_s_batch"] > 0 and out["batch_s"] > 0
    assert out["prepare_cold_s"] >= 0 and out["prepare_warm_s"] >= 0
    assert out["peak_mem_kind"] == "cpu_rss" and out["peak_mem_mb"] >= out["peak_mem_increase_mb"] >= 0
    if name == "toy_learned_step":  # a trainable editor: meta-trained briefly, its size is its learned step
        assert out["meta_train_steps"] == 2 and out["meta_train_s"] > 0 and out["editor_params"] == 1
    else:
        assert "meta_train_s" not in out


@pytest.mark.slow
def test_bench_methods_part_runs_each_method_in_a_subprocess(tiny_world, ckpt):
    run = subprocess.run([sys.executable, str(ROOT / "bench/edit.py"), "--parts", "methods", "--methods", "ice",
                          "--quick", "--batch-n", "4", "--threads", "1", "--model", str(ckpt), "--world",
                          str(tiny_world.dir)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert "hardware" in out and set(out["methods"]) == {"ice"}
    ice = out["methods"]["ice"]
    assert {"ms_per_edit", "edits_per_s", "edits_per_s_batch", "peak_mem_mb", "prepare_cold_s",
            "prepare_warm_s"} <= set(ice) and ice["batch_n"] == 4


def test_bench_rejects_unknown_methods():
    with pytest.raises(EditlabError, match="--methods nope"):
        _bench().main(["--methods", "nope"])


def test_bench_threads_times_each_setting_idle_and_loaded(monkeypatch):
    """The threads part runs edit.py once per (round, load, setting), with a busy process only while loaded, and
    a failing edit.py is an error naming its exit code (not a figure)."""
    bench = _bench()
    monkeypatch.setattr("editlab.utils.threads.available_cores", lambda: 2)
    calls, busy = [], []
    real_popen = subprocess.Popen

    def popen(cmd, **kw):
        proc = real_popen([sys.executable, "-c", "import time; time.sleep(30)"])
        busy.append(proc)
        return proc

    def run(cmd, **kw):
        calls.append((next((a for a in cmd if a.startswith("threads=")), None), any(p.poll() is None for p in busy)))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "Popen", popen)
    monkeypatch.setattr(bench.subprocess, "run", run)
    out = bench.bench_threads(rounds=2, n_edits=3)
    assert calls == [("threads=auto", False), ("threads=2", False), ("threads=auto", True), ("threads=2", True)] * 2
    assert all(p.poll() is not None for p in busy)  # the busy process is stopped after each loaded block
    assert set(out["idle"]) == set(out["loaded"]) == {"threads=auto", "threads=2", "ratio_cores_over_auto"}
    assert len(out["loaded"]["threads=2"]["runs_s"]) == 2 and out["command"].endswith("edits.n=3 threads=<setting>")

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 2, "", "error: x"))
    with pytest.raises(EditlabError, match="exit 2"):
        bench.bench_threads(rounds=1, n_edits=3)
