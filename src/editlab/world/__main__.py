"""``python -m editlab.world data=<preset>``: build or reuse a world; print its directory and stats."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from editlab.cli import run_cli
from editlab.utils.confdir import conf_dir
from editlab.world.build import build_world
from editlab.world.config import world_config

CONF = str(conf_dir())


def run(cfg: DictConfig) -> Path:
    """Validate the ``data`` node, build or reuse the world, print where it is and its statistics."""
    raw = OmegaConf.to_container(cfg.data, resolve=True)
    wcfg = world_config(raw)
    report = build_world(wcfg, Path(to_absolute_path(raw["cache_dir"])), progress=bool(cfg.progress))
    stats = json.loads((report.directory / "stats.json").read_text())
    print(json.dumps({"world": str(report.directory), "built": report.built, "timings": report.timings,
                      "stats": stats}, indent=1))
    return report.directory


@hydra.main(config_path=CONF, config_name="world", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_cli(lambda: run(cfg), "re-run the same command (a half-built world is removed and rebuilt)")


if __name__ == "__main__":
    main()
