"""train.py task=editor: the meta-training run (best checkpoint, early stopping, logs, curves, resume, DDP)
and the bad input around trained editors (edit.py's lookup, another base model, corrupt files, small splits).

The run's mechanics are tested with a scripted editor (its validation metric follows a script, so which
checkpoint is best and when early stopping fires are known in advance); the real signal, resume and DDP
tests run the toy trainable editor (tests/editing/toys.py) through ``tests/editing/toy_train.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from editlab.editing.base import EditHandle
from editlab.editing.registry import get_method
from editlab.editing.trainable import (
    EDITOR_INFO,
    EDITOR_WEIGHTS,
    EditorTraining,
    MetaDataModule,
    TrainableEditor,
    save_editor,
)
from editlab.errors import EditlabError
from editlab.lm.checkpoint import export_checkpoint, model_id
from editlab.runs.editors import default_editor_dir, resolve_editor
from editlab.runs.train_editor import EditorRun, fit_editor, train_editor, training_dir
from editlab.utils.csvlog import log_files, read_csv_log
from editlab.world.loading import World
from tests.conftest import export_random_model
from tests.editing import toys

ROOT = Path(__file__).resolve().parents[2]
TOY_TRAIN = ROOT / "tests" / "editing" / "toy_train.py"


class ScriptedModule(L.LightningModule):
    """Moves one parameter by SGD on (w - 1)^2 and reports the scripted validation metrics."""

    def __init__(self, base: torch.nn.Module, script: list[float], loss_script: list[float] | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)  # frozen: must stay out of the Lightning checkpoints
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.script, self.loss_script = script, loss_script
        self.register_buffer("validations", torch.zeros((), dtype=torch.long))  # resumable position in the script

    def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        loss = (self.w - 1.0) ** 2
        self.log("train/loss", loss, batch_size=len(batch))
        return loss

    def on_validation_epoch_end(self) -> None:
        i = int(self.validations)
        v = self.script[min(i, len(self.script) - 1)]
        self.log_dict({"val/edit_success": v, "val/locality": 1.0 - v / 2})
        if self.loss_script:
            self.log("val/loss", self.loss_script[min(i, len(self.loss_script) - 1)])
        self.validations += 1

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.w], lr=0.1)


@dataclass
class Scripted(TrainableEditor):
    """A trainable editor whose validation edit success follows ``script`` (one value per validation)."""

    name = "scripted"
    script: tuple[float, ...] = (0.5,)
    loss_script: tuple[float, ...] = ()
    w: float | None = None

    def training_module(self, base, tokenizer, training):
        return ScriptedModule(base, list(self.script), list(self.loss_script))

    def editor_state(self, module):
        return {"w": module.w.detach().reshape(1)}

    def load_editor(self, state):
        self.w = float(state["w"][0])

    def apply(self, model, requests, ctx, on_step=None):
        return EditHandle(model)


def _w_after(steps: int) -> float:
    """w after ``steps`` SGD steps (lr 0.1) on (w - 1)^2 from 0, in float32 as the module computes it."""
    w = torch.zeros(())
    for _ in range(steps):
        w = w - 0.1 * 2 * (w - 1.0)
    return float(w)


@pytest.fixture(scope="module")
def trained_ckpt(tiny_world, tmp_path_factory) -> Path:
    """A small random Mistral exported as ``<run>/model`` with the run config train.py would record."""
    run = tmp_path_factory.mktemp("train") / "wikidata_synth_tiny" / "mistral_tiny-s3"
    cfg = {"data": {"name": "wikidata_synth_tiny"}, "model": {"name": "mistral_tiny"}, "seed": 3, "run_dir": str(run)}
    return export_random_model(tiny_world, run / "model", cfg)


FAST = {"val_fraction": 0.02, "batch_size": 2}


def test_monitor_loss_exports_the_lowest_validation_loss(tiny_world, trained_ckpt, tmp_path):
    """editor.monitor=loss: the exported editor is the validation with the lowest val/loss (here the 4th), not the
    highest edit success (the 2nd); a module that logs no val/loss is one error naming it."""
    training = EditorTraining(max_steps=10, val_every=2, patience=None, monitor="loss", **FAST)
    scripted = Scripted(script=(0.2, 0.9, 0.5, 0.4, 0.3), loss_script=(3.0, 2.0, 1.5, 0.5, 0.9))
    m = train_editor(EditorRun(World.open(tiny_world.dir), trained_ckpt, scripted, tmp_path / "editors" / "s", 0,
                               training, {"task": "editor"}, {"precision": "32-true"}, progress=False))
    assert m["best_step"] == 8 and m["val/loss"] == pytest.approx(0.5)
    assert float(load_file(tmp_path / "editors" / "s" / EDITOR_WEIGHTS)["w"]) == pytest.approx(_w_after(8), abs=1e-6)
    with pytest.raises(EditlabError, match="val/loss"):
        train_editor(EditorRun(World.open(tiny_world.dir), trained_ckpt, Scripted(script=(0.5,)),
                               tmp_path / "editors" / "t", 0, training, {"task": "editor"}, {"precision": "32-true"},
                               progress=False))
    with pytest.raises(EditlabError, match=r"editor\.monitor"):
        EditorTraining(monitor="success")


@pytest.mark.parametrize(("script", "patience", "min_delta", "steps", "best_step"), [
    ((0.2, 0.9, 0.5, 0.4, 0.95), 2, 0.0, 8, 4),  # best at the 2nd validation; two without a rise -> stop at 8
    ((0.5, 0.52, 0.54, 0.56, 0.58), 2, 0.05, 6, 6),  # rises below min_delta do not count (best is still the max)
    ((0.2, 0.9, 0.5, 0.4, 0.95), None, 0.0, 12, 10),  # no early stopping: all steps, best at the 5th validation
])
def test_the_best_validation_checkpoint_is_exported_and_early_stopping_fires(
        tiny_world, trained_ckpt, tmp_path, script, patience, min_delta, steps, best_step):
    training = EditorTraining(max_steps=12, val_every=2, patience=patience, min_delta=min_delta, **FAST)
    out = tmp_path / "editors" / "scripted"
    m = train_editor(EditorRun(World.open(tiny_world.dir), trained_ckpt, Scripted(script=script), out, 0, training,
                               {"task": "editor"}, {"precision": "32-true"}, progress=False))
    assert m["steps"] == steps and m["stopped_early"] == (steps < 12)
    assert m["best_step"] == best_step and m["val/edit_success"] == pytest.approx(script[best_step // 2 - 1])
    assert [p["step"] for p in m["validation"]] == list(range(2, steps + 1, 2))
    ckpts = training_dir(out) / "checkpoints"
    best = torch.load(ckpts / "best.ckpt", weights_only=True)
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert (best["global_step"], last["global_step"]) == (best_step, steps)
    assert set(last["state_dict"]) == {"w", "validations"}  # the frozen base model is not in the checkpoints
    exported = load_file(out / EDITOR_WEIGHTS)["w"]
    assert float(exported) == pytest.approx(_w_after(best_step), abs=1e-6)  # the best state, not the last
    assert best_step == steps or float(exported) != pytest.approx(_w_after(steps), abs=1e-6)
    info = json.loads((out / EDITOR_INFO).read_text())
    assert info["base_model_id"] == model_id(trained_ckpt) and info["metrics"]["best_step"] == best_step
    log = read_csv_log(*log_files(training_dir(out) / "csv"))
    assert sum("train/loss" in p for p in log) == steps and sum("val/edit_success" in p for p in log) == steps // 2
    assert (out / "meta_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_editor_is_reused_another_config_refused_overwrite_retrains(tiny_world, trained_ckpt, tmp_path):
    world, out = World.open(tiny_world.dir), tmp_path / "ed"
    training = EditorTraining(max_steps=2, val_every=2, **FAST)
    args = (world, trained_ckpt, Scripted(), out, 0, training)
    first = train_editor(EditorRun(*args, {"seed": 0, "progress": False}, progress=False))
    assert "reused" not in first
    # display keys do not count
    assert train_editor(EditorRun(*args, {"seed": 0, "progress": True}, progress=False))["reused"]
    with pytest.raises(EditlabError, match=r"different config \(seed: 0 -> 1\).*overwrite=true"):
        train_editor(EditorRun(*args, {"seed": 1, "progress": False}, progress=False))
    again = train_editor(EditorRun(*args, {"seed": 1, "progress": False}, progress=False, overwrite=True))
    assert "reused" not in again


def test_a_module_that_does_not_log_the_metrics_is_one_clear_error(tiny_world, trained_ckpt, tmp_path):
    class Silent(ScriptedModule):
        def on_validation_epoch_end(self) -> None:
            self.log("val/edit_success", 0.5)

    class Quiet(Scripted):
        def training_module(self, base, tokenizer, training):
            return Silent(base, [0.5])

    with pytest.raises(EditlabError, match="did not log val/locality"):
        fit_editor(Quiet(), load_checkpoint_(trained_ckpt), None, tiny_world.meta_cases[:80],
                   EditorTraining(max_steps=2, val_every=2, **{**FAST, "val_fraction": 0.2}), seed=0)


def load_checkpoint_(ckpt: Path):
    from editlab.lm.checkpoint import load_checkpoint

    return load_checkpoint(ckpt).eval()


def test_a_meta_split_smaller_than_the_batch_is_one_clear_error(tiny_world, trained_ckpt):
    with pytest.raises(EditlabError, match=r"meta split has \d+ training cases, fewer than editor.batch_size=64"):
        fit_editor(Scripted(), load_checkpoint_(trained_ckpt), None, tiny_world.meta_cases[:60],
                   EditorTraining(max_steps=2, batch_size=64, val_every=2, val_fraction=0.2), seed=0)


def test_ranks_split_every_global_batch_and_a_resume_starts_at_its_step(tiny_world):
    """The data side of DDP and resume: rank r's batch k is its slice of the single-process batch k."""
    from types import SimpleNamespace

    cases = tiny_world.meta_cases[:40]
    index = {c["case_id"]: i for i, c in enumerate(cases)}
    dm = MetaDataModule(cases, 4, 0.25, seed=0)

    def batches(rank: int, world: int, start: int = 0) -> list[list[int]]:
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, max_steps=20, global_step=start)
        return [[index[ex.request.case_id] for ex in b] for b in dm.train_dataloader()]

    single = batches(0, 1)
    assert len(single) == 20 and all(len(b) == 4 for b in single)
    per_epoch = len(dm.train_cases) // 4  # full batches of the training cases, then a new permutation
    assert len({i for b in single[:per_epoch] for i in b}) == per_epoch * 4  # no case twice within an epoch
    assert [a + b for a, b in zip(batches(0, 2), batches(1, 2), strict=True)] == single
    assert batches(0, 1, start=9) == single[9:]
    assert sum(len(b) for b in dm.val_dataloader()) == len(dm.val_cases)
    with pytest.raises(EditlabError, match="must be a multiple of the 3 processes"):
        dm.check(3)


# ---- where edit.py finds the editor, and the bad input around it ----------------------------------------------

def _compose(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=name, overrides=overrides), resolve=True)


def test_train_py_writes_the_editor_where_edit_py_looks_for_it(tmp_path):
    """One definition (default_editor_dir), and the default configs of train.py and edit.py agree on it."""
    common = [f"paths.outputs={tmp_path}", "data=wikidata_synth_tiny", "model=mistral_tiny"]
    train = _compose("train", [*common, "task=editor", "method=lora", "seed=2"])
    edit = _compose("edit", [*common, "method=lora", "model_seed=2"])
    assert train["editor"]["out"] is None and edit["editor_path"] is None
    written = default_editor_dir(Path(train["editor"]["checkpoint"]), "lora")
    assert written == default_editor_dir(Path(edit["checkpoint"]), "lora")
    assert written == Path(train["run_dir"]) / "editors" / "lora"


def test_edit_py_finds_the_default_editor_and_names_the_exact_train_command(tiny_world, trained_ckpt, tmp_path):
    method, mid = toys.ToyLearnedStep(), model_id(trained_ckpt)
    fallback = {"data": "other", "model": "other", "seed": 9}  # the checkpoint's own run config wins
    command = "python train.py task=editor method=toy_learned_step data=wikidata_synth_tiny model=mistral_tiny seed=3"
    with pytest.raises(EditlabError, match=f"no trained editor at .*; train it with: {command}$"):
        resolve_editor(None, method, trained_ckpt, mid, fallback)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EditlabError, match=f"editor_path=.*empty holds no editor; train it with: {command} "):
        resolve_editor(tmp_path / "empty", method, trained_ckpt, mid, fallback)
    default = save_editor(default_editor_dir(trained_ckpt, method.name), method, {"log_step": torch.tensor([0.5])},
                          mid, {}, {})
    assert resolve_editor(None, method, trained_ckpt, mid, fallback) == default
    # preset=paper: the paper's values make another editor, in its own directory, trained with preset=paper
    paper = {**fallback, "preset": {"name": "paper", "tag": "-paper"}}
    with pytest.raises(EditlabError, match=(r"no trained editor at .*editors/toy_learned_step-paper; train it with: "
                                            r"python train.py task=editor method=toy_learned_step preset=paper data=")):
        resolve_editor(None, method, trained_ckpt, mid, paper)
    # a checkpoint that is not its run's model/ directory: the command says which checkpoint to train on
    moved = export_checkpoint(load_checkpoint_(trained_ckpt), tiny_world.dir, tmp_path / "elsewhere" / "model",
                              {"seed": 3}, tiny_world.world["hash"], {}, model_id=mid)
    with pytest.raises(EditlabError, match=(r"method=toy_learned_step data=other model=other seed=3 "
                                            f"editor.checkpoint={moved}$")):
        resolve_editor(None, method, moved, mid, fallback)


def test_an_editor_for_another_base_model_or_a_corrupt_one_is_refused(trained_ckpt, tmp_path):
    method, mid = toys.ToyLearnedStep(), model_id(trained_ckpt)
    other = save_editor(tmp_path / "other", method, {"log_step": torch.tensor([0.5])}, "another-model", {}, {})
    with pytest.raises(EditlabError, match=r"trained on model another-model, but this run edits model .*"
                                           r"python train\.py task=editor method=toy_learned_step data="):
        resolve_editor(other, method, trained_ckpt, mid, {})
    good = save_editor(tmp_path / "good", method, {"log_step": torch.tensor([0.5])}, mid, {}, {})
    weights = good / EDITOR_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-3])  # truncated
    with pytest.raises(EditlabError, match=r"editor.safetensors is corrupt or missing .*train it again with: python"):
        resolve_editor(good, method, trained_ckpt, mid, {})
    (good / EDITOR_INFO).write_text('{"format": "editlab-editor-1", "method": ')
    with pytest.raises(EditlabError, match=r"editor.json is corrupt"):
        resolve_editor(good, method, trained_ckpt, mid, {})
    (good / EDITOR_INFO).write_text("[]")
    with pytest.raises(EditlabError, match=r"not an editor checkpoint of format editlab-editor-1"):
        resolve_editor(good, method, trained_ckpt, mid, {})


# ---- real processes: a signal and resume, DDP -------------------------------------------------------------------

TOY = ["task=editor", "method=toy_learned_step", "editor.batch_size=2", "editor.val_fraction=0.02",
       "editor.patience=null", "progress=false"]


def _env() -> dict:
    """No native bf16 (forced): precision auto chooses fp32, so runs compare bit for bit."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "EDITLAB_CPU_BF16": "0"}


def _toy_args(world, ckpt: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(TOY_TRAIN), *TOY, f"data.cache_dir={world.dir.parent}", f"editor.checkpoint={ckpt}",
            f"editor.out={out}", f"run_dir={out.parent}", *extra]


def _toy_run(world, ckpt: Path, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(_toy_args(world, ckpt, out, extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=900)


def test_sigterm_saves_last_ckpt_and_the_resumed_meta_training_gives_the_same_editor(tiny_world, trained_ckpt,
                                                                                      tmp_path):
    steps = ["editor.max_steps=16", "editor.val_every=4"]
    out = tmp_path / "stopped" / "editor"
    last = training_dir(out) / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_toy_args(tiny_world, trained_ckpt, out, steps), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not last.is_file() and proc.poll() is None:  # the first validation saved it
        time.sleep(0.02)
    assert proc.poll() is None, "the meta-training ended before the signal: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-2000:]
    assert f"state saved in {last}" in err and not out.exists()
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 4 <= stopped_at < 16, "the signal must land mid-training"

    resumed = _toy_run(tiny_world, trained_ckpt, out, [*steps, "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full_out = tmp_path / "full" / "editor"  # uninterrupted, in this process: the library function of the same config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same float reductions
    try:
        with toys.toys_registered():
            method = get_method("toy_learned_step", {"steps": 4})
        training = EditorTraining(max_steps=16, val_every=4, batch_size=2, val_fraction=0.02, patience=None)
        train_editor(EditorRun(World.open(tiny_world.dir), trained_ckpt, method, full_out, 0, training,
                               {"task": "editor"}, {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
                               progress=False))
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(full_out / EDITOR_WEIGHTS), load_file(out / EDITOR_WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ia, ib = (json.loads((d / EDITOR_INFO).read_text())["metrics"] for d in (full_out, out))
    assert (ia["validation"], ia["best_step"], ia["precision"]) == (ib["validation"], ib["best_step"], "32-true")
    # the curve of the resumed run holds every step, before and after the stop, as the uninterrupted one does
    la, lb = (read_csv_log(*log_files(training_dir(d) / "csv")) for d in (full_out, out))
    assert [p["step"] for p in lb if "train/loss" in p] == list(range(16))
    assert [p["train/loss"] for p in la if "train/loss" in p] == [p["train/loss"] for p in lb if "train/loss" in p]


@pytest.mark.slow
def test_ddp_two_cpu_processes_follow_the_single_process_loss_curve(tiny_world, trained_ckpt, tmp_path):
    """trainer=ddp with 2 gloo processes: the same global batch per step, split over the ranks, so the loss
    curve (mean over the global batch, synchronised) follows the single-process run. The toy's locality term
    compares each edit with the other edits *of its rank's batch*, so it is switched off here (c_loc=0): the
    rest of its loss is per edit, as MEND's is with its per-example locality facts."""
    steps = ["editor.max_steps=12", "editor.val_every=6", "editor.batch_size=4", "+method.hparams.c_loc=0.0"]
    single, ddp = tmp_path / "single" / "editor", tmp_path / "ddp" / "editor"
    t0 = time.perf_counter()
    res = _toy_run(tiny_world, trained_ckpt, ddp, [*steps, "trainer=ddp", "trainer.accelerator=cpu",
                                                   "trainer.devices=2"])
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    res = _toy_run(tiny_world, trained_ckpt, single, steps)
    assert res.returncode == 0, res.stderr[-3000:]
    la, lb = (read_csv_log(*log_files(training_dir(d) / "csv")) for d in (single, ddp))
    ca, cb = ([p["train/loss"] for p in log if "train/loss" in p] for log in (la, lb))
    assert len(ca) == len(cb) == 12
    assert ca == pytest.approx(cb, rel=1e-3)
    wa, wb = (float(torch.load(training_dir(d) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"][
        "log_step"]) for d in (single, ddp))
    assert wa == pytest.approx(wb, rel=1e-4)
    assert (ddp / EDITOR_WEIGHTS).is_file() and json.loads((ddp / EDITOR_INFO).read_text())["metrics"]["steps"] == 12
    print(f"ddp meta-training: {wall:.1f} s wall, log_step single {wa:.6f} ddp {wb:.6f}, max loss rel. diff "
          f"{max(abs(x - y) / abs(x) for x, y in zip(ca, cb, strict=True)):.2e}")


MALMEN_DDP = ["task=editor", "method=malmen", "method.hparams.layers=[-2,-1]", "method.hparams.rank=8",
              "method.hparams.alpha_init=0.01", "method.hparams.lr=0.001", "method.hparams.lm_batch=3",
              "method.hparams.net_batch=5", "editor.batch_size=4", "editor.val_fraction=0.02", "editor.max_steps=6",
              "editor.val_every=3", "editor.patience=null", "progress=false"]


def _malmen_run(world, ckpt: Path, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "train.py"), *MALMEN_DDP, f"data.cache_dir={world.dir.parent}",
            f"editor.checkpoint={ckpt}", f"editor.out={out}", f"run_dir={out.parent}", *extra]
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_malmen_ddp_two_cpu_processes_aggregate_the_global_batch(tiny_world, trained_ckpt, tmp_path):
    """MALMEN under trainer=ddp (2 gloo processes): each rank records its 2 edits, the keys and value gradients
    are gathered so both ranks solve the ridge shift of all 4 (as one process does), dL/dS* is summed over the
    ranks. So the loss curve and the trained editor follow the single-process run to float rounding (the LM
    passes are chunked differently: 3 examples per chunk over 4 edits vs 2 per rank)."""
    single, ddp = tmp_path / "single" / "editor", tmp_path / "ddp" / "editor"
    t0 = time.perf_counter()
    res = _malmen_run(tiny_world, trained_ckpt, ddp, ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    res = _malmen_run(tiny_world, trained_ckpt, single, [])
    assert res.returncode == 0, res.stderr[-3000:]
    la, lb = (read_csv_log(*log_files(training_dir(d) / "csv")) for d in (single, ddp))
    ca, cb = ([p["train/loss"] for p in log if "train/loss" in p] for log in (la, lb))
    assert len(ca) == len(cb) == 6 and len(set(ca)) > 1
    assert ca == pytest.approx(cb, rel=1e-4)
    a, b = load_file(single / EDITOR_WEIGHTS), load_file(ddp / EDITOR_WEIGHTS)
    assert a.keys() == b.keys()
    moved = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), moved
    print(f"malmen ddp meta-training: {wall:.1f} s wall, max editor weight diff {moved:.2e}")
