"""``python -m editlab.world data=<preset>``: build or reuse a world; print its directory and stats.

``python -m editlab.world export format=counterfact|zsre|knowedit out=<file> [split=eval|meta]`` also writes the
world's cases in a benchmark format (:mod:`editlab.world.export`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from editlab.cli import run_cli
from editlab.errors import EditlabError
from editlab.utils.confdir import conf_dir
from editlab.utils.rundir import register_resolvers
from editlab.world.build import build_world
from editlab.world.config import world_config
from editlab.world.export import export_world
from editlab.world.loading import World

CONF = str(conf_dir())
register_resolvers()  # conf/paths/ makes its roots absolute with ${editlab.abspath:...}


def run(cfg: DictConfig) -> Path:
    """Validate the ``data`` node, build or reuse the world, print where it is, its size and the next step."""
    raw = OmegaConf.to_container(cfg.data, resolve=True)
    wcfg = world_config(raw)
    export = cfg.get("export")
    if not export and (cfg.get("format") or cfg.get("out")):
        raise EditlabError("format= and out= belong to the export command: python -m editlab.world export "
                           "format=<counterfact|zsre|knowedit> out=<file>")
    if export and not (cfg.get("format") and cfg.get("out")):
        raise EditlabError("export needs both format=<counterfact|zsre|knowedit> and out=<file>")
    report = build_world(wcfg, Path(raw["cache_dir"]), progress=bool(cfg.progress))
    print(summary(report.directory, report.built, report.timings.get("total", 0.0), raw["name"]))
    if export:
        if cfg.split not in ("eval", "meta"):
            raise EditlabError(f"split={cfg.split}: choose eval or meta")
        out = export_world(World.open(report.directory), str(cfg.format), Path(str(cfg.out)), str(cfg.split))
        print(f"exported the {cfg.split} cases as {cfg.format}: {out}")
    return report.directory


def summary(directory: Path, built: bool, seconds: float, data_name: str) -> str:
    """A few lines for the console: where the world is, how big, where its full statistics are, what to run next."""
    stats = json.loads((directory / "stats.json").read_text())
    how = f"built in {seconds:.0f} s" if built else "already built, reused"
    model = "" if data_name == "wikidata_synth_tiny" else " model=mistral_83m trainer=gpu"
    return "\n".join([
        f"world {data_name}: {directory} ({how})",
        f"  {stats['subjects']} subjects, {stats['relations']} relations, {stats['true_atomic_facts']} facts; "
        f"{stats['documents']} documents, {stats['tokens']:,} tokens; {stats['cases']} eval + {stats['meta_cases']} "
        "meta edit cases",
        f"  statistics: {directory / 'stats.json'}; config: {directory / 'world.json'}",
        f"next: python train.py data={data_name}{model}",
    ])


@hydra.main(config_path=CONF, config_name="world", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_cli(lambda: run(cfg), "re-run the same command (a half-built world is removed and rebuilt)")


def _export_word(argv: list[str]) -> list[str]:
    """``export`` is a word, not a Hydra override: turn it into ``export=true`` for the config."""
    return [a if a != "export" else "export=true" for a in argv]


if __name__ == "__main__":
    sys.argv[1:] = _export_word(sys.argv[1:])
    main()
