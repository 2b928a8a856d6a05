"""Typed model presets and training recipes, validated; the model is built from them.

A model preset carries its architecture and the training recipe tuned for it (the paper's values for
``mistral_83m``; measured values for the CPU presets). The vocabulary size is never typed in a
preset: it comes from the world's tokenizer. A preset may pin ``vocab_size`` to guard against a
mismatch (the paper's 83M model assumes a 32000-entry vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import MistralConfig, MistralForCausalLM

from editlab.errors import EditlabError
from editlab.utils.typed import from_dict


@dataclass(frozen=True)
class Arch:
    """MistralForCausalLM architecture (hidden sizes, depth, heads, RoPE, norms)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    vocab_size: int | None = None  # None: take the world's tokenizer size

    def __post_init__(self) -> None:
        for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings"):
            if int(getattr(self, f)) < 1:
                raise EditlabError(f"model.arch.{f}={getattr(self, f)} must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise EditlabError("model.arch.hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise EditlabError("model.arch.num_attention_heads must be divisible by num_key_value_heads")


@dataclass(frozen=True)
class Recipe:
    """Optimisation recipe. ``batch_docs`` documents per optimizer step are turned into the same
    number of tokens for packed rows (rows = batch_docs * mean framed document / seq_len)."""

    lr: float = 5e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_docs: int = 128
    seq_len: int = 1024
    token_budget: float = 1e9
    schedule: str = "linear"  # linear | cosine | constant
    final_lr_frac: float = 0.1
    warmup_steps: int = 0
    clip: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.weight_decay < 0:
            raise EditlabError("model.recipe.lr must be > 0 and weight_decay >= 0")
        if self.batch_docs < 1 or self.seq_len < 8 or not self.token_budget > 0:
            raise EditlabError("model.recipe.batch_docs >= 1, seq_len >= 8 and token_budget > 0 are required")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise EditlabError(f"model.recipe.schedule={self.schedule!r} must be linear, cosine or constant")
        if not 0 <= self.final_lr_frac <= 1 or self.warmup_steps < 0 or not self.clip > 0:
            raise EditlabError("model.recipe: final_lr_frac in [0, 1], warmup_steps >= 0, clip > 0")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


def arch_from(raw: dict) -> Arch:
    return from_dict(Arch, raw, "model.arch")


def recipe_from(raw: dict) -> Recipe:
    return from_dict(Recipe, raw, "model.recipe")


def build_model(arch: Arch, vocab_size: int, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0,
                attn_implementation: str = "sdpa") -> MistralForCausalLM:
    """A freshly initialised MistralForCausalLM (SiLU, RMSNorm, RoPE, no dropout)."""
    if arch.vocab_size is not None and arch.vocab_size != vocab_size:
        raise EditlabError(
            f"the model preset pins vocab_size={arch.vocab_size} but the world's tokenizer has {vocab_size} "
            "entries; use a world whose data.tokenizer.vocab_size matches, or set model.arch.vocab_size=null"
        )
    cfg = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        hidden_act="silu",
        max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=arch.rms_norm_eps,
        rope_theta=arch.rope_theta,
        tie_word_embeddings=arch.tie_word_embeddings,
        attention_dropout=0.0,
        sliding_window=None,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attn_implementation=attn_implementation,
    )
    return MistralForCausalLM(cfg)
