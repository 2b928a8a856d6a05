"""Benchmark: a multirun of edit.py jobs run one after another (Hydra's basic launcher) vs in parallel
(``hydra/launcher=joblib``, ``threads=auto`` giving each job ``cores // n_jobs`` torch threads), side by side.

    python bench/launchers.py                              # 4 jobs (lora, ft_l, ft_m, ice), 50 edits each
    python bench/launchers.py --methods lora,ft_m --n 20 --jobs 2 --rounds 3

Each round runs the same sweep twice into fresh output directories (nothing reused), alternating which
launcher goes first; prints one JSON object: wall times per round, medians, the ratio sequential / parallel
(> 1: the parallel sweep is faster), and the machine (``hardware``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "outputs/train/wikidata_synth_tiny/mistral_tiny-s0/model"  # what `python train.py` exports


def run_sweep(methods: str, n: int, model: Path, parallel: int | None) -> float:
    """Wall seconds of ``edit.py -m method=<methods>`` into a fresh outputs directory."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "edit.py", "-m", f"method={methods}", f"edits.n={n}", f"checkpoint={model}",
               "metrics.n_samples=0", "progress=false"]
        if parallel:
            cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={parallel}"]
        env = {**os.environ, "EDITLAB_OUTPUTS": out}
        env.pop("OMP_NUM_THREADS", None)  # each job decides (threads=auto)
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if res.returncode != 0:
            raise SystemExit(f"sweep failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
        return wall


def main(argv: list[str]) -> dict:
    from editlab.utils.hardware import describe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="lora,ft_l,ft_m,ice")
    ap.add_argument("--n", type=int, default=50, help="edits per job")
    ap.add_argument("--jobs", type=int, default=None, help="parallel jobs (default: one per method)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", type=Path, default=MODEL)
    args = ap.parse_args(argv)
    if not (args.model / "editlab.json").is_file():
        raise SystemExit(f"no pretrained model at {args.model}; run `python train.py` or pass --model DIR")
    jobs = args.jobs or len(args.methods.split(","))
    seq, par = [], []
    for r in range(args.rounds):
        order = [("parallel", jobs), ("sequential", None)] if r % 2 else [("sequential", None), ("parallel", jobs)]
        for name, parallel in order:
            wall = run_sweep(args.methods, args.n, args.model, parallel)
            (par if parallel else seq).append(wall)
            print(f"[bench/launchers] round {r}: {name} {wall:.1f} s", file=sys.stderr, flush=True)
    return {"methods": args.methods.split(","), "edits_per_job": args.n, "parallel_jobs": jobs,
            "cores": len(os.sched_getaffinity(0)), "sequential_s": seq, "parallel_s": par,
            "sequential_median_s": statistics.median(seq), "parallel_median_s": statistics.median(par),
            "ratio_sequential_over_parallel": statistics.median(seq) / statistics.median(par),
            "hardware": describe("32-true")}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
