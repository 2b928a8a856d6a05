"""Architecture adapters: where a causal LM keeps its blocks, MLP projections, norms, embeddings and head.

Editors name layers by role ("mlp_out" = the MLP down/output projection ROME and MEMIT edit, "mlp_in" =
its input projections, ...), and the adapter of the model's architecture turns a role into module
names. The adapter is chosen from the model's *config class* (``MistralConfig``, ``GPT2Config``, ...),
never from substrings of a checkpoint's name: a model called "gpt2-llama-distill" is whatever its
config says. It also records the weight orientation: Hugging Face ``nn.Linear`` stores (d_out, d_in),
GPT-2's ``Conv1D`` stores (d_in, d_out) (methods.md, "Weight orientation").

Adding an architecture = one :class:`ArchAdapter` entry in :data:`ADAPTERS` (an unknown one is an
error that names the fields to fill).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn
from transformers import GPT2Config, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config

from editlab.errors import EditlabError


@dataclass(frozen=True)
class ArchAdapter:
    """Module paths of one architecture. Per-block paths are relative to ``blocks.{i}``.

    Attributes:
        blocks: the ModuleList of transformer blocks (``model.layers``).
        mlp_in: the MLP input projection(s) of a block (Llama: gate and up; GPT-2: c_fc).
        mlp_out: the MLP output (down) projection of a block: the key -> value memory ROME/MEMIT edit.
        attn_out: the attention output projection of a block.
        norm_attn: the norm before attention in a block.
        norm_mlp: the norm before the MLP in a block.
        final_norm: the norm after the last block.
        embed: the token embedding.
        lm_head: the output head.
        conv1d: weights stored (d_in, d_out) (GPT-2 ``Conv1D``) instead of ``nn.Linear``'s (d_out, d_in).
    """

    blocks: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    attn_out: str
    norm_attn: str
    norm_mlp: str
    final_norm: str
    embed: str
    lm_head: str
    conv1d: bool = False

    # roles a method's module template may name instead of a "{}" path
    ROLES = ("mlp_in", "mlp_out", "attn_out", "norm_attn", "norm_mlp")

    def templates(self, role: str) -> list[str]:
        """Module templates (``{}`` = block index) of a per-block ``role``."""
        if role not in self.ROLES:
            raise EditlabError(f"unknown module role {role!r}; use one of {', '.join(self.ROLES)} or a template "
                               f"with {{}} for the block index (e.g. '{self.blocks}.{{}}.{self.mlp_out}')")
        paths = getattr(self, role)
        return [f"{self.blocks}.{{}}.{p}" for p in ((paths,) if isinstance(paths, str) else paths)]

    def num_blocks(self, model: nn.Module) -> int:
        return len(model.get_submodule(self.blocks))


_LLAMA_LIKE = ArchAdapter(blocks="model.layers", mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj",
                          attn_out="self_attn.o_proj", norm_attn="input_layernorm",
                          norm_mlp="post_attention_layernorm", final_norm="model.norm", embed="model.embed_tokens",
                          lm_head="lm_head")

ADAPTERS: dict[type[PretrainedConfig], ArchAdapter] = {
    MistralConfig: _LLAMA_LIKE,
    LlamaConfig: _LLAMA_LIKE,
    Qwen2Config: _LLAMA_LIKE,
    GPT2Config: ArchAdapter(blocks="transformer.h", mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj",
                            attn_out="attn.c_proj", norm_attn="ln_1", norm_mlp="ln_2", final_norm="transformer.ln_f",
                            embed="transformer.wte", lm_head="lm_head", conv1d=True),
}


def adapter_for(model: nn.Module) -> ArchAdapter:
    """The adapter of ``model``'s config class (or its nearest registered base class)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise EditlabError(f"{type(model).__name__} has no Hugging Face config; edit a transformers causal LM")
    for cls in type(cfg).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls]
    names = ", ".join(f.name for f in fields(ArchAdapter))
    known = ", ".join(c.__name__ for c in ADAPTERS)
    raise EditlabError(f"no architecture adapter for {type(cfg).__name__} (known: {known}); add an ArchAdapter "
                       f"entry to editlab.lm.arch.ADAPTERS with fields {names}")
