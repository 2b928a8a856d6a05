"""Logger factories that work with no network and no account."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_logged_in() -> bool:
    """True when the user has W&B credentials (API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, project: str = "editlab", name: str | None = None,
                 mode: str | None = None) -> WandbLogger:
    """A WandbLogger that runs offline unless the user is logged in or sets ``mode``/``WANDB_MODE``."""
    mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, project=project, name=name, offline=mode == "offline",
                       mode=None if mode == "offline" else mode)
