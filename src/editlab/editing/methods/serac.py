"""SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale"): edits go to an explicit memory.

A scope classifier decides whether a query is in the scope of a stored edit; in scope, a
counterfactual model answers with the edit prepended; out of scope, the base model answers,
untouched. The modules and the routing rule are in serac_model.py, the meta-training in
serac_train.py (``python train.py task=editor method=serac``). Choices for this world:

- the classifier embeds with the frozen base model's hidden states and a trained MLP (an
  embedding-distance model, cosine with a learned temperature and bias);
- the counterfactual model is initialised from the base checkpoint and fine-tuned to answer given
  ``BOS "s r o*."`` before the query (the paper's is a separate small seq2seq/causal LM; here the base
  model is already the small LM of the world's language).

The edited model is a :class:`~editlab.editing.methods.serac_model.SeracWrapper`, scored through its
own forward and generate. ``apply`` embeds the new edits once and appends them to the memory;
``restore`` returns the model as received (the base weights are never touched); ``commit`` keeps the
entries (sequential editing). Method state (:meth:`SERAC.state_dict`) is the memory: key embeddings
and prefixes; an export (:meth:`SERAC.export_state`) adds the trained editor weights, so an exported
edited model loads back without the editor checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditContext, EditHandle, EditRequest, StepHook, unwrap
from editlab.editing.methods.serac_model import ScopeClassifier, SeracWrapper, cf_prefix_ids, embed_prompts
from editlab.editing.registry import register
from editlab.editing.trainable import EditorTraining, TrainableEditor
from editlab.errors import EditlabError
from editlab.vocab import prompt_ids

EDITOR_PREFIX = "editor."
SCOPES = ("request", "agent")  # method.hparams.scope (SERAC.scope)


@register
@dataclass
class SERAC(TrainableEditor):
    """Memory + scope classifier + counterfactual model (see the module docstring).

    Attributes:
        layers: which ``hidden_states`` of the base model the classifier reads (0 = embeddings, i = block i's
            output); null = every block's output.
        hidden, dim: the classifier MLP's width and the embedding dimension.
        init_scale, init_bias: initial temperature and bias of the scope score.
        threshold: in scope when sigmoid(score) > threshold.
        lr_cf, lr_cls: meta-training learning rates of the counterfactual model and the classifier.
        c_loc: weight of the counterfactual model's KL to the base model on out-of-scope queries
            (hard negatives and locality facts) seen with an edit prepended, so a misrouted query still
            gets the base model's answer; 0 = the paper's objective (in-scope NLL only).
        resample: meta-training: probability that an example's object is swapped for another object of its
            relation in a step (serac_train.py), so the counterfactual model learns to read the edit rather
            than the meta split's edits by heart; 0 = the examples as they are.
        scope: what meta-training teaches to be in the scope of an edit ``s r -> o*`` (serac_train.py):
            ``request`` (the paper's SERAC) = the queries that ask the request's own fact (the request and its
            TF sentence); every other query, the same subject's other relations included, is out of scope.
            ``agent`` = also the queries whose gold answer the world's agent changes with the edit: a meta
            example's downstream fact ``s r2`` when the agent's argmax for it changes (trained toward the agent's
            posterior), while an unchanged downstream fact stays a hard negative. Only meta-training reads it.
    """

    name = "serac"
    supports_batch = True
    layers: list[int] | None = None
    hidden: int = 256
    dim: int = 128
    init_scale: float = 10.0
    init_bias: float = -5.0
    threshold: float = 0.5
    lr_cf: float = 1.0e-4
    lr_cls: float = 1.0e-3
    c_loc: float = 1.0
    resample: float = 0.5
    scope: str = "request"
    weights: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False)
    keys: torch.Tensor | None = field(default=None, init=False, repr=False)
    prefixes: list[list[int]] = field(default_factory=list, init=False, repr=False)
    _mods: tuple[nn.Module, nn.Module, ScopeClassifier] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise EditlabError(f"method serac: scope={self.scope!r} must be one of {' or '.join(SCOPES)}")
        if not 0 < self.threshold < 1:
            raise EditlabError(f"method serac: threshold={self.threshold} must be in (0, 1)")
        if not 0 <= self.resample <= 1:
            raise EditlabError(f"method serac: resample={self.resample} must be a probability in [0, 1]")
        if self.hidden < 1 or self.dim < 1 or self.init_scale <= 0:
            raise EditlabError("method serac: hidden, dim and init_scale must be positive")

    # ------------------------------------------------------------------ modules
    def feature_layers(self, base: nn.Module) -> list[int]:
        n = int(getattr(base.config, "num_hidden_layers", 0) or getattr(base.config, "n_layer", 0))
        layers = list(range(1, n + 1)) if self.layers is None else list(self.layers)
        if not layers or any(not 0 <= i <= n for i in layers):
            raise EditlabError(f"method serac: layers={self.layers} must index hidden states 0..{n} of this model")
        return layers

    def new_classifier(self, base: nn.Module) -> ScopeClassifier:
        layers = self.feature_layers(base)
        width = int(getattr(base.config, "hidden_size", 0) or base.config.n_embd)
        return ScopeClassifier(len(layers) * width, layers, self.hidden, self.dim, self.init_scale, self.init_bias)

    def modules_for(self, base: nn.Module) -> tuple[nn.Module, ScopeClassifier]:
        """(counterfactual model, classifier) with the trained weights, built once per base model."""
        if self.weights is None:
            raise EditlabError("method serac has no trained editor: run python train.py task=editor method=serac, "
                               "then pass editor_path=<its editor directory>")
        if self._mods is None or self._mods[0] is not base:
            dev = next(base.parameters()).device
            cf, cls = copy.deepcopy(base), self.new_classifier(base)
            for name, mod in (("cf", cf), ("classifier", cls)):
                sub = {k[len(name) + 1:]: v for k, v in self.weights.items() if k.startswith(name + ".")}
                missing, unexpected = mod.load_state_dict(sub, strict=False)
                if missing or unexpected:
                    raise EditlabError(f"method serac: the editor's {name} does not fit this model (missing "
                                       f"{missing[:3]}, unexpected {unexpected[:3]}); train an editor for it")
            self._mods = (base, cf.to(dev).eval().requires_grad_(False), cls.to(dev).eval().requires_grad_(False))
        return self._mods[1], self._mods[2]

    def wrap(self, base: nn.Module, keys: torch.Tensor, prefixes: list[list[int]]) -> SeracWrapper:
        cf, cls = self.modules_for(base)
        return SeracWrapper(base, cf, cls, keys, prefixes, self.threshold)

    # ------------------------------------------------------------------ editing
    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        base = unwrap(model)
        _, cls = self.modules_for(base)
        with torch.no_grad():
            new_keys = embed_prompts(base, cls, prompt_ids(ctx.tokenizer, [r.prompt for r in requests]),
                                     ctx.tokenizer.pad_token_id)
        old = self.keys if self.keys is not None else new_keys[:0]
        keys = torch.cat([old.to(new_keys.device), new_keys])
        prefixes = self.prefixes + cf_prefix_ids(ctx.tokenizer, requests)
        wrapper = self.wrap(base, keys, prefixes)

        def commit() -> nn.Module:
            self.keys, self.prefixes = keys, prefixes
            return wrapper

        return EditHandle(wrapper, base=base, restore_fn=lambda: model, commit_fn=commit,
                          info={"steps": 0, "memory": len(prefixes)})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The memory: key embeddings (M, D) and the counterfactual prefixes (flat ids + lengths)."""
        if self.keys is None:
            return {}
        return {"keys": self.keys.detach().cpu().contiguous(),
                "prefix_ids": torch.tensor([t for p in self.prefixes for t in p], dtype=torch.long),
                "prefix_len": torch.tensor([len(p) for p in self.prefixes], dtype=torch.long)}

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The memory and the trained editor (an exported model loads back without ``editor_path``)."""
        if self.weights is None:
            raise EditlabError("method serac: nothing to export without a trained editor (pass editor_path)")
        return {**self.state_dict(), **{EDITOR_PREFIX + k: v for k, v in self.weights.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> nn.Module:
        editor = {k[len(EDITOR_PREFIX):]: v for k, v in state.items() if k.startswith(EDITOR_PREFIX)}
        if editor:
            self.load_editor(editor)
        base = unwrap(model)
        if "keys" not in state:
            self.keys, self.prefixes = None, []
            return base
        self.keys = state["keys"].to(next(base.parameters()).device)
        self.prefixes = [x.tolist() for x in torch.split(state["prefix_ids"], state["prefix_len"].tolist())]
        return self.wrap(base, self.keys, self.prefixes)

    # ------------------------------------------------------------------ trainable editor
    def editor_name(self) -> str:
        """``serac`` for the request scope, ``serac-<scope>`` otherwise: both editors of a base model coexist in
        its ``editors/`` directory, and ``edit.py method.hparams.scope=<scope>`` finds its own."""
        return self.name if self.scope == "request" else f"{self.name}-{self.scope}"

    def train_overrides(self) -> list[str]:
        return [] if self.scope == "request" else [f"method.hparams.scope={self.scope}"]

    def training_module(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase,
                        training: EditorTraining) -> L.LightningModule:
        from editlab.editing.methods.serac_train import SeracTrainer

        return SeracTrainer(self, base, tokenizer)

    def editor_state(self, module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {**{f"cf.{k}": v.detach().clone() for k, v in module.cf.state_dict().items()},
                **{f"classifier.{k}": v.detach().clone() for k, v in module.classifier.state_dict().items()}}

    def load_editor(self, state: dict[str, torch.Tensor]) -> None:
        self.weights, self._mods = dict(state), None
