"""Hugging Face model directories the benchmark tests make (nothing can be downloaded): a byte-level BPE tokenizer
trained on a few sentences, saved either GPT-2 style (``<|endoftext|>`` as BOS/EOS, nothing added to a text, no
padding token) or Llama style (``<s>`` put before every text by its post-processor), and a config-built GPT-2 or
Llama of any size with random weights, plus a small text dataset for covariance statistics."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tests.benchmarks.test_formats import COUNTERFACT, KNOWEDIT, ZSRE

SENTENCES = [
    "The mother tongue of Danielle Darrieux is French.", "Léon Blum, a native speaker of French.",
    "What university did Watts Humphrey attend? Trinity College.", "The place of death of Leo Arons is Berlin.",
    "J. R. R. Tolkien is a native speaker of English.", "Montesquieu spoke the language of France.",
    "The University of Michigan and the Illinois Institute of Technology are universities.",
    "nq question: who played desmond doss father in hacksaw ridge? Hugo Weaving played him.",
]


def _texts() -> list[str]:
    """Every string of the test records, so the tokenizer knows their characters."""
    out = list(SENTENCES)

    def walk(x):
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk([COUNTERFACT, ZSRE, KNOWEDIT])
    return out


def make_tokenizer(out: Path, style: str, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE saved to ``out`` the GPT-2 way (``style="gpt2"``) or the Llama way (``"llama"``)."""
    special = ["<|endoftext|>"] if style == "gpt2" else ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts() * 4, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if style == "gpt2":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def make_model(out: Path, kind: str, vocab_size: int, width: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A config-built GPT-2 or Llama with random weights and its tokenizer in ``out`` (safetensors)."""
    tok = make_tokenizer(out, "gpt2" if kind == "gpt2" else "llama")
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=width, n_inner=4 * width, n_layer=layers,
                                               n_head=max(1, width // 64), n_positions=512, **ids))
        else:
            model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                                                 num_hidden_layers=layers, num_attention_heads=max(1, width // 32),
                                                 num_key_value_heads=max(1, width // 32),
                                                 max_position_embeddings=512, **ids))
    model.save_pretrained(str(out))
    return out


def write_text(path: Path, n_rows: int = 40) -> Path:
    """A JSON Lines text dataset (a ``text`` column) for covariance statistics and context prefixes."""
    rows = [{"text": " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(3))} for i in range(n_rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_records(path: Path, records: list, copies: int = 1) -> Path:
    """A benchmark file of ``records`` repeated ``copies`` times (case ids renumbered where the format has them)."""
    out = []
    for _ in range(copies):
        for r in records:
            rec = json.loads(json.dumps(r))
            if "case_id" in rec:
                rec["case_id"] = len(out)
            out.append(rec)
    path.write_text(json.dumps(out))
    return path
