"""utils/quiet: the listed third-party chatter and deprecations are dropped, everything else is kept."""

from __future__ import annotations

import logging
import warnings

from editlab.utils.quiet import LIGHTNING_LOGGERS, silence_third_party


def test_lightning_tips_and_accelerator_chatter_are_dropped_real_messages_kept(caplog):
    silence_third_party()
    silence_third_party()  # idempotent: one filter, not two
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        assert len(logger.filters) == 1
        with caplog.at_level(logging.INFO, logger=name):
            caplog.clear()
            logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
            logger.info("GPU available: False, used: False")
            logger.info("TPU available: False, using: 0 TPU cores")
            logger.info("`Trainer(limit_val_batches=1)` was configured so 1 batch will be used.")
            logger.info("Restoring states from the checkpoint path at last.ckpt")
            logger.warning("GPU memory is low")  # only the line start is matched
        assert [r.getMessage() for r in caplog.records] == ["Restoring states from the checkpoint path at last.ckpt",
                                                            "GPU memory is low"]


def test_only_the_listed_deprecations_are_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_third_party()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                      stacklevel=1)
        warnings.warn("`foo` is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`foo` is deprecated", "a real problem"]
