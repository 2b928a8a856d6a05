"""Fixtures of the edit.py pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editlab.lm.checkpoint import export_checkpoint
from editlab.lm.presets import Arch, build_model


@pytest.fixture(scope="module")
def ckpt(tiny_world, tmp_path_factory) -> Path:
    """A small random Mistral exported as a checkpoint of the tiny world (pipeline tests need no training)."""
    meta = json.loads((tiny_world.dir / "tokens.json").read_text())
    torch.manual_seed(0)
    model = build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2), meta["vocab_size"], meta["bos_id"], meta["eos_id"], meta["pad_id"])
    out = tmp_path_factory.mktemp("ckpt") / "model"
    return export_checkpoint(model, tiny_world.dir, out, {}, tiny_world.world["hash"], {})
