"""The plan of a long fit said before and early: steps and tokens at the start, the measured rate and the time
left after a short warm-up, and a warning when a GPU-sized recipe starts on a CPU.

Why: a CPU run of ``mistral_83m`` plans 61,036 steps at ~90 s each (about two months); without a word the user
learns that only from a progress bar, which shows no rate until it has seen several steps.
"""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

from editlab.utils.hardware import peak_memory_mb

GPU_TOKENS = 100_000_000  # a recipe of more tokens than this is a GPU run (the paper's: 1e9)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


class RunPlan(Callback):
    """Print the plan when the fit starts and the measured rate once ``warmup_s`` seconds of steps have run.

    Args:
        n_steps: optimizer steps of the whole run.
        tokens_per_step: tokens per optimizer step (all ranks).
        what: a few words naming the run (``"pretraining mistral_tiny"``).
        warmup_s: seconds of steps measured before the estimate (the first step, with its compilation and
            allocations, is left out).
    """

    def __init__(self, n_steps: int, tokens_per_step: int, what: str, warmup_s: float = 10.0) -> None:
        self.n_steps, self.tokens_per_step, self.what, self.warmup_s = n_steps, tokens_per_step, what, warmup_s
        self._t0: float | None = None
        self._step0 = 0
        self._said = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        start = trainer.global_step
        resumed = f"; resuming at step {start} ({start / self.n_steps:.0%} done)" if start else ""
        total = self.n_steps * self.tokens_per_step
        say(f"plan: {self.what}: {self.n_steps:,} steps of {self.tokens_per_step:,} tokens "
            f"({total / 1e6:,.1f}M tokens) on {trainer.strategy.root_device.type}, {trainer.precision}{resumed}")
        if trainer.strategy.root_device.type == "cpu" and total > GPU_TOKENS:
            say(f"warning: {total / 1e6:,.0f}M tokens is a GPU recipe; on this CPU it may take days (the rate follows "
                "in a few seconds). On a GPU: trainer=gpu; on a CPU: model=mistral_tiny")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self._said or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        if self._t0 is None:  # after the first step: compilation and first allocations are not the rate
            self._t0, self._step0 = now, trainer.global_step
            return
        done = trainer.global_step - self._step0
        if now - self._t0 < self.warmup_s or done < 2:
            return
        per_step = (now - self._t0) / done
        left = (self.n_steps - trainer.global_step) * per_step
        say(f"rate: {1 / per_step:.2f} steps/s ({self.tokens_per_step / per_step:,.0f} tokens/s) -> about "
            f"{_duration(left)} left for {self.n_steps - trainer.global_step:,} steps; "
            f"peak memory {peak_memory_mb(trainer.strategy.root_device) / 1024:.1f} GB")
        self._said = True


def say(line: str) -> None:
    """One line on stderr, beside the progress bar."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
