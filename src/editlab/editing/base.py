"""The EditMethod contract (architecture.md, "Contracts"; methods.md).

An editing method turns edit requests into a changed model and can take the change back exactly.
It takes plain typed hyper-parameters and knows nothing of Hydra, files or loggers. The contract was
widened once so that every family fits it unchanged:

- weight editors (LoRA, FT, ROME, MEMIT, AlphaEdit, MEND, MALMEN) change weights in place and keep a
  snapshot of exactly what they touched, so :meth:`EditHandle.restore` is bit-exact;
- methods that need precomputed statistics (covariances for ROME/MEMIT/AlphaEdit) or a trained editor
  checkpoint (KE/MEND/MALMEN/SERAC) get them once in :meth:`EditMethod.prepare`, from the
  :class:`EditContext` (world directory for the corpus, a cache directory keyed by
  :attr:`EditContext.model_id`, an editor checkpoint path);
- memory/wrapper editors (SERAC, GRACE) keep their memory as method state
  (:meth:`EditMethod.state_dict`) and hand back a wrapper module (:class:`EditWrapper`) as
  :attr:`EditHandle.model`; :meth:`EditMethod.load_state_dict` re-inserts it on resume;
- in-context editors (ICE, IKE) change no weight: their handle carries a text :attr:`EditHandle.prefix`
  the scorer puts before every probe (:meth:`EditMethod.context_prefix` after loading).

What the scorer may assume about ``handle.model`` (eval/scoring.py honours it):

- it is called as ``model(input_ids=..., attention_mask=..., use_cache=False)`` and returns an object
  with ``.logits`` of shape (B, T, V), and decodes with ``model.generate(...)`` taking Hugging Face's
  arguments (``do_sample``, ``max_new_tokens``, ``pad_token_id``, ``eos_token_id``, ``output_scores``,
  ``return_dict_in_generate``, ``temperature``, ``top_k``, ``top_p``);
- only a plain Hugging Face ``PreTrainedModel`` (or a PEFT model around one) may be scored through a
  fast path into its decoder and output head; any other module (an :class:`EditWrapper`) is scored
  through its own ``forward`` and ``generate``, never bypassed, because its forward *is* the edit.

Protocols: single/batch editing calls :meth:`EditHandle.restore` after scoring (the next edit starts
from the base again); sequential (continual) editing calls :meth:`EditHandle.commit`, which makes the
change part of the model (LoRA merges its adapter, a memory keeps its entries) and returns the module
to edit next. Per-edit step hooks are an argument of :meth:`EditMethod.apply`, never context state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.errors import EditlabError


class EditFailed(EditlabError):
    """One edit could not be made (a subject not in its prompt, a non-finite target, a singular system).

    A single or batch run stops with it like any :class:`~editlab.errors.EditlabError` (one line, exit 2);
    the sequential protocol records the edit as failed (model unchanged) and the stream goes on. A method
    raises it only *before* writing any weight, so a failed edit never leaves anything behind.
    """


StepHook = Callable[[int, nn.Module], None]
"""``on_step(step, model)``: called by iterative methods after each optimizer step (step counts from 1)
with the model as it scores now (edit-step tracing, the paper's Figure 4)."""


@dataclass(frozen=True)
class EditRequest:
    """One edit: make ``target`` the answer of ``prompt`` ("subject relation" for the world's facts, or a
    benchmark's own prompt ``text`` with the subject inside it)."""

    subject: str
    relation: str
    target: str
    case_id: str = ""
    implied: tuple[EditRequest, ...] = ()
    """Facts the request implies for a rational learner (the world's agent: every other answer of the subject that
    the edit changes), given only to methods that set ``uses_implied`` (``method=propagate``); others ignore it."""
    credence: float = 1.0
    """The probability the edited model should give ``target`` (editing/loss.py, "Credence targets"): 1, the field's
    convention, or the Bayesian agent's posterior p* < 1 for the request as evidence (``edits.target=credence``).
    Only methods that set ``supports_credence`` read it."""
    text: str = ""
    """A benchmark's prompt with the subject in it (CounterFact's filled template, a zsRE question); empty for the
    world's facts, whose prompt is "subject relation". ``relation`` then only names the relation (CounterFact's
    Wikidata property), keeping requests about one (subject, relation) apart in batch solves."""

    @property
    def prompt(self) -> str:
        return self.text or f"{self.subject} {self.relation}"

    @property
    def sentence(self) -> str:
        """The edit as a corpus sentence (what in-context methods show the model)."""
        return f"{self.prompt} {self.target}"

    @staticmethod
    def from_case(case: dict) -> EditRequest:
        """The request of a case record (cases.jsonl, world.md section 6)."""
        return EditRequest(case["subject"], case["relation"], case["requested_object"], case["case_id"])


@dataclass(frozen=True)
class RelationSchema:
    """A knowledge graph without its facts' objects: which relation depends on which, the objects each relation takes
    and the subjects that have it. What a schema-guided editor may know (a real knowledge graph publishes the same:
    property constraints and which entities carry a property); never the Bayesian agent or its posteriors.

    Attributes:
        downstream: upstream relation -> its downstream relation (the world's dependency pairs).
        objects: relation -> the objects it takes (the agent's support of the relation, sorted).
        subjects: relation -> the subjects with a fact of it, sorted.
    """

    downstream: dict[str, str]
    objects: dict[str, tuple[str, ...]]
    subjects: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class EditContext:
    """What a method may need beyond the model, built once per run by the caller; frozen, so that no method
    or protocol changes what the next edit sees (``dataclasses.replace`` makes a changed copy).

    Attributes:
        tokenizer: the world's tokenizer (BOS id, pad id, object tokenisation).
        world_dir: the built world (corpus for covariance statistics, meta-training cases).
        cache_dir: where a method may cache precomputed statistics: already one folder per model
            (``edit_run`` passes ``<paths.stats>/<model_id>``), so a method keys its files by what else they
            depend on (layer, sample count, module), never by the model again.
        editor_path: a trained editor checkpoint (KE, MEND, MALMEN, SERAC), if the method needs one.
        seed: seed for anything random inside the method.
        model_id: identity of the base model (``editlab.json`` of its checkpoint: a hash of the world hash,
            the model config and the training seed; :func:`editlab.lm.checkpoint.model_id`). It keys every
            statistics cache (``cache_dir`` is per model id: two seeds of one preset are two models with
            different covariances) and is what a trained editor checkpoint must have been trained on.
            Empty means "unknown": a method that caches per model must then refuse to cache.
        stats_text: a text dataset on disk (a ``text`` column) that covariance statistics read instead of the
            world's corpus, for a model that was not trained on the world (``stats.dataset=``).
        schema: the world's relation schema, for schema-guided editors (``schema_propagate``); None when unknown.
    """

    tokenizer: PreTrainedTokenizerBase
    world_dir: Path | None = None
    cache_dir: Path | None = None
    editor_path: Path | None = None
    seed: int = 0
    model_id: str = ""
    stats_text: Path | None = None
    schema: RelationSchema | None = None


class EditWrapper(nn.Module):
    """Base class of modules that wrap the base model (memory/router editors: GRACE, SERAC).

    The wrapped model is :attr:`base` (a registered submodule, so ``.to(device)`` and ``.eval()`` reach
    it). Subclasses implement :meth:`forward` with Hugging Face's calling convention; :meth:`generate`
    decodes through that forward (no KV cache: a wrapper's forward may depend on the whole sequence),
    left-padding aware, so the scorer never bypasses the edit. ``config`` is the base model's.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    @property
    def config(self):
        return self.base.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Return an object with ``.logits`` (B, T, V); default: the base model's output (no change)."""
        return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, pad_token_id: int | None = None, eos_token_id: int | None = None,
                 output_scores: bool = False, return_dict_in_generate: bool = False, **_: Any) -> Any:
        """Greedy or sampled decoding through :meth:`forward` (Hugging Face's ``generate`` semantics).

        Position ids follow the attention mask (``cumsum - 1``), as Hugging Face does for left-padded
        prompts; finished rows (EOS) continue with ``pad_token_id``.
        """
        ids = input_ids
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        scores = []
        for _ in range(max_new_tokens):
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = self(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
            scores.append(logits)
            if do_sample:
                nxt = torch.multinomial(torch.softmax(_filter(logits.float() / temperature, top_k, top_p), -1), 1)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None].to(mask.dtype)], dim=1)
            if eos_token_id is not None:
                done = done | (nxt == eos_token_id)
                if bool(done.all()):
                    break
        if return_dict_in_generate:
            return SimpleNamespace(sequences=ids, scores=tuple(scores) if output_scores else None)
        return ids


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k / nucleus filtering of (B, V) logits (no-ops at top_k=0, top_p=1)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def unwrap(model: nn.Module) -> nn.Module:
    """The base model inside ``model``: through :class:`EditWrapper` layers and PEFT models; identity otherwise.

    Weight drift and export look parameters up on ``unwrap(model)``, so a wrapper's own parameters
    (a codebook, a classifier) never pass for base weights.
    """
    from peft import PeftModel

    while True:
        if isinstance(model, EditWrapper):
            model = model.base
        elif isinstance(model, PeftModel):
            model = model.get_base_model()
        else:
            return model


class EditHandle:
    """An applied edit: the model to score, an optional text prefix, and how to undo or keep it.

    Attributes:
        model: what to score (the edited model, or a wrapper around it; see the module docstring).
        base: the unwrapped base model (``unwrap(model)`` unless given).
        prefix: text the scorer puts between BOS and every probe (in-context methods).
        info: per-edit diagnostics (final loss, steps, norms) for the results file.

    The default handle restores a snapshot of the parameters of :attr:`base` named in ``touched``
    (bit-exact, because the snapshot is a copy of the very tensors). Methods with other mechanics (PEFT
    adapters, memories, wrappers) pass ``restore_fn`` / ``commit_fn``, each returning the module to use
    next: ``restore_fn`` the model as ``apply`` received it, ``commit_fn`` the model holding the edit.
    """

    def __init__(self, model: nn.Module, *, base: nn.Module | None = None,
                 touched: dict[str, torch.Tensor] | None = None,
                 restore_fn: Callable[[], nn.Module] | None = None, commit_fn: Callable[[], nn.Module] | None = None,
                 prefix: str = "", info: dict[str, Any] | None = None) -> None:
        self.model = model
        self.base = unwrap(model) if base is None else base
        self.prefix = prefix
        self.info = info or {}
        self._touched = touched
        self._restore_fn = restore_fn
        self._commit_fn = commit_fn
        self._done = False

    def restore(self) -> nn.Module:
        """Undo the edit; returns the model as ``apply`` received it, bit-exact in weights and behaviour.

        In the restoring protocols ``apply`` always receives the plain base model, so this is the
        unwrapped :attr:`base`.
        """
        self._check()
        out = self._restore_fn() if self._restore_fn is not None else self.base
        if self._touched is not None:
            params = dict(self.base.named_parameters())
            with torch.no_grad():
                for name, saved in self._touched.items():
                    params[name].copy_(saved)
        self._done = True
        return out

    def commit(self) -> nn.Module:
        """Keep the edit as part of the model (sequential editing); returns the module to edit and score next."""
        self._check()
        out = self._commit_fn() if self._commit_fn is not None else self.model
        self._touched = None
        self._done = True
        return out

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
    uses_implied: ClassVar[bool] = False  # the run fills each request's ``implied`` facts (costs an agent query)
    supports_credence: ClassVar[bool] = False  # optimises each request's loss to a target probability (credence)
    _state: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:  # noqa: B027 - optional hook
        """Load or compute what the method needs once per model (statistics, editor weights)."""

    @abstractmethod
    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        """Apply all ``requests`` at once (single mode: one request) and return the handle.

        ``on_step(step, model)`` is called after each optimizer step of an iterative method (tracing);
        ``None`` costs nothing. ``ctx`` is read, never written.
        """

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Method state that outlives one edit (memories, codebooks); saved with safetensors."""
        return dict(self._state)

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> nn.Module:
        """Load ``state`` (from :meth:`state_dict`) and return the model to use with it.

        ``model`` is the base model as it is about to hold the edited weights (a resumed sequential run
        calls this *before* Lightning loads the weights); a memory/wrapper editor re-inserts its modules
        around it and returns the wrapper. Weight editors return ``model`` unchanged.
        """
        self._state = dict(state)
        return model

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What an exported edited ``model`` needs beyond the base weights and the hyper-parameters to
        behave as it does now (a memory, a wrapper's parameters); loaded back through
        :meth:`load_state_dict`. Default: :meth:`state_dict`."""
        return self.state_dict()

    def context_prefix(self) -> str:
        """The text prefix the committed edits imply (in-context methods); ``""`` for all others."""
        return ""


def method_hparams_of(method: EditMethod) -> dict:
    """The constructor hyper-parameters of ``method`` (its init fields), JSON-ready."""
    return {f.name: getattr(method, f.name) for f in fields(method) if f.init}
