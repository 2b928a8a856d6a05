"""``train_editor(...)``: the library function behind ``python train.py task=editor method=<name>``.

Meta-trains a :class:`~editlab.editing.trainable.TrainableEditor` on a pretrained checkpoint with the
world's ``meta`` split and writes the editor checkpoint (trainable.py) that ``edit.py`` loads through
``editor_path``. Plain typed arguments only; same seed + config -> same editor.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditMethod
from editlab.editing.trainable import EditorTraining, MetaDataModule, TrainableEditor, editor_info, save_editor
from editlab.errors import EditlabError
from editlab.lm.checkpoint import load_checkpoint, model_id
from editlab.world.loading import World


def fit_editor(method: TrainableEditor, base: nn.Module, tokenizer: PreTrainedTokenizerBase, cases: list[dict],
               training: EditorTraining, seed: int, trainer_kwargs: dict | None = None,
               loggers: list | None = None, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Meta-train ``method`` on ``base`` over meta ``cases``; returns (editor weights, final metrics)."""
    L.seed_everything(seed, workers=True, verbose=False)
    module = method.training_module(base, tokenizer, training)
    dm = MetaDataModule(cases, training.batch_size, training.val_fraction, seed, training.data_options())
    # validation every ``val_every`` optimizer steps across epochs (check_val_every_n_epoch=None)
    kwargs = {"accelerator": "cpu", "devices": 1, **(trainer_kwargs or {}), "max_steps": training.max_steps,
              "max_epochs": -1, "val_check_interval": training.val_every, "check_val_every_n_epoch": None,
              "logger": loggers or False, "log_every_n_steps": 1, "enable_checkpointing": False,
              "enable_progress_bar": progress, "enable_model_summary": False, "num_sanity_val_steps": 0}
    try:
        trainer = L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise EditlabError(f"bad trainer settings ({str(exc).splitlines()[0]}); see conf/trainer/*.yaml") from None
    for msg in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*"):
        warnings.filterwarnings("ignore", message=msg)  # meta cases are a list in memory; the base LM stays in eval
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(steps=trainer.global_step, wall_s=round(time.perf_counter() - t0, 1),
                   n_train=len(dm.train_cases), n_val=len(dm.val_cases))
    return method.editor_state(module), metrics


def train_editor(world: World, checkpoint: Path, method: EditMethod, out_dir: Path, seed: int, training: EditorTraining,
                 run_config: dict, trainer_kwargs: dict | None = None, loggers: list | None = None,
                 progress: bool = True, overwrite: bool = False) -> dict:
    """Train ``method``'s editor on the model at ``checkpoint``; write it to ``out_dir``; return its metrics.

    A finished editor for the same base model and config in ``out_dir`` is reused unless ``overwrite``.
    """
    if not isinstance(method, TrainableEditor):
        raise EditlabError(f"method {method.name} has nothing to train; task=editor takes a trainable editor "
                           "(MEND, MALMEN, SERAC)")
    base = load_checkpoint(checkpoint, world.hash).eval()
    mid = model_id(checkpoint)
    out_dir = Path(out_dir)
    if not overwrite and out_dir.is_dir():
        info = editor_info(out_dir)
        if info.get("base_model_id") == mid and info.get("config") == run_config:
            return {**info["metrics"], "editor": str(out_dir), "base_model_id": mid, "reused": True}
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    state, metrics = fit_editor(method, base, tok, world.cases("meta"), training, seed, trainer_kwargs, loggers,
                                progress)
    save_editor(out_dir, method, state, mid, run_config, metrics)
    return {**metrics, "editor": str(out_dir), "base_model_id": mid}
