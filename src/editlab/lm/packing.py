"""Packed pretraining batches over the world's memory-mapped tokenized corpus.

Each epoch shuffles the documents (seeded by (seed, epoch)), frames each as BOS + document + EOS and
concatenates them into one stream cut into rows of ``seq_len`` tokens: no padding at all. Position
ids restart at every BOS, which makes transformers build a block-diagonal causal mask under SDPA
(``masking_utils.find_packed_sequence_indices``), so no token attends across a document boundary. A
document cut by a row boundary continues in the next row (positions continue too); the first label
of each row is masked, as it has no context in the row.

The stream is a pure function of the *global batch index*: batch b of rank k is rows
``[(b mod E) * R * W + k * R, ... + R)`` of epoch ``b // E`` (E batches per epoch, R rows per rank,
W ranks). A run resumed at optimizer step g simply starts at batch g, which is why resumed and
uninterrupted runs see identical data. Rows are materialised on demand with a searchsorted over
the epoch's cumulative framed lengths, so memory stays O(documents), not O(tokens).

Why packing and not the paper's per-batch left padding: documents range from one to ten sentences,
so padded batches waste a large share of every step (see bench/pretrain.py for the measured share).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editlab.world.tokenizer import load_tokens


@dataclass(frozen=True)
class Corpus:
    """The tokenized corpus: flat ids, document offsets and framing token ids."""

    tokens: np.ndarray
    offsets: np.ndarray
    bos_id: int
    eos_id: int

    @staticmethod
    def open(world_dir: Path) -> Corpus:
        """Memory-map a world's tokenized corpus (``tokens.bin`` / ``doc_offsets.npy``)."""
        tokens, offsets, meta = load_tokens(Path(world_dir))
        return Corpus(tokens, offsets, meta["bos_id"], meta["eos_id"])

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def framed_tokens(self) -> int:
        """Tokens per epoch with BOS/EOS framing."""
        return int(self.offsets[-1]) + 2 * self.n_docs

    def mean_framed_doc(self) -> float:
        return self.framed_tokens() / self.n_docs


class PackedStream(torch.utils.data.Dataset):
    """Rows addressed by (epoch, row); see the module docstring for the layout."""

    def __init__(self, corpus: Corpus, seq_len: int, seed: int) -> None:
        self.corpus, self.seq_len, self.seed = corpus, seq_len, seed
        self.rows_per_epoch = corpus.framed_tokens() // seq_len
        self._epoch = -1
        self._order = self._cum = None

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch != self._epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.corpus.n_docs)
            framed = self.corpus.offsets[order + 1] - self.corpus.offsets[order] + 2
            self._order, self._cum, self._epoch = order, np.r_[0, np.cumsum(framed)], epoch
        return self._order, self._cum

    def row(self, epoch: int, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, positions) of row ``r`` of ``epoch``, each of shape (seq_len,)."""
        order, cum = self._layout(epoch)
        p = np.arange(r * self.seq_len, (r + 1) * self.seq_len, dtype=np.int64)  # stream positions
        doc = np.searchsorted(cum, p, side="right") - 1  # which framed document
        local = p - cum[doc]  # 0 = BOS, 1..len = body, len + 1 = EOS
        length = cum[doc + 1] - cum[doc] - 2
        body = (local > 0) & (local <= length)
        ids = np.where(local == 0, self.corpus.bos_id, self.corpus.eos_id).astype(np.int64)
        ids[body] = self.corpus.tokens[self.corpus.offsets[order[doc[body]]] + local[body] - 1]
        return ids, local

    def __len__(self) -> int:
        return self.rows_per_epoch

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        ids, pos = self.row(*key)
        ids_t = torch.from_numpy(ids)
        labels = ids_t.clone()
        labels[0] = -100
        return {"input_ids": ids_t, "position_ids": torch.from_numpy(pos), "labels": labels}


class StreamBatches(torch.utils.data.Sampler):
    """Yields the (epoch, row) keys of global batches ``start(), start() + 1, ..., n_batches - 1``.

    ``start`` is called when iteration begins (after Lightning restored a checkpoint), so a resumed
    run continues at its optimizer step.
    """

    def __init__(self, rows_per_epoch: int, rows_per_rank: int, rank: int, world: int, n_batches: int,
                 start: Callable[[], int]) -> None:
        self.R, self.rank, self.world, self.n_batches, self.start = rows_per_rank, rank, world, n_batches, start
        self.per_epoch = rows_per_epoch // (rows_per_rank * world)
        if self.per_epoch < 1:
            raise ValueError("a global batch is larger than one epoch of the corpus")

    def __len__(self) -> int:
        return self.n_batches - self.start()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in range(self.start(), self.n_batches):
            epoch, k = divmod(b, self.per_epoch)
            first = k * self.R * self.world + self.rank * self.R
            yield [(epoch, first + i) for i in range(self.R)]
