"""The EditMethod contract (architecture.md, "Contracts"; methods.md).

An editing method turns edit requests into a changed model and can take the change back exactly.
It takes plain typed hyper-parameters and knows nothing of Hydra, files or loggers. The contract is
deliberately small so that every family fits it unchanged:

- weight editors (LoRA, FT, ROME, MEMIT, AlphaEdit, MEND, MALMEN) change weights in place and keep a
  snapshot of exactly what they touched, so :meth:`EditHandle.restore` is bit-exact;
- methods that need precomputed statistics (covariances for ROME/MEMIT/AlphaEdit) or a trained editor
  checkpoint (MEND/MALMEN/SERAC) get them once in :meth:`EditMethod.prepare`, from the
  :class:`EditContext` (world directory for the corpus, a cache directory, an editor checkpoint path);
- memory editors (SERAC, GRACE) keep their memory as method state (:meth:`EditMethod.state_dict`) and
  may hand back a wrapper module as :attr:`EditHandle.model`;
- in-context editors (ICE, IKE) change no weight: their handle carries a text :attr:`EditHandle.prefix`
  the scorer puts before every probe.

Sequential (continual) editing calls :meth:`EditHandle.commit` after each edit: the change becomes
part of the model (LoRA merges its adapter into the weights), and the next edit starts from there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class EditRequest:
    """One edit: make ``target`` the answer of ``prompt`` (= "subject relation")."""

    subject: str
    relation: str
    target: str
    case_id: str = ""

    @property
    def prompt(self) -> str:
        return f"{self.subject} {self.relation}"

    @property
    def sentence(self) -> str:
        """The edit as a corpus sentence (what in-context methods show the model)."""
        return f"{self.prompt} {self.target}"

    @staticmethod
    def from_case(case: dict) -> EditRequest:
        """The request of a case record (cases.jsonl, world.md section 6)."""
        return EditRequest(case["subject"], case["relation"], case["requested_object"], case["case_id"])


@dataclass
class EditContext:
    """What a method may need beyond the model, built once per run by the caller.

    Attributes:
        tokenizer: the world's tokenizer (BOS id, pad id, object tokenisation).
        world_dir: the built world (corpus for covariance statistics, meta-training cases).
        cache_dir: where a method may cache precomputed statistics (keyed by what they depend on).
        editor_path: a trained editor checkpoint (MEND, MALMEN, SERAC), if the method needs one.
        seed: seed for anything random inside the method.
        on_step: iterative methods call ``on_step(step, model)`` after each optimizer step (edit-step
            tracing for the paper's Figure 4); ``None`` costs nothing.
    """

    tokenizer: PreTrainedTokenizerBase
    world_dir: Path | None = None
    cache_dir: Path | None = None
    editor_path: Path | None = None
    seed: int = 0
    on_step: Callable[[int, nn.Module], None] | None = None


class EditHandle:
    """An applied edit: the model to score, an optional text prefix, and how to undo or keep it.

    The default handle restores a snapshot of the parameters named in ``touched`` (bit-exact,
    because the snapshot is a copy of the very tensors). Methods with other mechanics (PEFT adapters,
    memories) pass their own ``restore_fn`` / ``commit_fn``.
    """

    def __init__(self, model: nn.Module, *, touched: dict[str, torch.Tensor] | None = None,
                 restore_fn: Callable[[], None] | None = None, commit_fn: Callable[[], nn.Module] | None = None,
                 prefix: str = "", info: dict[str, Any] | None = None) -> None:
        self.model = model
        self.prefix = prefix
        self.info = info or {}  # per-edit diagnostics (final loss, steps, norms) for the results file
        self._touched = touched
        self._restore_fn = restore_fn
        self._commit_fn = commit_fn
        self._done = False

    def restore(self) -> nn.Module:
        """Undo the edit; returns the base model (bit-exact weights/behaviour)."""
        self._check()
        if self._restore_fn is not None:
            self._restore_fn()
        if self._touched is not None:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, saved in self._touched.items():
                    params[name].copy_(saved)
        self._done = True
        return self.base_model

    def commit(self) -> nn.Module:
        """Keep the edit as part of the model (sequential editing); returns the model to edit next."""
        self._check()
        if self._commit_fn is not None:
            self.model = self._commit_fn()
        self._touched = None
        self._done = True
        return self.base_model

    @property
    def base_model(self) -> nn.Module:
        return self.model

    def _check(self) -> None:
        if self._done:
            raise RuntimeError("this edit was already restored or committed")


def snapshot(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters (what :class:`EditHandle` restores)."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


@dataclass
class EditMethod(ABC):
    """Base class of every editing method. Subclasses are dataclasses of their hyper-parameters.

    ``name`` is the registry name (== file name == ``conf/method/<name>.yaml``). ``in_context`` marks
    methods whose edit success is measured but not asserted by the contract tests.
    """

    name: ClassVar[str] = ""
    in_context: ClassVar[bool] = False
    supports_batch: ClassVar[bool] = True
    _state: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:  # noqa: B027 - optional hook
        """Load or compute what the method needs once per model (statistics, editor weights)."""

    @abstractmethod
    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext) -> EditHandle:
        """Apply all ``requests`` at once (single mode: one request) and return the handle."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Method state that outlives one edit (memories, codebooks); saved with safetensors."""
        return dict(self._state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._state = dict(state)
