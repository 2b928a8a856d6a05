"""Benchmark: how far a batch's golds are from each case's single-edit golds; prints one JSON object.

    python bench/batch_golds.py                                   # tiny world, batches of 10, 100, 1000
    python bench/batch_golds.py data=wikidata_synth sizes=10,100 n=1000
    python bench/batch_golds.py run=<edit run dir> [run=<another>]  # + each run's Table 4 cells scored both ways

A model that holds a batch of edits is scored against the agent holding the whole batch
(docs/evaluation.md, "The agent holding the same edits"). This measures what scoring it against each
case's single-edit golds would get wrong, with no model: over the first ``n`` eval cases in order, cut into
batches of each size, the share of cases whose ``s1 r2`` fact is another request of the same batch, whose
``s1 r2`` (or any atomic) target object moves, whose downstream-changes flag moves, and the mean
|batch gold - single gold| over the atomic probes. With ``run=`` it also re-scores that run's records the
old way (a batch against single-edit golds; a sequential stream's accuracy against single-edit targets) and
prints both sets of Table 4 cells.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from editlab.eval.records import read_records
from editlab.eval.summary import summarize
from editlab.utils.rundir import read_yaml
from editlab.vocab import ATOMIC
from editlab.world.loading import World
from editlab.world.stream import AgentStream

CONF = str(Path(__file__).resolve().parents[1] / "conf")
BATCH_FIELDS = ("gold_agent", "gold_post", "target_post", "downstream_changes")
"""What a batch record gained from the agent holding its batch (before, it was scored with single-edit golds)."""
STREAM_FIELDS = ("gold_agent", "target_post", "target_final", "downstream_changes")
"""What a sequential record gained (its probability golds already came from the accumulated agent)."""
CELLS = ("s1r1_acc", "s1r2_acc", "s2r1_acc", "s2r2_acc", "s1r1_prob_coh", "s1r2_prob_coh", "s2r1_prob_coh",
         "s2r2_prob_coh")


def batch_shift(world: World, cases: list[dict], size: int) -> dict:
    """The share of cases whose golds a batch of ``size`` moves (see the module docstring)."""
    stream = AgentStream.from_world(world, "n_prime")
    is_request = s1r2_moved = any_moved = flag_moved = 0
    gaps: list[float] = []
    for b in range(0, len(cases), size):
        batch = cases[b : b + size]
        stream.replay([])
        for c in batch:
            stream.add(c)
        for c in batch:
            i = c["ids"]
            is_request += (i["subject"], i["relation2"]) in stream.edited
            single = {p["kind"]: p["object"] for p in c["probes"] if p.get("target") == "new_argmax"}
            single["s1r1"] = c["requested_object"]
            now = stream.targets(c)
            s1r2_moved += now["s1r2"] != single["s1r2"]
            any_moved += any(now[k] != single[k] for k in now)
            flag_moved += stream.downstream_changes(c) != c["downstream_changes"]
            gaps += [abs(g - p["p_post"]) for g, p in zip(stream.gold(c), c["probes"], strict=True)
                     if p["kind"] in ATOMIC]
    n = len(cases)
    return {"batch_size": size, "s1r2_is_another_request": is_request / n, "s1r2_target_moved": s1r2_moved / n,
            "any_atomic_target_moved": any_moved / n, "downstream_flag_moved": flag_moved / n,
            "mean_abs_gold_shift": float(np.mean(gaps))}


def run_cells(world: World, run: Path) -> dict:
    """A run's post-edit (final for sequential) Table 4 cells against its own golds and against single-edit golds."""
    records = read_records(run / "results.jsonl")
    split = (read_yaml(run / "run_config.yaml").get("edits") or {}).get("split", "eval")  # the split the run edited
    cases = {c["case_id"]: c for c in world.cases(split)}
    stage = "final" if "final" in records[0] else "post"
    drop = STREAM_FIELDS if records[0].get("mode") == "sequential" else BATCH_FIELDS
    old = [{k: v for k, v in r.items() if k not in drop} for r in records]
    out = {"run": str(run), "stage": stage}
    for name, recs in (("agent_holding_the_edits", records), ("before", old)):
        summary = summarize(cases, recs, "paper")
        out[name] = {sub: {"n": summary["subsets"][sub]["n"],
                           **{c: summary["subsets"][sub].get(f"{stage}/{c}") for c in CELLS}}
                     for sub in ("all", "downstream_changes")}
        out[name]["gold_agent"] = summary["gold_agent"]
    return out


def main(argv: list[str]) -> dict:
    runs = [Path(a.split("=", 1)[1]) for a in argv if a.startswith("run=")]
    opts = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith(("run=", "data=")))
    overrides = [a for a in argv if a.startswith("data=")]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="world", overrides=overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    world = World.from_config(data, Path(data["cache_dir"]).resolve())
    n = int(opts.get("n", 1000))
    cases = world.cases("eval")[:n]
    t0 = time.perf_counter()
    shifts = [batch_shift(world, cases, int(k)) for k in opts.get("sizes", "10,100,1000").split(",")]
    from editlab.utils.hardware import describe

    return {"bench": "batch_golds", "data": data["name"], "n": len(cases), "batches": shifts, "hardware": describe(),
            "seconds": round(time.perf_counter() - t0, 2), "runs": [run_cells(world, r) for r in runs]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
