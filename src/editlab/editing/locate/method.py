"""What ROME, MEMIT and AlphaEdit share as methods: hyper-parameters, ``prepare`` and the guarded weight write.

- ``prepare(model, ctx)``: resolves the edited modules (the ``mlp_out`` role of the architecture
  adapter at ``layers``: Mistral/Llama ``down_proj``, GPT-2 ``c_proj``), draws the context prefixes from
  the corpus and loads (or computes and caches) the key covariances of those modules;
- ``write``: adds fp64 updates to the (d_out, d_in) views of the weights only after every update of
  the edit is computed and finite, so a failed edit (:class:`~editlab.editing.base.EditFailed`) leaves
  no trace and no NaN ever reaches the weights; the handle restores the snapshot bit-exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from editlab.editing.base import EditContext, EditFailed, EditHandle, EditMethod, snapshot
from editlab.editing.locate.keys import KEY_AVERAGES, template_groups
from editlab.editing.locate.prefixes import corpus_prefixes
from editlab.editing.locate.stats import covariances
from editlab.editing.locate.targets import TargetSpec, check_spec
from editlab.editing.weights import get_module, linear_weight, module_names, resolve_layers, weight_param_name
from editlab.errors import EditlabError
from editlab.lm.arch import adapter_for


@dataclass
class LocateEdit(EditMethod):
    """Shared hyper-parameters (ROME's names in brackets).

    Attributes:
        layers: edited blocks, ascending (negative counts from the last). ROME: exactly one.
        module: the edited module: a role (``mlp_out``) or a template with ``{}`` for the block.
        prefixes: ``[[tokens, count], ...]`` context prefixes from the corpus [context_template_length_params];
            the bare prompt is always one more template.
        stats_tokens: corpus tokens of the covariance statistics [mom2_n_samples, here in tokens].
        lr, steps: Adam on the target vector [v_lr, v_num_grad_steps].
        kl_factor, weight_decay, clamp_norm_factor: the essence KL weight, the norm penalty and the norm
            clamp of the target vector [kl_factor, v_weight_decay, clamp_norm_factor].
        stop_loss: a request's optimisation stops once its stop value is below this (ROME: 5e-2).
        stop_on: the stop value: ``total`` (default, the reference code: NLL + kl_factor KL + the weight-decay
            term) or ``nll`` (the target NLL per object token averaged over the templates, the rule every
            optimisation-based editor shares).
        stop_check: ``current`` (default, the reference: the loss of the current target is checked before its
            step; at most ``steps - 1`` updates) or ``previous`` (the value from before the last update is
            checked: a request is frozen one update later; ``steps`` updates).
        kl_direction: the essence KL, ``new_init`` (default, the reference: KL(edited || unedited)) or
            ``init_new`` (KL(unedited || edited)).
        target_init: the output ``h`` a target starts from (the clamp and the norm penalty are relative to its
            norm; MEMIT's target is ``h + delta``): ``bare`` (default, the reference: the bare prompt's) or
            ``mean`` (the mean over the templates).
        key_average: how keys are averaged over the templates: ``flat`` (ROME's ``compute_u``, this class's
            default) or ``groups`` (MEMIT's ``compute_ks``: the bare prompt is a group, each ``prefixes`` pair
            one more, and the group means are averaged; :mod:`editlab.editing.locate.keys`).
        essence: the relation text of the essence prompt ``"{subject} <essence>"`` (only the subject's last
            token is read, so it only has to tokenise after the subject).
        fact_token: ``subject_last`` (the method) or ``last`` (the prompt's last token, ROME's ablation).
    """

    supports_credence = True  # each request's loss is editing/loss.py's (credence targets)

    layers: list[int | str] = field(default_factory=lambda: [1])
    module: str = "mlp_out"
    prefixes: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    stats_tokens: int = 100_000
    # the target optimisation's values: one set of defaults, TargetSpec's (locate/targets.py)
    lr: float = TargetSpec.lr
    steps: int = TargetSpec.steps
    kl_factor: float = TargetSpec.kl_factor
    weight_decay: float = TargetSpec.weight_decay
    clamp_norm_factor: float = TargetSpec.clamp_norm_factor
    stop_loss: float = TargetSpec.stop_loss
    essence: str = TargetSpec.essence
    fact_token: str = TargetSpec.fact_token
    stop_on: str = TargetSpec.stop_on
    stop_check: str = TargetSpec.stop_check
    kl_direction: str = TargetSpec.kl_direction
    target_init: str = TargetSpec.target_init
    key_average: str = "flat"

    def __post_init__(self) -> None:
        if not self.layers:
            raise EditlabError(f"method {self.name}: layers must name at least one block")
        if not self.lr > 0 or self.steps < 0 or self.kl_factor < 0 or self.weight_decay < 0:
            raise EditlabError(f"method {self.name}: lr > 0, steps >= 0, kl_factor >= 0 and weight_decay >= 0")
        if not self.clamp_norm_factor > 0 or self.stats_tokens < 1:
            raise EditlabError(f"method {self.name}: clamp_norm_factor > 0 and stats_tokens >= 1")
        try:
            check_spec(self.spec)
        except EditlabError as exc:
            raise EditlabError(f"method {self.name}: {exc}") from None
        if self.key_average not in KEY_AVERAGES:
            raise EditlabError(f"method {self.name}: key_average={self.key_average!r} must be one of "
                               f"{', '.join(KEY_AVERAGES)}")
        if any(len(p) != 2 for p in self.prefixes):
            raise EditlabError(f"method {self.name}: prefixes must be [[tokens, count], ...], got {self.prefixes}")

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec(lr=self.lr, steps=self.steps, kl_factor=self.kl_factor, weight_decay=self.weight_decay,
                          clamp_norm_factor=self.clamp_norm_factor, stop_loss=self.stop_loss, essence=self.essence,
                          fact_token=self.fact_token, stop_on=self.stop_on, kl_direction=self.kl_direction,
                          target_init=self.target_init, stop_check=self.stop_check)

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        """Resolve the modules, draw the prefixes, load or compute the covariances (see the module docstring)."""
        self._layers = resolve_layers(model, self.layers)
        self._names = module_names(model, [self.module], self._layers)
        self._templates = ["", *corpus_prefixes(ctx.tokenizer, ctx.world_dir, self.prefixes, text=ctx.stats_text)]
        self._groups = template_groups([c for _, c in self.prefixes]) if self.key_average == "groups" else None
        self._cov = covariances(model, self._names, ctx, self.stats_tokens)
        for name in self._names:
            d_in = linear_weight(get_module(model, name)).shape[1]
            if self._cov[name].shape != (d_in, d_in):
                raise EditlabError(f"covariance statistics of {name} have shape {tuple(self._cov[name].shape)}, the "
                                   f"module takes {d_in} inputs; delete the method's statistics cache of this model")
        self.prepared(model)

    def prepared(self, model: nn.Module) -> None:
        """Per-method precomputation after :meth:`prepare` (Cholesky factors, projectors)."""

    def _check_prepared(self) -> None:
        if not hasattr(self, "_cov"):
            raise EditlabError(f"method {self.name}: call prepare(model, ctx) before apply")

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        """The transformer block ``layer`` (its output is the residual stream after it)."""
        return model.get_submodule(f"{adapter_for(model).blocks}.{layer}")

    def add(self, model: nn.Module, name: str, delta: torch.Tensor) -> None:
        """Add the fp64 ``delta`` (d_out, d_in) to module ``name``'s weight, or raise EditFailed if it is not finite."""
        if not torch.isfinite(delta).all():
            raise EditFailed(f"method {self.name}: non-finite update of {name}; the edit was not applied")
        with torch.no_grad():
            w = linear_weight(get_module(model, name))
            w.add_(delta.to(w.dtype))

    def guarded(self, model: nn.Module, edit, commit_fn=None) -> EditHandle:
        """Run ``edit() -> info`` (which adds the updates) on a snapshot; on any failure restore it and re-raise.

        ``commit_fn`` (optional) is the handle's commit: what a method keeps when the edit is committed.
        """
        self._check_prepared()
        saved = self.snapshot(model)
        try:
            info = edit()
        except BaseException:
            self.restore(model, saved)
            raise
        return EditHandle(model, touched=saved, info=info, commit_fn=commit_fn)

    def snapshot(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return snapshot(model, [weight_param_name(n) for n in self._names])

    @staticmethod
    def restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
