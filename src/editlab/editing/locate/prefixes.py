"""Deterministic context prefixes drawn from the world's corpus (ROME's context templates).

ROME and MEMIT average the key (and optimise the target value) over the request prompt behind several
short contexts, so that the edit holds whatever text precedes the subject (ROME Sec. 3.1, "we sample
... 10 tokens ... to average over contexts"). ROME *generates* those contexts with the model; here they
are read off the world's own corpus, which makes them deterministic (same world + seed -> same
prefixes, no sampling noise between runs) and in-distribution for a model trained on that corpus.

``lengths`` is ROME's ``context_template_length_params``: pairs ``(length, count)`` = ``count``
prefixes of ``length`` tokens each, counted in corpus tokens (no BOS, no prompt, no padding). Each
prefix is the first ``length`` tokens of a document drawn by a seeded permutation of the corpus
(documents shorter than ``length`` are skipped, so no prefix is ever empty or short), decoded, with
quote marks removed (an unclosed quote would put the prompt inside a TF sentence) and closed with a
period as ROME closes its generated contexts (``"<text>. {}"``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from editlab.errors import EditlabError
from editlab.lm.packing import Corpus


def corpus_prefixes(tok: PreTrainedTokenizerBase, world_dir: Path | None, lengths: Sequence[Sequence[int]],
                    seed: int = 0, text: Path | None = None) -> list[str]:
    """``sum(count)`` prefixes, ``count`` of ``length`` corpus tokens for each ``(length, count)`` in ``lengths``.

    Returns the prefix texts in order (all ``length`` groups, each in draw order). An empty ``lengths``
    gives no prefix (the methods then use the bare prompt only). ``text``: a text dataset on disk (the method's
    ``stats.dataset``) to draw from instead of the world's corpus, tokenised with ``tok``, for a model that was not
    trained on a world (ROME generates its prefixes from the model; a dataset keeps them deterministic).
    """
    pairs = [(int(n), int(k)) for n, k in lengths]
    if any(n < 1 or k < 0 for n, k in pairs):
        raise EditlabError(f"context prefix lengths {lengths} must be [[tokens >= 1, count >= 0], ...]")
    if not any(k for _, k in pairs):
        return []
    docs = _text_documents(tok, text, seed) if text is not None else _corpus_documents(world_dir, seed)
    out: list[str] = []
    for length, count in pairs:
        got = 0
        while got < count:
            ids = next(docs, None)
            if ids is None:
                raise EditlabError(f"the {'text dataset' if text is not None else 'corpus'} has too few documents of "
                                   f">= {length} tokens for the method's context prefixes {lengths}; ask for fewer "
                                   "or shorter prefixes")
            if len(ids) < length:
                continue
            piece = tok.decode(ids[:length]).replace('"', " ")
            piece = " ".join(piece.split()).rstrip(".")
            if not piece:
                continue
            out.append(f"{piece}.")
            got += 1
    return out


def _corpus_documents(world_dir: Path | None, seed: int) -> Iterator[list[int]]:
    """The corpus documents' tokens (no BOS) in a seeded order."""
    if world_dir is None:
        raise EditlabError("context prefixes are drawn from the world's corpus, but the edit context has no "
                           "world_dir; pass the world directory (edit.py does), a text dataset (stats.dataset=...) "
                           "or set the method's prefixes to []")
    corpus = Corpus.open(Path(world_dir))
    for doc in np.random.default_rng(seed).permutation(corpus.n_docs):
        yield corpus.tokens[int(corpus.offsets[doc]): int(corpus.offsets[doc + 1])].tolist()


def _text_documents(tok: PreTrainedTokenizerBase, text: Path, seed: int) -> Iterator[list[int]]:
    """The text dataset's rows tokenised without special tokens, in a seeded order."""
    from editlab.editing.locate.stats import read_text_dataset

    ds = read_text_dataset(Path(text))
    for i in np.random.default_rng(seed).permutation(len(ds)):
        yield tok(ds[int(i)]["text"], add_special_tokens=False)["input_ids"]
