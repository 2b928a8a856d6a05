"""Clean stops: SIGTERM / SIGINT end a run with a resumable state and a non-zero exit (143 / 130).

Two regimes, because what is safe to interrupt differs:

- outside a Lightning fit (world build, single/batch edits, reports), :func:`graceful_stop` turns the
  signal into :class:`Interrupted` at once; those stages write their outputs atomically or append
  whole records, so an exception anywhere leaves nothing that looks complete.
- inside a Lightning fit (pretraining, editor meta-training, sequential editing), an exception in the
  middle of an optimizer step would leave half-updated weights, so :class:`StopOnSignal` only notes
  the signal and acts at the next safe point (end of a training batch or of an epoch): it writes the
  resumable checkpoint atomically, then raises :class:`Interrupted`. It replaces Lightning's own
  SIGTERM handler for the fit, which would raise ``SIGTERMException`` (a ``SystemExit`` with exit
  status 0, so ``make`` would carry on) without a checkpoint.

The entry points (:mod:`editlab.cli`) map :class:`Interrupted` to exit status ``128 + signum``.
Editor meta-training (``train.py task=editor``) stops like pretraining (``ckpt_path=last`` resumes it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A run stopped by a signal; ``exit_code`` is the shell's convention, 128 + signal number."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        self.signum, self.checkpoint = int(signum), checkpoint
        super().__init__(f"{signal.Signals(self.signum).name}" + (f"; state saved in {checkpoint}" if checkpoint
                                                                   else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Interrupted` inside the block (main thread only)."""
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def save_atomically(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file renamed over ``path`` (never a truncated checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)  # the whole state (optimizer, loops): a resume needs it
    if trainer.is_global_zero:
        os.replace(tmp, path)


class StopOnSignal(Callback):
    """Defer SIGTERM/SIGINT during ``fit`` to a safe point, save ``path`` there, raise :class:`Interrupted`.

    Args:
        path: the resumable checkpoint to write (the same file ``ckpt_path=last`` resumes from).
        at: ``"batch"`` (after each optimizer step: pretraining) or ``"epoch"`` (after
            each epoch: sequential editing, where one epoch is one edit).
    """

    def __init__(self, path: Path, at: str = "batch") -> None:
        if at not in ("batch", "epoch"):
            raise ValueError(f"at={at!r} must be 'batch' or 'epoch'")
        self.path, self.at = Path(path), at
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    def _note(self, signum: int, _frame: Any) -> None:
        """Remember the signal and say at once what happens next (a step can take a while on a CPU)."""
        if self.signum is None:
            unit = "step" if self.at == "batch" else "edit"
            n = self._trainer.global_step + 1 if self.at == "batch" and self._trainer else None
            which = f"{unit} {n}" if n else f"the current {unit}"
            sys.stderr.write(f"\n{signal.Signals(signum).name} received: finishing {which}, then saving {self.path}\n")
            sys.stderr.flush()
        self.signum = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its SIGTERM handler just before the loop starts; replace it for the fit
        self.signum = None
        self._trainer = trainer
        self._old = {s: signal.signal(s, self._note) for s in SIGNALS}

    def _maybe_stop(self, trainer: L.Trainer) -> None:
        if self.signum is not None:
            save_atomically(trainer, self.path)
            raise Interrupted(self.signum, self.path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.at == "batch":
            if self.signum is not None:
                # Lightning logs a step's metrics just after this hook: log them now, or the logs (and curves drawn
                # from them) would miss the step that ends the run; a resume continues with the next one
                trainer._logger_connector.update_train_step_metrics()
            self._maybe_stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at == "epoch":
            self._maybe_stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a signal that came after the last batch/epoch (e.g. during a final evaluation callback) must not
        # be lost: the fit is complete, so the checkpoint holds the final state and a resume only finishes up
        self._maybe_stop(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning's own teardown (which runs before this hook) already restored the handlers it found
        # before the fit; put ours back only where ours is still installed, never Lightning's stale handler
        for s, h in self._old.items():
            if signal.getsignal(s) == self._note:
                signal.signal(s, h)
        self._old = {}
        if self.signum is not None:  # noted after on_train_end: deliver it to the handler outside the fit
            signum, self.signum = self.signum, None
            signal.raise_signal(signum)
