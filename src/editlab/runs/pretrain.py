"""``pretrain(run)``: the library function behind ``python train.py`` (task=pretrain).

One typed :class:`PretrainRun` (no DictConfig): the entry script composes and validates the config.
Layout of a run directory (predictable, so ``ckpt_path=last`` finds it again)::

    <run_dir>/checkpoints/last.ckpt   Lightning state for resuming (not for loading models)
    <run_dir>/csv/ or wandb/          logs (train/loss, train/lr, probe/gen_acc, probe/prob_coherence)
    <run_dir>/model/                  the exported, self-describing checkpoint (safetensors)
    <run_dir>/metrics.json            final metrics and the probe curve (Figure 3), strict JSON

Written only by a run that finished: a SIGTERM / SIGINT ends the current optimizer step, saves
``last.ckpt`` atomically and raises :class:`~editlab.utils.signals.Interrupted` (exit 143 / 130) with
no ``model/`` and no ``metrics.json``; ``ckpt_path=last`` resumes it to the same result.
"""

from __future__ import annotations

import json
import math
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint

from editlab.errors import EditlabError
from editlab.lm.checkpoint import export_checkpoint
from editlab.lm.datamodule import PackedDataModule
from editlab.lm.module import PretrainModule
from editlab.lm.packing import Corpus
from editlab.lm.precision import resolve_and_log
from editlab.lm.presets import Arch, Recipe, build_model
from editlab.runs.eta import RunPlan
from editlab.runs.fact_probe import FactProbe
from editlab.utils import hardware
from editlab.utils.csvlog import keep_csv_logs_on_resume
from editlab.utils.jsonio import strict, write_json
from editlab.utils.progress import RunProgressBar
from editlab.utils.rundir import prepare
from editlab.utils.signals import StopOnSignal
from editlab.world.loading import World


@dataclass(frozen=True)
class Plan:
    """Derived sizes of a run: rows of ``seq_len`` per step, tokens per step, optimizer steps."""

    rows_per_step: int
    tokens_per_step: int
    n_steps: int


def plan(recipe: Recipe, mean_framed_doc: float, world_size: int = 1, max_steps: int | None = None) -> Plan:
    """``batch_docs`` documents' worth of tokens per step (packed), rounded to whole rows per rank."""
    rows = max(world_size, round(recipe.batch_docs * mean_framed_doc / recipe.seq_len))
    rows = math.ceil(rows / world_size) * world_size
    tokens = rows * recipe.seq_len
    steps = math.ceil(recipe.token_budget / tokens)
    return Plan(rows, tokens, min(steps, max_steps) if max_steps else steps)


def resolve_resume(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last`` -> the run's last.ckpt; a path must exist and be a readable checkpoint archive."""
    if ckpt_path is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise EditlabError(f"no checkpoint to resume at {path}; run without ckpt_path to start a new run")
    if not zipfile.is_zipfile(path):
        raise EditlabError(f"checkpoint {path} is corrupt or truncated; delete it and resume from an older one "
                           "or start again without ckpt_path")
    return str(path)


IGNORED_KEYS = ("ckpt_path", "overwrite", "progress", "threads", "logger")  # resume, display, logging: same model


def finished_run(run_dir: Path, run_config: dict, overwrite: bool) -> dict | None:
    """Metrics of a finished run in ``run_dir`` made with the same config (ignoring resume/display keys).

    A finished run with a *different* config is an error unless ``overwrite``: a researcher who changed
    a hyper-parameter must not silently get the old model back, nor lose it by accident.
    """
    if prepare(run_dir, run_config, ignore=IGNORED_KEYS, overwrite=overwrite, done=("metrics.json",),
               config_name="model/run_config.yaml", record=False) != "done":
        return None
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics.pop("curve", None)
    return {**metrics, "reused": True}


@dataclass(frozen=True)
class PretrainRun:
    """One pretraining run, built once by ``train.py`` from the composed config (paths absolute).

    Attributes:
        world: the opened world (corpus, facts for the probe).
        arch: the architecture of a fresh model (``None`` with ``hf_path``).
        recipe: the training recipe (batch, schedule, sequence length, token budget).
        run_dir: where the run writes (predictable, so ``ckpt_path=last`` finds it again).
        seed: seeds the model, the batches and the probe's facts.
        trainer_kwargs: Lightning Trainer settings (``conf/trainer/``); ``precision: auto`` is resolved here.
        loggers: Lightning loggers.
        run_config: the resolved config, exported with the model and compared on reuse.
        hf_path: continue pretraining a local Hugging Face model instead of building ``arch``.
        probe_facts, probe_every: the Figure 3 probe: facts scored, every this many steps.
        ckpt_every: a Lightning checkpoint every this many steps.
        ckpt_path: ``last`` (or a path) to resume.
        compile: ``torch.compile`` the model.
        max_steps: cap the recipe's number of steps.
        progress: show a progress bar.
        overwrite: redo a finished run, or one with another config, in ``run_dir``.
    """

    world: World
    arch: Arch | None
    recipe: Recipe
    run_dir: Path
    seed: int
    trainer_kwargs: dict
    loggers: list
    run_config: dict
    hf_path: str | None = None
    probe_facts: int = 500
    probe_every: int = 200
    ckpt_every: int = 100
    ckpt_path: str | None = None
    compile: bool = False
    max_steps: int | None = None
    progress: bool = True
    overwrite: bool = False


def pretrain(run: PretrainRun) -> dict:
    """Pretrain (or resume), export the final model, return final metrics. A finished run with the same
    config is reused (see :func:`finished_run`), with or without ``ckpt_path`` (a finished run has nothing left to
    resume; its loggers are not replayed)."""
    world, arch, recipe, seed, trainer_kwargs, loggers = (run.world, run.arch, run.recipe, run.seed,
                                                           run.trainer_kwargs, run.loggers)
    run_config, hf_path, ckpt_path, progress, max_steps = (run.run_config, run.hf_path, run.ckpt_path, run.progress,
                                                           run.max_steps)
    run_dir = Path(run.run_dir)
    if (done := finished_run(run_dir, run_config, run.overwrite)) is not None:  # also with ckpt_path: nothing to resume
        return done
    resume = resolve_resume(ckpt_path, run_dir)
    keep_csv_logs_on_resume(loggers, resume is not None)  # the loss curve before the stop stays (reports read it)
    # decided once, here: "auto" becomes bf16-mixed or 32-true for the machine it runs on (logged, and recorded below)
    precision = resolve_and_log(trainer_kwargs.get("precision", "auto"),
                                str(trainer_kwargs.get("accelerator", "auto")))
    trainer_kwargs = {**trainer_kwargs, "precision": precision}
    L.seed_everything(seed, workers=True, verbose=False)
    meta = world.tokens_meta
    if hf_path is not None:
        from editlab.lm.checkpoint import load_hf

        # from_pretrained returns eval mode; training mode as for a fresh model (Lightning warns otherwise)
        model = load_hf(hf_path, meta["vocab_size"]).train()
    else:
        model = build_model(arch, meta["vocab_size"], meta["bos_id"], meta["eos_id"], meta["pad_id"])
    probe = FactProbe(world.dir, n_facts=run.probe_facts, every_n_steps=run.probe_every, seed=seed)
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, every_n_train_steps=run.ckpt_every,
                           save_top_k=1, enable_version_counter=False)
    # StopOnSignal after the probe: a step's probe point is logged before a signal stops the run there
    stop = StopOnSignal(run_dir / "checkpoints" / "last.ckpt", at="batch")
    # the bar redraws every step: at ~90 s a step (mistral_83m on a CPU) a bar every 10 steps showed no rate for 15 min
    callbacks = [ckpt, probe, stop] + ([RunProgressBar(refresh_rate=1)] if progress else [])
    try:
        trainer = L.Trainer(max_epochs=-1, logger=loggers, callbacks=callbacks,
                            default_root_dir=str(run_dir), num_sanity_val_steps=0, limit_val_batches=0,
                            enable_progress_bar=progress, log_every_n_steps=10, enable_model_summary=False,
                            use_distributed_sampler=False,  # StreamBatches shards rows per rank itself
                            gradient_clip_val=recipe.clip, gradient_clip_algorithm="norm",
                            **trainer_kwargs)
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise EditlabError(f"bad trainer settings ({str(exc).splitlines()[0]}); see conf/trainer/*.yaml") from None
    # the plan needs the resolved number of ranks (devices=-1 means all GPUs)
    corpus = Corpus.open(world.dir)
    p = plan(recipe, corpus.mean_framed_doc(), trainer.world_size, max_steps)
    trainer.fit_loop.epoch_loop.max_steps = p.n_steps
    name = (run_config.get("model") or {}).get("name") or "the model"
    trainer.callbacks.append(RunPlan(p.n_steps, p.tokens_per_step, f"pretraining {name}"))  # hooks read the list live
    dm = PackedDataModule(corpus, recipe.seq_len, p.rows_per_step, p.n_steps, seed)
    module = PretrainModule(model, recipe, p.n_steps, p.tokens_per_step, compile=run.compile)
    # Lightning cannot see that StreamBatches resumes at the optimizer step (tested bit-exact), and would
    # warn that a mid-epoch resume is unreliable
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    if resume is not None:  # resuming into the run's own checkpoint directory is the point, not a mistake
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}
    final = probe.history[-1] if probe.history else probe.score(model)
    metrics = {"gen_acc": final["gen_acc"], "prob_coherence": final["prob_coherence"], "steps": trainer.global_step,
               "tokens": trainer.global_step * p.tokens_per_step, "rows_per_step": p.rows_per_step,
               "tokens_per_step": p.tokens_per_step, "wall_s": round(wall, 1),
               # loss of the last optimizer step (what the resume test compares bit for bit)
               "train_loss": float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan")))),
               "precision": precision, "hardware": hardware.describe(precision)}
    # strict: the checkpoint's editlab.json holds these metrics too (null, never NaN)
    out = export_checkpoint(model, world.dir, run_dir / "model", run_config, world.hash, strict(metrics))
    write_json(run_dir / "metrics.json", {**metrics, "checkpoint": str(out), "curve": probe.history})
    return {**metrics, "checkpoint": str(out)}
