"""LightningDataModule over a world's tokenized corpus (packed rows, see :mod:`editlab.lm.packing`)."""

from __future__ import annotations

import lightning as L
import torch

from editlab.lm.packing import Corpus, PackedStream, StreamBatches


class PackedDataModule(L.LightningDataModule):
    """Packed rows of ``seq_len`` tokens; ``rows_per_step`` rows per optimizer step over all ranks.

    Deterministic (seeded per epoch), DDP-aware (each rank takes its own rows of every global batch)
    and resumable (the sampler starts at the trainer's restored global step).
    """

    def __init__(self, corpus: Corpus, seq_len: int, rows_per_step: int, n_steps: int, seed: int,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.corpus = corpus
        self.seq_len, self.rows_per_step, self.n_steps = seq_len, rows_per_step, n_steps
        self.seed, self.num_workers = seed, num_workers

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        if self.rows_per_step % world:
            raise ValueError(f"rows per step ({self.rows_per_step}) must divide evenly over {world} ranks")
        dataset = PackedStream(self.corpus, self.seq_len, self.seed)
        sampler = StreamBatches(dataset.rows_per_epoch, self.rows_per_step // world, rank, world, self.n_steps,
                                start=lambda: trainer.global_step if trainer is not None else 0)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers)
