"""Shared fixtures: the real Hydra configs composed with tiny overrides, built once per session."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from editlab.utils.rundir import register_resolvers
from editlab.world.agent import Agent
from editlab.world.build import build_world
from editlab.world.config import WorldConfig, world_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def load_bench(name: str):
    """``bench/<name>.py`` as a module (the benchmark scripts are files, not a package), for tests of their parts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "bench" /
                                                  f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: one pytest-xdist worker per core already fills the cores
    import torch

    torch.set_num_threads(1)
register_resolvers()  # the configs' ${editlab.job_subdir:}, as train.py and edit.py register it


def data_config(overrides: list[str] | None = None, preset: str = "wikidata_synth_tiny") -> dict:
    """The resolved ``data`` node of ``conf/world.yaml`` with ``data=<preset>`` and overrides."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="world", overrides=[f"data={preset}", *(overrides or [])])
    return OmegaConf.to_container(cfg.data, resolve=True)


@dataclass
class BuiltWorld:
    """A built world and its parts, loaded for tests."""

    dir: Path
    cfg: WorldConfig
    world: dict
    stats: dict
    cases: list[dict]
    meta_cases: list[dict]
    agent: Agent

    def ids(self) -> tuple[dict, dict, dict]:
        """name -> id maps for subjects, relations and objects."""
        w = self.world
        return ({n: i for i, n in enumerate(w["subjects"])},
                {r["name"]: r["id"] for r in w["relations"]},
                {n: i for i, n in enumerate(w["objects"])})


def load_built(directory: Path, cfg: WorldConfig) -> BuiltWorld:
    read = lambda name: [json.loads(x) for x in (directory / name).read_text().splitlines()]  # noqa: E731
    return BuiltWorld(directory, cfg, json.loads((directory / "world.json").read_text()),
                      json.loads((directory / "stats.json").read_text()), read("cases.jsonl"),
                      read("meta_cases.jsonl"), Agent.load(str(directory / "agent.npz")))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> BuiltWorld:
    """The default CPU world (``data=wikidata_synth_tiny``), built once per test session."""
    cfg = world_config(data_config())
    report = build_world(cfg, tmp_path_factory.mktemp("cache"), progress=False)
    return load_built(report.directory, cfg)


def export_random_model(world, out: Path, run_config: dict | None = None) -> Path:
    """A small random Mistral (seed 0) of ``world``'s vocabulary exported to ``out`` (tests need no training)."""
    import torch

    from editlab.lm.checkpoint import export_checkpoint
    from editlab.lm.presets import Arch, build_model

    meta = json.loads((world.dir / "tokens.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2), meta["vocab_size"], meta["bos_id"], meta["eos_id"],
                            meta["pad_id"])
    return export_checkpoint(model, world.dir, out, run_config or {}, world.world["hash"], {})


@pytest.fixture(scope="session")
def random_checkpoint(tiny_world, tmp_path_factory) -> Path:
    """A small random Mistral exported as a checkpoint of the tiny world."""
    return export_random_model(tiny_world, tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@dataclass
class TinyLM:
    """A briefly trained tiny Mistral on the tiny world's corpus, for editing tests."""

    model: object  # MistralForCausalLM in eval mode
    tok: object  # the world's PreTrainedTokenizerFast
    world: BuiltWorld
    max_new_tokens: int


@pytest.fixture(scope="session")
def tiny_lm(tiny_world) -> TinyLM:
    """4 blocks of width 64 (~0.5M parameters, most in the 2048-token embeddings), 150 AdamW steps of
    16 packed corpus rows of 64 tokens (~20 s on one core): it has learnt the sentence grammar (which
    object type follows which relation), so an edit has to move real probability mass."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from editlab.eval.probes import max_object_tokens
    from editlab.lm.presets import Arch, build_model

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_world.dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        arch = Arch(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=256)
        model = build_model(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        pretrain_briefly(model, tiny_world.dir)
    return TinyLM(model, tok, tiny_world, max_object_tokens(tok, tiny_world.world["objects"]))


_SCHEMAS: dict = {}


def world_schema(world_dir: Path):
    """The relation schema of the world at ``world_dir`` (what edit.py puts in every EditContext), built once."""
    from editlab.runs.edit import schema_of
    from editlab.world.loading import World

    key = str(world_dir)
    if key not in _SCHEMAS:
        _SCHEMAS[key] = schema_of(World.open(world_dir))
    return _SCHEMAS[key]


def pretrain_briefly(model, world_dir: Path, steps: int = 150, rows: int = 16):
    """``steps`` AdamW steps (lr 5e-3) of ``rows`` packed corpus rows of 64 tokens; returns ``model`` in eval mode."""
    import torch

    from editlab.lm.packing import Corpus, PackedStream

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is slower with more threads on a shared machine
    try:
        stream = PackedStream(Corpus.open(world_dir), seq_len=64, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
        for step in range(steps):
            items = [stream[(0, step * rows + i)] for i in range(rows)]
            batch = {k: torch.stack([x[k] for x in items]) for k in items[0]}
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    return model.eval()
