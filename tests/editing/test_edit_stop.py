"""Clean stops of edit.py with real signals: exit 128+signum, nothing that looks complete, and a re-run that
resumes to the same results as an uninterrupted run (single/batch: the partial results file; sequential:
``last.ckpt`` written after the current edit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.editing.test_edit_run import FAST, ROOT, _records, _weights


def _start(world, ckpt: Path, run_dir: Path, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "edit.py", f"data.cache_dir={world.dir.parent}", f"checkpoint={ckpt}",
           f"run_dir={run_dir}", *FAST, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _run(world, ckpt: Path, run_dir: Path, extra: list[str], log: Path) -> int:
    proc = _start(world, ckpt, run_dir, extra, log)
    return proc.wait(timeout=900)


def _wait(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time_s", "peak_mem_mb")} for r in records]


def _summary(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["summary"]


def test_sigint_during_batch_edits_keeps_the_partial_results_and_resumes(tiny_world, ckpt, tmp_path):
    args = ["edits.mode=batch", "edits.batch_size=2", "edits.n=24"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert _run(tiny_world, ckpt, full, args, tmp_path / "full.log") == 0, (tmp_path / "full.log").read_text()
    log = tmp_path / "stopped.log"
    proc = _start(tiny_world, ckpt, stopped, args, log)
    _wait(proc, lambda: _lines(stopped / "results.jsonl.partial") >= 4)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    assert "interrupted (SIGINT)" in log.read_text()
    assert not (stopped / "results.jsonl").exists() and not (stopped / "metrics.json").exists()
    n = _lines(stopped / "results.jsonl.partial")
    assert 4 <= n < 24 and n % 2 == 0  # whole batches only
    assert _run(tiny_world, ckpt, stopped, args, tmp_path / "resume.log") == 0, (tmp_path / "resume.log").read_text()
    assert _strip(_records(stopped)) == _strip(_records(full))
    assert _summary(stopped) == _summary(full)


def test_sigterm_during_a_sequential_stream_checkpoints_after_the_edit_and_resumes(tiny_world, ckpt, tmp_path):
    args = ["edits.mode=sequential", "edits.n=16", "edits.eval_every=4", "edits.ckpt_every=100"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert _run(tiny_world, ckpt, full, args, tmp_path / "full.log") == 0, (tmp_path / "full.log").read_text()
    log = tmp_path / "stopped.log"
    proc = _start(tiny_world, ckpt, stopped, args, log)
    # ckpt_every=100 never saves during this stream: the only checkpoint is the one the stop writes
    _wait(proc, lambda: _lines(stopped / "results.jsonl.partial") >= 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
    assert "interrupted (SIGTERM" in log.read_text()
    last = stopped / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert not (stopped / "results.jsonl").exists() and not (stopped / "metrics.json").exists()
    assert not (stopped / "model").exists()
    done = len(torch.load(last, map_location="cpu", weights_only=False)["editlab"]["applied"])
    assert 3 <= done < 16 and _lines(stopped / "results.jsonl.partial") == done  # stopped after a whole edit
    assert _run(tiny_world, ckpt, stopped, args, tmp_path / "resume.log") == 0, (tmp_path / "resume.log").read_text()
    assert _strip(_records(stopped)) == _strip(_records(full))
    assert _summary(stopped) == _summary(full)
    assert (stopped / "curve.jsonl").read_text() == (full / "curve.jsonl").read_text()
    assert torch.equal(_weights(stopped / "model"), _weights(full / "model"))
