"""Benchmark: build a world from scratch and print one JSON object.

    python bench/world.py                      # paper scale (data=wikidata_synth)
    python bench/world.py data=wikidata_synth_tiny

Reports the time of each build stage, the total, the peak RSS of the process and the Table 6
statistics. Builds into a fresh temporary cache (deleted afterwards unless --keep is given), so a
cached world never hides the cost. Targets on a 2-core machine at paper scale: total <= 600 s,
peak RSS <= 8 GB.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from editlab.utils.rundir import register_resolvers
from editlab.world.build import build_world
from editlab.world.config import world_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register_resolvers()  # conf/paths/ makes its roots absolute with ${editlab.abspath:...}


def main(argv: list[str]) -> dict:
    keep = "--keep" in argv
    overrides = [a for a in argv if a != "--keep"]
    if not any(a.startswith("data=") for a in overrides):
        overrides.insert(0, "data=wikidata_synth")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="world", overrides=overrides)
    wcfg = world_config(OmegaConf.to_container(cfg.data, resolve=True))
    cache = Path(tempfile.mkdtemp(prefix="editlab-bench-world-"))
    t0 = time.perf_counter()
    try:
        report = build_world(wcfg, cache, progress=False)
        wall = time.perf_counter() - t0
        stats = json.loads((report.directory / "stats.json").read_text())
        size = sum(p.stat().st_size for p in report.directory.iterdir())
    finally:
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # imported only now: the hardware facts need torch, which the world build never loads (peak RSS above)
    from editlab.utils.hardware import describe
    return {
        "bench": "world",
        "data": wcfg.name,
        "total_s": round(wall, 2),
        "stage_s": report.timings,
        "peak_rss_gb": round(peak_kb / 2**20, 3),
        "hardware": describe(),  # no model runs here, hence no precision
        "artifact_bytes": size,
        "kept": str(report.directory) if keep else None,
        "targets": {"total_s_max": 600, "peak_rss_gb_max": 8},
        "table6": {k: stats[k] for k in ("true_atomic_facts", "atomic_sentences", "tf_sentences",
                                         "and_or_not_sentences", "sentences", "documents", "tokens", "subjects",
                                         "relations", "objects")},
        "stats": stats,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
