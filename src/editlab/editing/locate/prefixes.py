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

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from editlab.errors import EditlabError
from editlab.lm.packing import Corpus


def corpus_prefixes(tok: PreTrainedTokenizerBase, world_dir: Path | None, lengths: Sequence[Sequence[int]],
                    seed: int = 0) -> list[str]:
    """``sum(count)`` prefixes, ``count`` of ``length`` corpus tokens for each ``(length, count)`` in ``lengths``.

    Returns the prefix texts in order (all ``length`` groups, each in draw order). An empty ``lengths``
    gives no prefix (the methods then use the bare prompt only).
    """
    pairs = [(int(n), int(k)) for n, k in lengths]
    if any(n < 1 or k < 0 for n, k in pairs):
        raise EditlabError(f"context prefix lengths {lengths} must be [[tokens >= 1, count >= 0], ...]")
    if not any(k for _, k in pairs):
        return []
    if world_dir is None:
        raise EditlabError("context prefixes are drawn from the world's corpus, but the edit context has no "
                           "world_dir; pass the world directory (edit.py does) or set the method's prefixes to []")
    corpus = Corpus.open(Path(world_dir))
    order = np.random.default_rng(seed).permutation(corpus.n_docs)
    sizes = np.diff(corpus.offsets)
    out: list[str] = []
    cursor = 0
    for length, count in pairs:
        got = 0
        while got < count:
            if cursor >= len(order):
                raise EditlabError(f"the corpus has too few documents of >= {length} tokens for the method's "
                                   f"context prefixes {lengths}; ask for fewer or shorter prefixes")
            doc = int(order[cursor])
            cursor += 1
            if sizes[doc] < length:
                continue
            start = int(corpus.offsets[doc])
            text = tok.decode(corpus.tokens[start : start + length].tolist()).replace('"', " ")
            text = " ".join(text.split()).rstrip(".")
            if not text:
                continue
            out.append(f"{text}.")
            got += 1
    return out
