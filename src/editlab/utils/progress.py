"""Lightning's progress bar, also right after a resume in the middle of an epoch.

A fit resumed mid-epoch (``ckpt_path=last``) runs no epoch-start hook, which is where Lightning's
``TQDMProgressBar`` learns its total and names the epoch; the resumed run would show ``Training: 7/?`` with no
total, rate or time left. :class:`RunProgressBar` sets them at the first batch instead, counting the rate from the
resume point.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class RunProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose total and description are set at the first batch when no epoch start set them."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        total = convert_inf(self.total_train_batches) or (trainer.max_steps if trainer.max_steps > 0 else None)
        if bar is not None and bar.total is None and total is not None:
            bar.reset(total=total)
            bar.initial = bar.n = batch_idx  # rate and time left from the resume point on
            bar.set_description(f"Epoch {trainer.current_epoch}")
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
