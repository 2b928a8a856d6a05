"""Speed of editing a GPT-2-small-sized Hugging Face model on a CounterFact file through ``edit.py``; one JSON object.

    python bench/hf_edit.py                                 # ROME, MEMIT, LoRA; 20 edits each; GPT-2 small shape
    python bench/hf_edit.py --methods rome --edits 50 --stats-tokens 100000 --out outputs/bench_hf

What it builds (nothing is downloaded), under ``--out``:

- ``counterfact.json``: the tiny world's evaluation cases exported as CounterFact (``python -m editlab.world export
  format=counterfact``; the world is built first when absent);
- ``text.jsonl``: the world's corpus documents as text, the ``stats.dataset`` of ROME's and MEMIT's covariances and
  context prefixes;
- ``gpt2-<width>x<layers>/``: a config-built GPT-2 with random weights (default: GPT-2 small, 768 wide, 12 layers,
  124M parameters with the 50,257-token vocabulary) and a byte-level BPE of the file's prompts, GPT-2 style
  (no BOS; :mod:`editlab.lm.random_hf`).

Then, per method, the command a user types, ``python edit.py model=hf model.path=<model> data=counterfact
data.path=counterfact.json method=<m> edits.n=<n> stats.dataset=text.jsonl``, with ``--stats-tokens`` tokens of
statistics for ROME and MEMIT (their presets' 1e6 would take most of an hour on 2 CPU cores; the JSON gives the
statistics' rate so the full count extrapolates). Reported per method: median ms per edit, the preparation seconds
(covariance statistics and prefixes), the command's wall seconds, peak memory (the edit run's maximum RSS,
:func:`editlab.utils.hardware.peak_memory_mb`) and exit status. Random weights make this a speed figure only: the
edit success says nothing about a method.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from editlab.cli import run_cli  # noqa: E402
from editlab.utils.hardware import describe  # noqa: E402
from editlab.utils.jsonio import write_json  # noqa: E402
from editlab.utils.rundir import register_resolvers  # noqa: E402

LOCATE = ("rome", "memit", "alphaedit")


def _python(args: list[str], log: Path, threads: int) -> tuple[int, float]:
    """Run ``python <args>`` in the repository root; (exit status, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def _inputs(out: Path, width: int, layers: int, threads: int) -> tuple[Path, Path, Path]:
    """The CounterFact file, the text dataset and the model directory (built once, reused)."""
    from editlab.lm.packing import Corpus
    from editlab.lm.random_hf import random_causal_lm
    from editlab.world.loading import World

    out.mkdir(parents=True, exist_ok=True)
    cf = out / "counterfact.json"
    if not cf.exists():
        rc, _ = _python(["-m", "editlab.world", "export", "format=counterfact", f"out={cf}", "progress=false"],
                           out / "export.log", threads)
        if rc:
            raise SystemExit(f"the export failed; see {out / 'export.log'}")
    text = out / "text.jsonl"
    if not text.exists():
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf
        from transformers import PreTrainedTokenizerFast

        register_resolvers()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            data = OmegaConf.to_container(compose(config_name="world").data, resolve=True)
        world = World.from_config(data, data["cache_dir"], build=True)
        tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
        corpus = Corpus.open(world.dir)
        docs = (tok.decode(corpus.tokens[corpus.offsets[d]: corpus.offsets[d + 1]].tolist())
                for d in range(min(corpus.n_docs, 20000)))
        text.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    model = out / f"gpt2-{width}x{layers}"
    if not (model / "config.json").exists():
        records = json.loads(cf.read_text())
        prompts = [p for r in records for p in [r["requested_rewrite"]["prompt"].replace("{}", r["requested_rewrite"][
            "subject"]), *r["paraphrase_prompts"], *r["neighborhood_prompts"], *r["attribute_prompts"]]]
        random_causal_lm(model, "gpt2", prompts, vocab_size=50257, width=width, layers=layers, tokenizer_vocab=2000)
    return cf, text, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="rome,memit,lora")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--stats-tokens", type=int, default=20000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_hf")
    args = ap.parse_args()
    cf, text, model = _inputs(args.out.resolve(), args.width, args.layers, args.threads)
    results = {}
    for method in args.methods.split(","):
        run_dir = args.out.resolve() / "runs" / method
        cmd = ["edit.py", "model=hf", f"model.path={model}", "data=counterfact", f"data.path={cf}", f"method={method}",
               f"edits.n={args.edits}", f"stats.dataset={text}", f"run_dir={run_dir}", "progress=false",
               f"threads={args.threads}", f"device={args.device}", "overwrite=true"]
        if method in LOCATE:
            cmd.append(f"method.hparams.stats_tokens={args.stats_tokens}")
        rc, wall = _python(cmd, args.out.resolve() / f"{method}.log", args.threads)
        row = {"exit": rc, "wall_s": round(wall, 1)}
        if rc == 0:
            m = json.loads((run_dir / "metrics.json").read_text())
            row.update(median_ms_per_edit=round(m["median_edit_s"] * 1000, 1), prepare_s=m["prepare_s"],
                       run_peak_mem_mb=round(m["peak_mem_mb"]), edits=m["n"],
                       rewrite_success=m["summary"]["post"].get("rewrite_success"))
            if method in LOCATE:
                row["stats_tokens"] = args.stats_tokens
        else:
            row["log"] = str(args.out.resolve() / f"{method}.log")
        results[method] = row
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model))
    out = {"bench": "hf_edit", "model": {"arch": "gpt2", "width": args.width, "layers": args.layers,
                                         "vocab": cfg.vocab_size, "weights": "random"},
           "edits": args.edits, "threads": args.threads, "hardware": describe("32-true"), "torch": torch.__version__,
           "methods": results}
    write_json(args.out.resolve() / "hf_edit.json", out)
    print(json.dumps(out))


if __name__ == "__main__":
    run_cli(main)
