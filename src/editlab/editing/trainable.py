"""The optional trainable-editor interface (MEND, MALMEN, SERAC; methods.md, "Meta-learned editors").

A trainable editor is an :class:`~editlab.editing.base.EditMethod` with three more pieces:

- :meth:`TrainableEditor.training_module`: the LightningModule that meta-trains it on a base model;
- :class:`MetaDataModule`: meta-training examples (editing/meta_data.py: the edit, its equivalents,
  locality facts) of the world's ``meta`` split (subjects disjoint from the evaluation cases, world.md),
  split into train/val by a seeded shuffle of *subjects*, so no validation edit shares a subject with a
  training edit (nor a locality fact);
- an editor checkpoint directory (:func:`save_editor` / :func:`read_editor`): ``editor.safetensors`` +
  ``editor.json`` recording the method, its hyper-parameters, the training config and the ``model_id``
  of the base model it was trained on. :meth:`TrainableEditor.prepare` loads it from
  ``ctx.editor_path`` and refuses an editor trained on another model with the command that trains the
  right one.

``python train.py task=editor method=<name>`` runs :func:`editlab.editing.train_editor.train_editor`.
"""

from __future__ import annotations

import json
import random
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditContext, EditMethod
from editlab.editing.meta_data import MetaBatch, MetaDataOptions, meta_examples
from editlab.errors import EditlabError
from editlab.utils.atomic import atomic_directory

EDITOR_WEIGHTS = "editor.safetensors"
EDITOR_INFO = "editor.json"
FORMAT = "editlab-editor-1"


@dataclass(frozen=True)
class EditorTraining:
    """Method-independent meta-training settings (``train.yaml``'s ``editor`` node).

    Attributes:
        max_steps: optimizer steps.
        batch_size: edit cases per step.
        val_fraction: share of the meta split's subjects held out for validation.
        val_every: validate every this many steps.
        n_locality: locality facts per example (editing/meta_data.py).
        soft_downstream: add downstream facts with the agent's posterior as soft targets.
    """

    max_steps: int = 500
    batch_size: int = 8
    val_fraction: float = 0.1
    val_every: int = 100
    n_locality: int = 4
    soft_downstream: bool = False

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.val_every < 1:
            raise EditlabError("editor: max_steps, batch_size and val_every must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise EditlabError("editor.val_fraction must be in (0, 1)")
        self.data_options()  # validated here, where the config is read

    def data_options(self) -> MetaDataOptions:
        """How the meta-training examples are built."""
        return MetaDataOptions(self.n_locality, self.soft_downstream)


def split_by_subject(cases: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val) cases: a seeded shuffle of the distinct subjects, the first ``val_fraction`` held out."""
    subjects = sorted({c["subject"] for c in cases})
    if len(subjects) < 2:
        raise EditlabError("the meta split needs cases of at least 2 subjects; build a world with more meta cases")
    random.Random(seed).shuffle(subjects)
    held = set(subjects[: max(1, round(val_fraction * len(subjects)))])
    return [c for c in cases if c["subject"] not in held], [c for c in cases if c["subject"] in held]


class MetaDataModule(L.LightningDataModule):
    """Batches (:class:`~editlab.editing.meta_data.MetaBatch`) of meta-training examples; the training module
    builds its tensors.

    Examples of each split are built from that split's cases only, so locality facts of a training
    example never belong to a validation subject.
    """

    def __init__(self, cases: list[dict], batch_size: int, val_fraction: float, seed: int,
                 options: MetaDataOptions | None = None) -> None:
        super().__init__()
        options = options or MetaDataOptions()
        train, val = split_by_subject(cases, val_fraction, seed)
        self.train_cases, self.val_cases = meta_examples(train, options, seed), meta_examples(val, options, seed)
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_cases, batch_size=self.batch_size, shuffle=True, generator=gen,
                          collate_fn=MetaBatch, drop_last=len(self.train_cases) >= self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_cases, batch_size=self.batch_size, shuffle=False, collate_fn=MetaBatch)


@dataclass
class TrainableEditor(EditMethod):
    """An editing method with learned parameters, trained by ``python train.py task=editor method=<name>``."""

    trainable: ClassVar[bool] = True

    @abstractmethod
    def training_module(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        training: EditorTraining) -> L.LightningModule:
        """The LightningModule that meta-trains this editor on ``base`` (frozen) from batches of meta cases."""

    @abstractmethod
    def editor_state(self, module: L.LightningModule) -> dict[str, torch.Tensor]:
        """The learned editor weights of a trained :meth:`training_module` (what the checkpoint stores)."""

    @abstractmethod
    def load_editor(self, state: dict[str, torch.Tensor]) -> None:
        """Install learned editor weights (from :meth:`editor_state` via the checkpoint)."""

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        """Load the trained editor at ``ctx.editor_path``, which must have been trained on ``ctx.model_id``."""
        if ctx.editor_path is None:
            raise EditlabError(f"method {self.name} needs a trained editor: run python train.py task=editor "
                               f"method={self.name} (same data/model/seed as the edited model), then pass "
                               "editor_path=<its editor directory>")
        self.load_editor(read_editor(Path(ctx.editor_path), self.name, ctx.model_id))


def save_editor(out: Path, method: TrainableEditor, state: dict[str, torch.Tensor], base_model_id: str,
                config: dict, metrics: dict) -> Path:
    """Write the editor checkpoint directory ``out`` atomically (safetensors + editor.json)."""
    from editlab.editing.export import method_hparams_of

    out = Path(out)
    info = {"format": FORMAT, "method": method.name, "hparams": method_hparams_of(method),
            "base_model_id": base_model_id, "config": config, "metrics": metrics}
    if out.exists():
        import shutil

        shutil.rmtree(out)
    with atomic_directory(out, base_model_id) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / EDITOR_WEIGHTS))
        (tmp / EDITOR_INFO).write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
    return out


def editor_info(path: Path) -> dict:
    """``editor.json`` of an editor checkpoint directory (clear error if it is not one)."""
    f = Path(path) / EDITOR_INFO
    if not f.is_file():
        raise EditlabError(f"{path} is not an editor checkpoint (no {EDITOR_INFO}); point editor_path to the "
                           "directory python train.py task=editor printed")
    return json.loads(f.read_text())


def read_editor(path: Path, method: str, model_id: str) -> dict[str, torch.Tensor]:
    """The editor weights at ``path``, checked to belong to ``method`` and to the base model ``model_id``."""
    info = editor_info(path)
    if info.get("method") != method:
        raise EditlabError(f"editor {path} was trained for method {info.get('method')}, not {method}; train one "
                           f"with: python train.py task=editor method={method}")
    if info.get("base_model_id") != model_id:
        cfg = info.get("config") or {}
        hint = " ".join(f"{k}={v}" for k, v in (("data", (cfg.get("data") or {}).get("name")),
                                                   ("model", (cfg.get("model") or {}).get("name"))) if v)
        raise EditlabError(f"editor {path} was trained on model {info.get('base_model_id')}, but this run edits model "
                           f"{model_id or '<unknown>'}; train an editor for it: python train.py task=editor "
                           f"method={method} {hint + ' ' if hint else ''}seed=<the edited model's seed>")
    return load_file(str(Path(path) / EDITOR_WEIGHTS))
