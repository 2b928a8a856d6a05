"""Hugging Face model directories built from a config, for tests and speed figures where nothing can be downloaded.

:func:`train_bpe` trains a byte-level BPE on given texts and saves it the GPT-2 way (``<|endoftext|>`` as BOS and EOS,
nothing added to a text, no padding token) or the Llama way (``<s>`` put before every text by its post-processor);
:func:`random_causal_lm` saves a GPT-2 or Llama with random weights next to it. Random weights say nothing about how
well a method edits; they give the true cost of a model of that shape (GPT-2 small: ``width=768, layers=12``,
124M parameters with its 50,257-token vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

STYLES = ("gpt2", "llama")


def train_bpe(texts: Sequence[str], out: Path, style: str, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE of ``texts`` saved to ``out`` in ``style`` (:data:`STYLES`)."""
    special = ["<|endoftext|>"] if style == "gpt2" else ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if style == "gpt2":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    Path(out).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def random_causal_lm(out: Path, kind: str, texts: Sequence[str], vocab_size: int, width: int = 64, layers: int = 2,
                     seed: int = 0, tokenizer_vocab: int = 600) -> Path:
    """A config-built GPT-2 (``kind="gpt2"``) or Llama with random weights, and a BPE of ``texts`` in its style, saved
    to ``out`` (safetensors). ``vocab_size`` is the model's (at least the tokenizer's)."""
    tok = train_bpe(texts, out, "gpt2" if kind == "gpt2" else "llama", tokenizer_vocab)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    vocab = max(vocab_size, len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=width, n_inner=4 * width, n_layer=layers,
                                               n_head=max(1, width // 64), n_positions=1024, **ids))
        else:
            heads = max(1, width // 32)
            model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
                                                 num_hidden_layers=layers, num_attention_heads=heads,
                                                 num_key_value_heads=heads, max_position_embeddings=1024, **ids))
    model.save_pretrained(str(out))
    return Path(out)
