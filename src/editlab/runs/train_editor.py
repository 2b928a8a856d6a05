"""``train_editor(run)``: the library function behind ``python train.py task=editor method=<name>``.

Meta-trains a :class:`~editlab.editing.trainable.TrainableEditor` on a pretrained checkpoint with the
world's ``meta`` split as a Lightning run and writes the editor checkpoint (trainable.py) that ``edit.py``
loads. Plain typed arguments only; same seed + config -> same editor. Layout (``out`` is
:func:`~editlab.runs.editors.default_editor_dir` unless ``editor.out`` says otherwise)::

    <out>/                                the editor (atomic): editor.safetensors, editor.json, meta_training.png
    <out>-training/run_config.yaml        the config these checkpoints belong to
    <out>-training/checkpoints/best.ckpt  the best validation state so far (highest ``val/edit_success``, or the
                                          lowest ``val/loss`` with ``editor.monitor=loss``)
    <out>-training/checkpoints/last.ckpt  the state to resume from (every validation, and on SIGTERM / SIGINT)
    <out>-training/csv/metrics.csv        the CSV log (always kept: the curves figure is drawn from it)
    <out>-training/wandb/                 with logger=wandb (offline unless logged in)

- **What is exported**: the editor state of the *best validation checkpoint* (the step with the highest
  ``val/edit_success``, the first one on ties), not the last step's: meta-training can overfit the
  training subjects, and early stopping only ends the run ``patience`` validations after the best one.
  ``editor.json``'s metrics are that validation's (``best_step``), plus the run's steps, wall time,
  precision and hardware.
- **Early stopping** on ``val/edit_success`` (``editor.patience`` validations without a rise of more
  than ``editor.min_delta``).
- **Resume**: a SIGTERM / SIGINT ends the current step, writes ``last.ckpt`` atomically and exits 143 /
  130 (:class:`~editlab.utils.signals.StopOnSignal`); ``ckpt_path=last`` continues from it with the batch
  of the restored step (:class:`~editlab.editing.trainable.MetaDataModule`), to the same editor as an
  uninterrupted run.
- **DDP**: ``editor.batch_size`` is the global batch; each rank takes its slice, so ``trainer=ddp`` runs
  the single-process recipe. Only rank 0 writes files.
- **Precision**: ``auto`` is bf16-mixed only where the hardware computes bf16 (lm/precision.py).
- **Checkpoint size**: parameters that do not train (the frozen base model) are left out of the
  Lightning checkpoints (:class:`FrozenOut`); they are the checkpoint's base model, loaded again anyway.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.benchmarks import read_benchmark
from editlab.editing.base import EditMethod
from editlab.editing.trainable import (
    LOGGED,
    MONITORS,
    EditorTraining,
    MetaDataModule,
    TrainableEditor,
    editor_info,
    save_editor,
)
from editlab.errors import EditlabError
from editlab.lm.checkpoint import load_checkpoint, model_id
from editlab.lm.hf import load_hf_for_editing
from editlab.lm.precision import resolve_and_log
from editlab.runs.benchmark_edit import BenchmarkData
from editlab.runs.pretrain import resolve_resume
from editlab.utils import hardware
from editlab.utils.csvlog import keep_csv_logs_on_resume, log_files, read_csv_log
from editlab.utils.jsonio import strict
from editlab.utils.progress import RunProgressBar
from editlab.utils.rundir import prepare
from editlab.utils.signals import StopOnSignal
from editlab.world.loading import World

CURVES = "meta_training.png"
IGNORED_KEYS = ("ckpt_path", "overwrite", "progress", "logger")


def training_dir(out: Path) -> Path:
    """The meta-training run directory of the editor at ``out`` (checkpoints, logs): ``<out>-training``."""
    out = Path(out)
    return out.with_name(f"{out.name}-training")


class ValidationLog(Callback):
    """Keeps every validation's metrics (resumable: part of the checkpoint) and checks the module logs them.

    The check turns a training module that forgot a metric of :data:`~editlab.editing.trainable.LOGGED`
    into one clear error at the first validation, before ModelCheckpoint / EarlyStopping need it.
    """

    def __init__(self, method: str, monitor: str = "val/edit_success", mode: str = "max") -> None:
        self.method, self.monitor, self.mode = method, monitor, mode
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        missing = [k for k in dict.fromkeys((*LOGGED, self.monitor)) if k not in m]
        if missing:
            raise EditlabError(f"method {self.method}'s training module did not log {', '.join(missing)}; a "
                               f"TrainableEditor's training module logs {', '.join(LOGGED)}")
        self.history.append({"step": trainer.global_step, **{k: float(v) for k, v in m.items()
                                                             if k.startswith("val/")}})

    def best(self) -> dict[str, float]:
        """The first validation with the best monitored metric (the one ModelCheckpoint keeps)."""
        top = (max if self.mode == "max" else min)(p[self.monitor] for p in self.history)
        return next(p for p in self.history if p[self.monitor] == top)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


class FrozenOut(Callback):
    """Leaves parameters that do not train out of the Lightning checkpoints, and checks a loaded one holds
    exactly the others (the module loads with ``strict_loading=False`` for that reason)."""

    @staticmethod
    def frozen(module: nn.Module) -> set[str]:
        return {n for n, p in module.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for name in self.frozen(pl_module):
            checkpoint["state_dict"].pop(name, None)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        check_state(pl_module, checkpoint["state_dict"])


def check_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``state`` (a checkpoint's) must hold every trainable parameter and buffer of ``module`` and nothing else."""
    expected = set(module.state_dict()) - FrozenOut.frozen(module)
    if set(state) != expected:
        diff = sorted(set(state) ^ expected)
        raise EditlabError(f"the meta-training checkpoint does not match the editor's training module ({len(diff)} "
                           f"keys differ, e.g. {diff[0]}); start again without ckpt_path (or overwrite=true)")


@dataclass(frozen=True)
class FitOptions:
    """How :func:`fit_editor` runs, apart from what it trains.

    Attributes:
        trainer_kwargs: Lightning Trainer settings (default: one CPU process, precision ``auto``).
        loggers: Lightning loggers.
        progress: show a progress bar.
        work_dir: checkpoints go to ``<work_dir>/checkpoints`` (a temporary directory when ``None``).
        resume: a Lightning checkpoint to continue from (``<work_dir>/checkpoints/last.ckpt``).
    """

    trainer_kwargs: dict | None = None
    loggers: list | None = None
    progress: bool = False
    work_dir: Path | None = None
    resume: str | None = None


def fit_editor(method: TrainableEditor, base: nn.Module, tokenizer: PreTrainedTokenizerBase, cases: list[dict],
               training: EditorTraining, seed: int, options: FitOptions | None = None
               ) -> tuple[dict[str, torch.Tensor], dict]:
    """Meta-train ``method`` on ``base`` over meta ``cases``; returns (best validation editor weights, metrics).

    On DDP ranks other than 0 it returns ``({}, {})``.
    """
    options = options or FitOptions()
    if options.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="editor-") as tmp:
            return fit_editor(method, base, tokenizer, cases, training, seed, replace(options, work_dir=Path(tmp)))
    work_dir, progress = options.work_dir, options.progress
    kwargs = {"accelerator": "cpu", "devices": 1, **(options.trainer_kwargs or {})}
    # decided once, here: "auto" becomes bf16-mixed only where the hardware computes bf16 natively
    precision = resolve_and_log(kwargs.get("precision", "auto"), str(kwargs["accelerator"]))
    L.seed_everything(seed, workers=True, verbose=False)
    module = method.training_module(base, tokenizer, training)
    module.strict_loading = False  # FrozenOut: the frozen base is not in the checkpoints
    dm = MetaDataModule(cases, training.batch_size, training.val_fraction, seed, training.data_options())
    dm.check()
    ckpt_dir = Path(work_dir) / "checkpoints"
    monitor, mode = MONITORS[training.monitor]
    log = ValidationLog(method.name, monitor, mode)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           enable_version_counter=False)
    # at every validation (ModelCheckpoint's own save_last only follows a new best)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    callbacks: list[Callback] = [log, FrozenOut(), best, last, StopOnSignal(ckpt_dir / "last.ckpt", at="batch")]
    if training.patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=training.patience,
                                       min_delta=training.min_delta, check_on_train_epoch_end=False))
    if progress:
        callbacks.append(RunProgressBar(refresh_rate=10))
    # validation every ``val_every`` optimizer steps across epochs (check_val_every_n_epoch=None); the last
    # validation is at a multiple of val_every: later steps are never exported (the best validated state is)
    kwargs.update(precision=precision, max_steps=training.max_steps, max_epochs=-1,
                  val_check_interval=min(training.val_every, training.max_steps), check_val_every_n_epoch=None,
                  logger=options.loggers or False, log_every_n_steps=1, callbacks=callbacks,
                  enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                  default_root_dir=str(work_dir),
                  use_distributed_sampler=False)  # MetaDataModule shards every global batch over the ranks itself
    try:
        trainer = L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise EditlabError(f"bad trainer settings ({str(exc).splitlines()[0]}); see conf/trainer/*.yaml") from None
    dm.check(trainer.world_size)
    for msg in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*",
                # the sampler starts at the restored step (tested: a resumed run ends like an uninterrupted one)
                "You're resuming from a checkpoint that ended before the epoch",
                r"Checkpoint directory .* exists and is not empty"):
        warnings.filterwarnings("ignore", message=msg)  # meta cases are a list in memory; the base LM stays in eval
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=options.resume)
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}, {}
    if not best.best_model_path:
        raise EditlabError("meta-training ended before its first validation; use editor.val_every<=editor.max_steps")
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    check_state(module, state)
    module.load_state_dict(state, strict=False)
    top = dict(log.best())
    best_step = top.pop("step")
    metrics = {**top, "best_step": best_step, "steps": trainer.global_step,
               "stopped_early": trainer.global_step < training.max_steps, "wall_s": round(wall, 1),
               "train/loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
               "n_train": len(dm.train_cases), "n_val": len(dm.val_cases), "validation": log.history,
               "precision": precision, "hardware": hardware.describe(precision)}
    return method.editor_state(module), strict(metrics)


def _curves(csv_dir: Path, out: Path) -> None:
    """The meta-training curves (train loss, validation metrics vs step) from the CSV log (all its parts)."""
    from editlab.eval import plots

    # the log's step is the optimizer step's 0-based index; +1 counts steps done, as best_step / global_step do
    points = [{**p, "step": p["step"] + 1} for p in read_csv_log(*log_files(csv_dir))]
    keys = [k for k in ("train/loss", *LOGGED[1:]) if any(k in p for p in points)]
    keys += sorted({k for p in points for k in p if k.startswith("val/")} - set(keys))
    if keys:
        plots.save(plots.curves(points, "step", "optimizer step", keys), out / CURVES)


@dataclass(frozen=True)
class EditorRun:
    """One editor meta-training run, built once by ``train.py task=editor`` from the composed config.

    Attributes:
        world: the opened world (its ``meta`` split trains the editor); None with ``benchmark``.
        checkpoint: the base model's checkpoint directory (with ``benchmark``: any Hugging Face model directory, or
            a hub id in the local cache, edited with its own tokenizer).
        method: the method whose editor is trained (a :class:`TrainableEditor`; any other is refused).
        out_dir: where the editor is written (default: next to ``checkpoint``, where edit.py looks).
        seed: seeds the split, the batches and the editor's initialisation.
        training: the ``editor`` node.
        run_config: the resolved config, recorded in the editor and compared on reuse.
        trainer_kwargs: Lightning Trainer settings.
        loggers: Lightning loggers (a CSV logger is always added).
        progress: show a progress bar.
        overwrite: retrain a finished editor, or one with another config, in ``out_dir``.
        ckpt_path: ``last`` (or a path) to resume the meta-training.
        benchmark: a benchmark file whose cases train the editor instead of the world's meta split (its train
            split: MEND's ``zsre_mend_train.json``, say), split by subject into training and validation cases.
        dtype: the base model's weight precision with ``benchmark`` (``model.dtype``).
    """

    world: World | None
    checkpoint: Path
    method: EditMethod
    out_dir: Path
    seed: int
    training: EditorTraining
    run_config: dict
    trainer_kwargs: dict | None = None
    loggers: list | None = None
    progress: bool = True
    overwrite: bool = False
    ckpt_path: str | None = None
    benchmark: BenchmarkData | None = None
    dtype: str = "float32"


def _source(run: EditorRun) -> tuple[nn.Module, str, PreTrainedTokenizerBase, list]:
    """(base model in eval mode, its model id, its tokenizer, the meta-training cases) of the world's checkpoint and
    meta split, or of a Hugging Face model and a benchmark file."""
    if run.benchmark is not None:
        if getattr(run.method, "scope", "request") != "request":
            raise EditlabError("method.hparams.scope=agent puts the facts the Bayesian agent changes in an edit's "
                               "scope, which exist for the world's cases only; use scope=request with a benchmark")
        if run.training.soft_downstream:
            raise EditlabError("editor.soft_downstream=true trains toward the Bayesian agent's posteriors, which exist "
                               "for the world's cases only; leave it false with a benchmark file")
        loaded = load_hf_for_editing(str(run.checkpoint), run.dtype)
        cases = read_benchmark(run.benchmark.format, run.benchmark.path, **run.benchmark.options)
        return loaded.model, loaded.model_id, loaded.tokenizer, cases
    from transformers import PreTrainedTokenizerFast

    world = run.world
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    return load_checkpoint(run.checkpoint, world.hash).eval(), model_id(run.checkpoint), tok, world.cases("meta")


def train_editor(run: EditorRun) -> dict:
    """Train ``run.method``'s editor on the model at ``run.checkpoint``; write it to ``run.out_dir``; return its
    metrics.

    A finished editor for the same base model and config in ``out_dir`` is reused, one with another config
    refused (utils/rundir.py's rules), unless ``overwrite``. ``ckpt_path="last"`` resumes the meta-training
    in :func:`training_dir` ``(out_dir)``; without it a stopped run starts over.
    """
    method = run.method
    if not isinstance(method, TrainableEditor):
        raise EditlabError(f"method {method.name} has nothing to train; task=editor takes a trainable editor "
                           "(KE, MEND, MALMEN, SERAC)")
    base, mid, tok, cases = _source(run)
    out_dir = Path(run.out_dir)
    work = training_dir(out_dir)
    # only the first process decides and cleans: DDP's other ranks re-run this script while rank 0 trains
    if rank_zero_only.rank == 0:
        if run.overwrite:
            shutil.rmtree(out_dir, ignore_errors=True)
        state = prepare(work, run.run_config, ignore=IGNORED_KEYS, overwrite=run.overwrite,
                        done=(f"../{out_dir.name}/editor.json",))
        if state == "done":
            info = editor_info(out_dir)
            if info.get("base_model_id") != mid:
                raise EditlabError(f"{out_dir} holds an editor trained on model {info.get('base_model_id')}, not "
                                   f"{mid} (the checkpoint changed); pass overwrite=true to retrain it")
            return {**info["metrics"], "editor": str(out_dir), "base_model_id": mid, "reused": True}
        if run.ckpt_path is None:  # a fresh start: no stale checkpoint or log of an earlier, stopped run
            for sub in ("checkpoints", "csv"):
                shutil.rmtree(work / sub, ignore_errors=True)
    resume = resolve_resume(run.ckpt_path, work)
    loggers = list(run.loggers or [])
    if not any(isinstance(lg, CSVLogger) for lg in loggers):
        loggers.append(CSVLogger(save_dir=str(work), name="csv", version=""))
    csv_dir = next(Path(lg.log_dir) for lg in loggers if isinstance(lg, CSVLogger))
    keep_csv_logs_on_resume(loggers, resume is not None)
    state, metrics = fit_editor(method, base, tok, cases, run.training, run.seed,
                                FitOptions(run.trainer_kwargs, loggers, run.progress, work, resume))
    if not state:  # a DDP rank other than 0
        return {}
    save_editor(out_dir, method, state, mid, run.run_config, metrics, extra=lambda tmp: _curves(csv_dir, tmp))
    return {**metrics, "editor": str(out_dir), "base_model_id": mid}
