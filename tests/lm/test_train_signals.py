"""train.py with real signals and a real console: clean stops resume exactly; output is quiet, JSON strict.

Every run here is a real ``python train.py`` subprocess (or the same config in-process for the
uninterrupted reference), on the session's tiny world with a few 64-token steps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from editlab.runs.reports import training_loss
from editlab.utils.csvlog import log_files, read_csv_log
from editlab.utils.signals import StopOnSignal, graceful_stop

ROOT = Path(__file__).resolve().parents[2]
# ~9 rows of 64 tokens per step; 40 steps, so a signal after the second step lands mid-run; a 40-fact
# probe every 4 steps, so the curve straddles the stop (it must survive the resume)
FAST = ["model.recipe.seq_len=64", "model.recipe.batch_docs=4", "model.recipe.token_budget=23040",
        "probe.n_facts=40", "probe.every_n_steps=4", "progress=false", "logger=csv"]


def _args(world, run_dir: Path, extra: list[str] = ()) -> list[str]:
    fast = [a for a in FAST if a.split("=")[0] not in {e.split("=")[0] for e in extra}]  # extra wins
    return [f"data.cache_dir={world.dir.parent}", f"run_dir={run_dir}", *fast, *extra]


def _env() -> dict:
    """No native bf16 (forced): precision auto must choose fp32, as on the new user's AVX2 machine."""
    src = str(ROOT / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "EDITLAB_CPU_BF16": "0"}


def _run(world, run_dir: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *_args(world, run_dir, list(extra))], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)


def _signalled(world, run_dir: Path, signum: int, extra: list[str] = ()) -> tuple[int, str]:
    """Start train.py, wait until step 4 has been checkpointed (the fit is running, one probe done), send ``signum``."""
    proc = subprocess.Popen([sys.executable, "train.py", *_args(world, run_dir, ["ckpt_every_n_steps=1", *extra])],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def steps_saved() -> int:  # ModelCheckpoint keeps the newest "epoch=0-step=N.ckpt"
        return max((int(f.stem.split("step=")[1]) for f in run_dir.glob("checkpoints/epoch=*-step=*.ckpt")), default=0)

    deadline = time.time() + 300
    while time.time() < deadline and steps_saved() < 4 and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "train.py ended before the signal: " + proc.stderr.read()[-2000:]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def _strict_json(path: Path) -> dict:
    def no_constants(name: str):
        raise AssertionError(f"non-JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=no_constants)


def _assert_quiet_and_fp32(res: subprocess.CompletedProcess, run_dir: Path) -> None:
    """The console of a default run: no third-party tips, deprecations or accelerator chatter; the
    precision decision once; fp32 (no native bf16) recorded in metrics.json and the checkpoint."""
    console = res.stdout + res.stderr
    noisy = [ln for ln in console.splitlines() if "Tip:" in ln or "deprecat" in ln.lower()
             or "GPU available" in ln or "Writing model shards" in ln]
    assert noisy == []
    assert console.count("precision: 32-true (auto;") == 1
    metrics = _strict_json(run_dir / "metrics.json")
    assert metrics["precision"] == "32-true"
    assert metrics["hardware"]["precision"] == "32-true" and metrics["hardware"]["cpu_native_bf16"] is False
    assert _strict_json(run_dir / "model" / "editlab.json")["metrics"]["precision"] == "32-true"


def test_sigterm_saves_a_resumable_checkpoint_and_the_resume_ends_like_an_uninterrupted_run(tiny_world, tmp_path):
    run = tmp_path / "stopped"
    rc, err = _signalled(tiny_world, run, signal.SIGTERM)
    assert rc == 143, err[-2000:]
    # the checkpoint was written by StopOnSignal at a step boundary (not Lightning's handler: exit 0, no state)
    assert f"state saved in {run / 'checkpoints' / 'last.ckpt'}" in err
    assert not (run / "model").exists() and not (run / "metrics.json").exists()
    assert not list(run.glob("checkpoints/*.tmp"))
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 4 <= state["global_step"] < 40, "the signal must land mid-training"
    # acknowledged at once, naming the step it finishes before saving (that step or, at a step boundary, the next)
    said = re.search(r"SIGTERM received: finishing step (\d+), then saving (\S+)", err)
    assert said and int(said[1]) in (state["global_step"], state["global_step"] + 1) and said[2].endswith("last.ckpt")
    assert state["callbacks"]["FactProbe"]["history"][0]["step"] == 4  # the curve so far travels with the state

    resumed = _run(tiny_world, run, ["ckpt_every_n_steps=1", "ckpt_path=last", "progress=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the resumed run's bar names the epoch and has its total from the first resumed step on (Lightning's own runs
    # no epoch-start hook on a resume mid-epoch and shows "Training: 6/?": no total, no time left)
    bars = re.findall(r"(Epoch \d+|Training): *(?:\d+%)?\|[^|]*\| *(\d+)/(\S+?) ", resumed.stdout.replace("\r", "\n"))
    first = next(b for b in bars if int(b[1]) > state["global_step"])
    assert first[0] == "Epoch 0" and first[2].isdigit(), bars[:4]
    assert "is not empty" not in resumed.stderr  # Lightning's "old logs will be deleted": they are kept
    parts = log_files(run / "csv")  # the log before the stop is kept beside the resumed run's
    assert len(parts) == 2 and min(r["step"] for r in read_csv_log(parts[0])) < state["global_step"]
    assert len(training_loss(run / "csv" / "metrics.csv")) == 40 // 10  # logged every 10 steps, across the stop
    full = _run(tiny_world, tmp_path / "full", ["ckpt_every_n_steps=1"])
    assert full.returncode == 0, full.stderr[-2000:]
    a, b = _strict_json(tmp_path / "full" / "metrics.json"), _strict_json(run / "metrics.json")
    assert b["steps"] == a["steps"] == 40
    assert (b["train_loss"], b["gen_acc"], b["curve"]) == (a["train_loss"], a["gen_acc"], a["curve"])
    wa, wb = _weights(tmp_path / "full"), _weights(run)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    _assert_quiet_and_fp32(full, tmp_path / "full")
    _assert_quiet_and_fp32(resumed, run)  # the bar is on here: no chatter either


def test_sigint_stops_with_130_and_a_checkpoint(tiny_world, tmp_path):
    run = tmp_path / "ctrl_c"
    rc, err = _signalled(tiny_world, run, signal.SIGINT)
    assert rc == 130, err[-2000:]
    assert "interrupted (SIGINT; state saved in" in err
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "model").exists() and not (run / "metrics.json").exists()


class _Tiny(L.LightningModule):
    def __init__(self, seen: list) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 1)
        self.seen = seen

    def training_step(self, batch, batch_idx):
        self.seen.append(signal.getsignal(signal.SIGTERM))
        return self.w(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, callbacks: list) -> list:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, default_root_dir=str(tmp_path))
    trainer.fit(_Tiny(seen := []), data)
    return seen


class _SignalAtTrainEnd(L.Callback):
    """Sends SIGTERM to this process while finishing up (as a signal during pretraining's final probe would)."""

    def on_train_end(self, trainer, pl_module) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_stop_on_signal_replaces_lightnings_handler_for_the_fit_and_restores_the_outer_one(tmp_path):
    stop = StopOnSignal(tmp_path / "last.ckpt")
    with graceful_stop():
        outer = signal.getsignal(signal.SIGTERM)
        seen = _fit(tmp_path, [stop])
        # not Lightning's stale handler (which would also run its SIGTERM notifier after the fit)
        assert signal.getsignal(signal.SIGTERM) == outer
    assert seen and all(h == stop._note for h in seen)


def test_a_signal_after_the_last_step_is_not_lost(tmp_path):
    """Noted after the last batch: the fit saves and raises instead of finishing as if nothing happened."""
    from editlab.utils.signals import Interrupted

    with graceful_stop(), pytest.raises(Interrupted) as caught:
        _fit(tmp_path, [_SignalAtTrainEnd(), StopOnSignal(tmp_path / "last.ckpt")])
    assert caught.value.exit_code == 143 and caught.value.checkpoint == tmp_path / "last.ckpt"
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 3
