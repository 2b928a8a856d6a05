"""Shared fixtures: the real Hydra configs composed with tiny overrides, built once per session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from editlab.world.agent import Agent
from editlab.world.build import build_world
from editlab.world.config import WorldConfig, world_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")


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


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
