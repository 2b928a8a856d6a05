"""Byte-level BPE trained on the corpus, and the corpus tokenized into memory-mapped arrays.

Specials: ``<pad>`` = 0, ``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2. No post-processor: BOS/EOS are added
by the consumers (datamodule, scoring core) so that documents are stored once, unframed. Objects
follow a space in every sentence, so the byte-level pre-tokenizer gives them the same ``Ġ``-prefixed
pieces the scoring core uses for `` o``.

Determinism: the trainer is fed a fixed, seeded sample of documents in a fixed order with
``TOKENIZERS_PARALLELISM=false`` during training, and the saved JSON is canonical (tested across
processes with different PYTHONHASHSEED values).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIALS = (PAD, BOS, EOS)


def train_tokenizer(texts: Iterator[str], n_texts: int, vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (specials included) on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tok.train_from_iterator(texts, trainer=trainer, length=n_texts)
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    return tok


def save_tokenizer(tok: Tokenizer, directory: Path) -> None:
    """Write ``tokenizer.json`` plus the small config files that let
    ``transformers.AutoTokenizer`` / ``PreTrainedTokenizerFast`` load the directory."""
    (directory / "tokenizer.json").write_text(tok.to_str(pretty=False))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=1, sort_keys=True))


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every token id."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def tokenize_documents(
    tok: Tokenizer,
    docs: Callable[[int, int], Iterator[str]],
    n_docs: int,
    directory: Path,
    chunk: int = 8192,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Tokenize ``n_docs`` documents into ``tokens.bin`` (flat ids) and ``doc_offsets.npy`` (int64,
    n_docs + 1). ``docs(start, stop)`` yields the texts of documents start..stop-1.

    Returns the metadata written to ``tokens.json``.
    """
    dtype = token_dtype(tok.get_vocab_size())
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    with open(directory / "tokens.bin", "wb") as f:
        for a in range(0, n_docs, chunk):
            b = min(n_docs, a + chunk)
            enc = tok.encode_batch_fast(list(docs(a, b)), add_special_tokens=False)
            ids = [e.ids for e in enc]
            lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            offsets[a + 1 : b + 1] = offsets[a] + np.cumsum(lens)
            np.fromiter((t for x in ids for t in x), dtype=dtype, count=int(lens.sum())).tofile(f)
            if progress:
                progress(b - a)
    np.save(directory / "doc_offsets.npy", offsets)
    meta = {
        "dtype": dtype.name,
        "n_docs": n_docs,
        "n_tokens": int(offsets[-1]),
        "vocab_size": tok.get_vocab_size(),
        "pad_id": tok.token_to_id(PAD),
        "bos_id": tok.token_to_id(BOS),
        "eos_id": tok.token_to_id(EOS),
        "files": {"tokens": "tokens.bin", "offsets": "doc_offsets.npy"},
    }
    (directory / "tokens.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return meta


def load_tokens(directory: Path) -> tuple[np.memmap, np.ndarray, dict]:
    """Memory-map the tokenized corpus: (flat token ids, document offsets, metadata).
    Document d is ``tokens[offsets[d]:offsets[d + 1]]``."""
    meta = json.loads((directory / "tokens.json").read_text())
    tokens = np.memmap(directory / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    offsets = np.load(directory / "doc_offsets.npy", mmap_mode="r", allow_pickle=False)
    return tokens, offsets, meta
