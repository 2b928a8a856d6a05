"""Quiet consoles: third-party tips, chatter and deprecation notices filtered in one place.

Why: a default run's console should show what the run does (its own log lines, real warnings, the
result), not advertisements ("Tip: ... try installing litlogger"), "GPU available: False" on a CPU run,
or a dependency's deprecation notice about its own internals that a user cannot act on. Only the
exact messages listed here are dropped; every other warning and log record is kept.
:func:`silence_third_party` is called once by :func:`editlab.cli.run_cli`, before any entry point runs.
"""

from __future__ import annotations

import logging
import re
import warnings

# Lightning's rank-zero INFO lines (both loggers: lightning_utilities' rank_zero_info uses whichever
# of the two was imported last)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
CHATTER = re.compile(r"^(💡 Tip:|GPU available:|TPU available:|HPU available:|IPU available:"
                     r"|`Trainer\(limit_(train|val|test|predict)_batches=1\)` was configured)")

# deprecated APIs called by a dependency's own code (not the user's to fix): Lightning 2.6's _pytree.py
# (torch's isinstance(..., LeafSpec)), peft's PeftModel (transformers' is_gradient_checkpointing)
DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"`is_gradient_checkpointing` is deprecated",
                # PEFT on GPT-2's Conv1D: it sets fan_in_fan_out itself, which is right (weights are (d_in, d_out))
                r"fan_in_fan_out is set to False but the target module is `Conv1D`")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not CHATTER.match(record.getMessage())


_FILTER = _DropChatter()


def silence_third_party() -> None:
    """Install the filters (idempotent): Lightning's tips and accelerator chatter, listed deprecations,
    transformers' progress bars (e.g. "Writing model shards" on every export)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for message in DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()
    try:  # datasets' "Generating train split" bar when a text dataset is read (stats.dataset)
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return
    datasets.disable_progress_bars()
