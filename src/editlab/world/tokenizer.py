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

from editlab.errors import EditlabError
from editlab.utils.jsonio import read_json

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


def _encode_flat(tok: Tokenizer, texts: list[str], dtype: np.dtype, chunk: int = 65536,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``texts`` into a flat id array and offsets (CSR), batch by batch (``progress(n)`` after each)."""
    parts: list[np.ndarray] = []
    lens = np.zeros(len(texts), dtype=np.int64)
    for a in range(0, len(texts), chunk):
        ids = [e.ids for e in tok.encode_batch_fast(texts[a : a + chunk], add_special_tokens=False)]
        lens[a : a + len(ids)] = [len(x) for x in ids]
        parts.append(np.fromiter((t for x in ids for t in x), dtype=dtype, count=int(lens[a : a + len(ids)].sum())))
        if progress:
            progress(len(ids))
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)), np.r_[0, np.cumsum(lens)]


def tokenize_documents(
    tok: Tokenizer,
    texts: list[str],
    doc_ptr: np.ndarray,
    sent_ids: np.ndarray,
    directory: Path,
    chunk_docs: int = 65536,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Tokenize the documents (sentences ``sent_ids[doc_ptr[d]:doc_ptr[d+1]]`` joined by ". ") into
    ``tokens.bin`` (flat ids) and ``doc_offsets.npy`` (int64, n_docs + 1).

    Why it is fast: the byte-level pre-tokenizer never lets a token cross the boundary between a
    sentence that ends in a letter or digit and the following ". ", so
    ``encode(s1 + ". " + s2) == encode(s1) + encode(".") + encode(" " + s2)``. Each distinct sentence
    is encoded once in both forms (standalone, and continuation with its leading space) and
    documents are assembled by a vectorised ragged gather, instead of re-encoding every sentence
    ``resamples`` times. Documents with a sentence that ends in another character (possible with
    real-data names) before a join are encoded directly, and a seeded sample of documents is
    checked against direct encoding (:func:`verify_sample`).

    Returns the metadata written to ``tokens.json``.
    """
    dtype = token_dtype(tok.get_vocab_size())
    n_docs = len(doc_ptr) - 1
    dot = tok.encode(".", add_special_tokens=False).ids
    # source buffer: [standalone sentence i] ... then [dot + " " + sentence i] ...
    first_tok, first_off = _encode_flat(tok, texts, dtype, progress=progress)
    cont_tok, cont_off = _encode_flat(tok, [" " + t for t in texts], dtype, progress=progress)
    n_s = len(texts)
    cont_len = np.diff(cont_off) + len(dot)
    dotted = np.empty(int(cont_len.sum()), dtype=dtype)
    dot_off = np.r_[0, np.cumsum(cont_len)]
    pos = np.arange(len(dotted)) - np.repeat(dot_off[:-1], cont_len)  # position within the segment
    seg = np.repeat(np.arange(n_s), cont_len)
    for k, t in enumerate(dot):
        dotted[pos == k] = t
    body = pos >= len(dot)
    dotted[body] = cont_tok[cont_off[seg[body]] + pos[body] - len(dot)]
    del pos, seg, body, cont_tok
    src = np.concatenate([first_tok, dotted])
    starts = np.r_[first_off[:-1], len(first_tok) + dot_off[:-1]]  # standalone i -> i, dotted i -> n_s + i
    lengths = np.r_[np.diff(first_off), cont_len]
    del first_tok, dotted

    safe_end = np.array([t[-1:].isalnum() for t in texts], dtype=bool)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    with open(directory / "tokens.bin", "wb") as f:
        for a in range(0, n_docs, chunk_docs):
            b = min(n_docs, a + chunk_docs)
            ids = sent_ids[doc_ptr[a] : doc_ptr[b]]
            local_ptr = doc_ptr[a : b + 1] - doc_ptr[a]
            is_first = np.zeros(len(ids), dtype=bool)
            is_first[local_ptr[:-1]] = True
            seg = np.where(is_first, ids, n_s + ids)
            seg_len = lengths[seg]
            total = int(seg_len.sum())
            gather = np.repeat(starts[seg] - np.r_[0, np.cumsum(seg_len)[:-1]], seg_len) + np.arange(total)
            out = src[gather]
            doc_len = np.add.reduceat(seg_len, local_ptr[:-1]) if len(seg_len) else np.zeros(b - a, np.int64)
            # documents with an unsafe join: encode directly
            is_last = np.zeros(len(ids), dtype=bool)
            is_last[local_ptr[1:] - 1] = True
            bad_pos = ~safe_end[ids] & ~is_last
            if bad_pos.any():
                bad_docs = np.unique(np.searchsorted(local_ptr, np.flatnonzero(bad_pos), side="right") - 1)
                seg_out = np.split(out, np.cumsum(doc_len)[:-1])
                for d in bad_docs.tolist():
                    text = ". ".join(texts[i] for i in ids[local_ptr[d] : local_ptr[d + 1]].tolist())
                    seg_out[d] = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=dtype)
                    doc_len[d] = len(seg_out[d])
                out = np.concatenate(seg_out)
            offsets[a + 1 : b + 1] = offsets[a] + np.cumsum(doc_len)
            out.tofile(f)
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


def verify_sample(tok: Tokenizer, docs: Callable[[int, int], Iterator[str]], directory: Path, n: int,
                  rng: np.random.Generator) -> None:
    """Check ``n`` seeded documents of ``tokens.bin`` against direct encoding of their text.

    Raises RuntimeError on a mismatch: it would mean the assembly assumption broke (a bug, not bad
    input), and the build must not be marked complete.
    """
    tokens, offsets, _ = load_tokens(directory)
    n_docs = len(offsets) - 1
    for d in rng.choice(n_docs, size=min(n, n_docs), replace=False).tolist():
        text = next(docs(d, d + 1))
        want = tok.encode(text, add_special_tokens=False).ids
        if tokens[offsets[d] : offsets[d + 1]].tolist() != want:
            raise RuntimeError(f"tokenized document {d} differs from direct encoding; please report this bug")
    del tokens


def rebuild_hint(directory: Path) -> str:
    """The fix for a damaged file of the world at ``directory`` (a world is a cache: deleting it is safe)."""
    return f"rebuild the world: delete {directory} and run python -m editlab.world (with the same data=)"


def load_tokens(directory: Path) -> tuple[np.memmap, np.ndarray, dict]:
    """Memory-map the tokenized corpus: (flat token ids, document offsets, metadata).
    Document d is ``tokens[offsets[d]:offsets[d + 1]]``."""
    fix = rebuild_hint(directory)
    meta = read_json(directory / "tokens.json", fix, "corpus description")
    path = directory / "tokens.bin"
    want = int(meta["n_tokens"]) * np.dtype(meta["dtype"]).itemsize
    have = path.stat().st_size if path.is_file() else -1
    if have != want:
        raise EditlabError(f"{path} holds {max(have, 0)} bytes where tokens.json says {want} (truncated or damaged); "
                           f"{fix}")
    tokens = np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    try:
        offsets = np.load(directory / "doc_offsets.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EditlabError(f"cannot read {directory / 'doc_offsets.npy'} ({str(exc).splitlines()[0]}); {fix}") from None
    if offsets.ndim != 1 or len(offsets) < 1 or int(offsets[-1]) != len(tokens):
        raise EditlabError(f"{directory / 'doc_offsets.npy'} does not match tokens.bin; {fix}")
    return tokens, offsets, meta
