"""The optional trainable-editor interface (KE, MEND, MALMEN, SERAC; methods.md, "Meta-learned editors").

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

Where a run finds or writes an editor is run plumbing, not part of the method: ``python train.py
task=editor method=<name>`` runs :func:`editlab.runs.train_editor.train_editor` and writes the editor to
:func:`editlab.runs.editors.default_editor_dir` of the base checkpoint, where ``edit.py`` looks for it when
``editor_path`` is unset (:func:`editlab.runs.editors.resolve_editor`).
"""

from __future__ import annotations

import json
import random
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from editlab.benchmarks import BenchmarkCase
from editlab.editing.base import EditContext, EditMethod, method_hparams_of
from editlab.editing.meta_data import MetaBatch, MetaDataOptions, benchmark_examples, meta_examples
from editlab.errors import EditlabError
from editlab.utils.atomic import atomic_directory

EDITOR_WEIGHTS = "editor.safetensors"
EDITOR_INFO = "editor.json"
FORMAT = "editlab-editor-1"
MONITOR = "val/edit_success"  # the validation edit metric: best checkpoint, early stopping (the default monitor)
LOGGED = ("train/loss", MONITOR, "val/locality")  # what every training module logs (TrainableEditor.training_module)
MONITORS = {"edit_success": (MONITOR, "max"), "loss": ("val/loss", "min")}
"""``editor.monitor`` -> (the validation metric that picks the exported editor and stops early, its direction):
``loss`` is the validation meta-loss, what the editor is trained on (with ``soft_downstream``, the downstream
targets included), for objectives that edit success alone does not see."""


@dataclass(frozen=True)
class EditorTraining:
    """Method-independent meta-training settings (``train.yaml``'s ``editor`` node).

    Attributes:
        max_steps: optimizer steps.
        batch_size: edit cases per step.
        val_fraction: share of the meta split's subjects held out for validation.
        val_every: validate every this many steps.
        patience: stop after this many validations without an improvement of ``val/edit_success``
            (``null``: never stop early).
        min_delta: the smallest rise of ``val/edit_success`` that counts as an improvement.
        n_locality: locality facts per example (editing/meta_data.py).
        soft_downstream: add downstream facts with the agent's posterior as soft targets.
        monitor: which validation metric picks the exported editor and drives early stopping (:data:`MONITORS`).
    """

    max_steps: int = 500
    batch_size: int = 8
    val_fraction: float = 0.1
    val_every: int = 100
    patience: int | None = 5
    min_delta: float = 0.0
    n_locality: int = 4
    soft_downstream: bool = False
    monitor: str = "edit_success"

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise EditlabError(f"editor.monitor={self.monitor} must be one of {', '.join(MONITORS)}")
        if self.max_steps < 1 or self.batch_size < 1 or self.val_every < 1:
            raise EditlabError("editor: max_steps, batch_size and val_every must be >= 1")
        if (self.patience is not None and self.patience < 1) or self.min_delta < 0:
            raise EditlabError("editor.patience must be >= 1 (or null: no early stopping) and editor.min_delta >= 0")
        if not 0 < self.val_fraction < 1:
            raise EditlabError("editor.val_fraction must be in (0, 1)")
        self.data_options()  # validated here, where the config is read

    def data_options(self) -> MetaDataOptions:
        """How the meta-training examples are built."""
        return MetaDataOptions(self.n_locality, self.soft_downstream)


def _subject(case: dict | BenchmarkCase) -> str:
    return case.subject if isinstance(case, BenchmarkCase) else case["subject"]


def split_by_subject(cases: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val) cases (world case records or benchmark cases): a seeded shuffle of the distinct subjects, the
    first ``val_fraction`` held out."""
    subjects = sorted({_subject(c) for c in cases})
    if len(subjects) < 2:
        raise EditlabError("the meta split needs cases of at least 2 subjects; build a world with more meta cases")
    random.Random(seed).shuffle(subjects)
    held = set(subjects[: max(1, round(val_fraction * len(subjects)))])
    return [c for c in cases if _subject(c) not in held], [c for c in cases if _subject(c) in held]


class Shuffled(torch.utils.data.Dataset):
    """``items`` addressed by (epoch, i): item ``i`` of a seeded permutation per epoch (for StreamBatches)."""

    def __init__(self, items: list, seed: int) -> None:
        self.items, self.seed = items, seed
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        if epoch != self._epoch:
            self._order = torch.randperm(len(self.items), generator=torch.Generator().manual_seed(self.seed * 7919
                                                                                                 + epoch))
            self._epoch = epoch
        return self.items[int(self._order[i])]


class MetaDataModule(L.LightningDataModule):
    """Batches (:class:`~editlab.editing.meta_data.MetaBatch`) of meta-training examples; the training module
    builds its tensors.

    Training batches are global batch ``k`` = step ``k`` of a seeded stream (a new permutation per
    epoch; lm.packing.StreamBatches), so they are the same under DDP (each rank takes its slice of
    every global batch: ``batch_size`` is the global batch) and a resumed run continues with the batch
    of its restored step. Validation cases are split over ranks (rank r takes every r-th).

    Examples of each split are built from that split's cases only, so locality facts of a training
    example never belong to a validation subject.
    """

    def __init__(self, cases: list[dict], batch_size: int, val_fraction: float, seed: int,
                 options: MetaDataOptions | None = None) -> None:
        super().__init__()
        options = options or MetaDataOptions()
        train, val = split_by_subject(cases, val_fraction, seed)
        build = benchmark_examples if cases and isinstance(cases[0], BenchmarkCase) else meta_examples
        self.train_cases, self.val_cases = build(train, options, seed), build(val, options, seed)
        self.batch_size, self.seed = batch_size, seed

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def check(self, world_size: int = 1) -> None:
        """The meta split must fill a global batch, which must split evenly over the ranks."""
        n = len(self.train_cases)
        if n < self.batch_size:
            raise EditlabError(f"the meta split has {n} training cases, fewer than editor.batch_size="
                               f"{self.batch_size}; use editor.batch_size<={n} or build a world with more meta cases "
                               "(data.cases.n_meta_cases)")
        if self.batch_size % world_size or len(self.val_cases) < world_size:
            raise EditlabError(f"editor.batch_size={self.batch_size} must be a multiple of the {world_size} "
                               f"processes (and the {len(self.val_cases)} validation cases at least one each)")

    def train_dataloader(self) -> DataLoader:
        from editlab.lm.packing import StreamBatches

        rank, world = self._ranks()
        self.check(world)
        trainer = self.trainer
        sampler = StreamBatches(len(self.train_cases), self.batch_size // world, rank, world,
                                n_batches=trainer.max_steps if trainer is not None else len(self.train_cases),
                                start=lambda: trainer.global_step if trainer is not None else 0)
        return DataLoader(Shuffled(self.train_cases, self.seed), batch_sampler=sampler, collate_fn=MetaBatch)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._ranks()
        return DataLoader(self.val_cases[rank::world], batch_size=self.batch_size, shuffle=False, collate_fn=MetaBatch)


@dataclass
class TrainableEditor(EditMethod):
    """An editing method with learned parameters, trained by ``python train.py task=editor method=<name>``."""

    trainable: ClassVar[bool] = True

    @abstractmethod
    def training_module(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        training: EditorTraining) -> L.LightningModule:
        """The LightningModule that meta-trains this editor on ``base`` (frozen) from batches of meta cases.

        It logs :data:`LOGGED`: ``train/loss`` (the meta-loss) every step, and on the validation split
        ``val/edit_success`` (share of edits whose target the edited model predicts; the best checkpoint
        and early stopping follow it) and ``val/locality`` (share of locality predictions left unchanged),
        with ``sync_dist=True`` so every DDP rank sees the same values.
        """

    @abstractmethod
    def editor_state(self, module: L.LightningModule) -> dict[str, torch.Tensor]:
        """The learned editor weights of a trained :meth:`training_module` (what the checkpoint stores)."""

    @abstractmethod
    def load_editor(self, state: dict[str, torch.Tensor]) -> None:
        """Install learned editor weights (from :meth:`editor_state` via the checkpoint)."""

    def editor_name(self) -> str:
        """The name of its editor directory (:func:`~editlab.runs.editors.default_editor_dir`): the method's name,
        plus a suffix where a hyper-parameter makes another editor of the same base model (SERAC's ``scope:
        agent``), so that training that one does not meet the other's directory."""
        return self.name

    def train_overrides(self) -> list[str]:
        """The ``train.py`` overrides, beyond ``method=<name>``, that train the editor :meth:`editor_name` names
        (named in :func:`~editlab.runs.editors.resolve_editor`'s errors)."""
        return []

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        """Load the trained editor at ``ctx.editor_path``, which must have been trained on ``ctx.model_id``."""
        if ctx.editor_path is None:
            raise EditlabError(f"method {self.name} needs a trained editor: run python train.py task=editor "
                               f"method={self.name} (same data/model/seed as the edited model), then pass "
                               "editor_path=<its editor directory>")
        self.load_editor(read_editor(Path(ctx.editor_path), self.name, ctx.model_id))


@dataclass
class NetworkEditor(TrainableEditor):
    """A trainable editor whose learned part is one network: ``editor`` of its training module, built for a model
    by the method and loaded from the checkpoint's weights in ``prepare`` (:func:`load_network`; MEND, MALMEN, KE)."""

    _weights: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    editor: nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    def trained_editor(self) -> nn.Module:
        """The network ``prepare`` loaded, or one clear error naming the command that trains it."""
        if self.editor is None:
            raise EditlabError(f"method {self.name} has no trained editor; pass editor_path=<the directory python "
                               f"train.py task=editor method={self.name} wrote>")
        return self.editor

    def module_names(self, model: nn.Module) -> list[str]:
        """The edited Linear layers: the method's ``modules`` (roles or templates) in its ``layers``."""
        from editlab.editing.weights import module_names

        return module_names(model, self.modules, self.layers)

    def weight_shapes(self, model: nn.Module) -> list[tuple[int, ...]]:
        """(d_out, d_in) of each edited weight, in :meth:`module_names` order (the network's shape)."""
        from editlab.editing.weights import get_module, linear_weight

        return [tuple(linear_weight(get_module(model, n)).shape) for n in self.module_names(model)]

    def editor_state(self, module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.editor.state_dict().items()}

    def load_editor(self, state: dict[str, torch.Tensor]) -> None:
        self._weights = dict(state)


def load_network(net: nn.Module, state: dict[str, torch.Tensor], editor_path: Path | None, sizes: str) -> nn.Module:
    """``net`` (built for this model) holding the trained ``state``, in eval mode; an editor trained with other
    sizes is one clear error naming the hyper-parameters (``sizes``) that shape the network."""
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise EditlabError(f"editor {editor_path} does not fit this model's layers ({first}...); edit with the "
                           f"{sizes} it was trained with (its editor.json)") from None
    return net.eval()


def save_editor(out: Path, method: TrainableEditor, state: dict[str, torch.Tensor], base_model_id: str,
                config: dict, metrics: dict, extra: Callable[[Path], None] | None = None) -> Path:
    """Write the editor checkpoint directory ``out`` atomically (safetensors + editor.json).

    ``extra(tmp)`` writes more files into it (the meta-training curves) before it is published.
    """
    out = Path(out)
    info = {"format": FORMAT, "method": method.name, "hparams": method_hparams_of(method),
            "base_model_id": base_model_id, "config": config, "metrics": metrics}
    if out.exists():
        import shutil

        shutil.rmtree(out)
    with atomic_directory(out, base_model_id) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / EDITOR_WEIGHTS))
        (tmp / EDITOR_INFO).write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
        if extra is not None:
            extra(tmp)
    return out


def editor_info(path: Path) -> dict:
    """``editor.json`` of an editor checkpoint directory (clear error if it is not one, or not readable)."""
    f = Path(path) / EDITOR_INFO
    if not f.is_file():
        raise EditlabError(f"{path} is not an editor checkpoint (no {EDITOR_INFO}); point editor_path to the "
                           "directory python train.py task=editor printed")
    try:
        info = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditlabError(f"{f} is corrupt ({str(exc).splitlines()[0]}); delete {path} and train the editor again "
                           "with python train.py task=editor") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise EditlabError(f"{f} is not an editor checkpoint of format {FORMAT}; delete {path} and train the "
                           "editor again with python train.py task=editor")
    return info


def read_editor(path: Path, method: str, model_id: str, command: str | None = None) -> dict[str, torch.Tensor]:
    """The editor weights at ``path``, checked to belong to ``method`` and to the base model ``model_id``.

    ``command``: the exact train command to name in an error (:func:`train_command`), when the caller knows it.
    """
    info = editor_info(path)
    if info.get("method") != method:
        raise EditlabError(f"editor {path} was trained for method {info.get('method')}, not {method}; train one "
                           f"with: {command or f'python train.py task=editor method={method}'}")
    if info.get("base_model_id") != model_id:
        cfg = info.get("config") or {}
        hint = " ".join(f"{k}={v}" for k, v in (("data", (cfg.get("data") or {}).get("name")),
                                                   ("model", (cfg.get("model") or {}).get("name"))) if v)
        command = command or (f"python train.py task=editor method={method} {hint + ' ' if hint else ''}"
                              "seed=<the edited model's seed>")
        raise EditlabError(f"editor {path} was trained on model {info.get('base_model_id')}, but this run edits model "
                           f"{model_id or '<unknown>'}; train an editor for it: {command}")
    try:
        return load_file(str(Path(path) / EDITOR_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        command = command or f"python train.py task=editor method={method}"
        raise EditlabError(f"{Path(path) / EDITOR_WEIGHTS} is corrupt or missing ({str(exc).splitlines()[0]}); "
                           f"delete {path} and train it again with: {command}") from None
