"""Benchmark: does packing or bf16 change memorisation? Equal real-token budgets, one run.

    python bench/memorisation.py                    # 4M real tokens per variant (~15 min on 2 cores)
    python bench/memorisation.py --tokens 2e6

Variants, all mistral_tiny on the tiny world with the preset's recipe (same LR schedule over the same
number of real tokens): packed + bf16 autocast (our default), packed + fp32, and the paper's batching
(whole documents left-padded per batch) + bf16. Reports generative accuracy (paper protocol) and
probabilistic coherence on the 500-fact probe, plus wall time. Prints one JSON object with the
machine (CPU capability, native bf16) and each variant's precision. On a CPU without native bf16 the
bf16 variants are skipped (emulated bf16 runs ~90x slower than fp32: hours); ``--all`` runs them anyway.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pretrain import _step, reference_batches

from editlab.lm.optim import param_groups
from editlab.lm.packing import Corpus, PackedStream
from editlab.lm.presets import arch_from, build_model, recipe_from
from editlab.lm.schedule import lr_factor
from editlab.runs.fact_probe import FactProbe
from editlab.runs.pretrain import plan
from editlab.utils.hardware import describe, native_bf16
from editlab.world.build import build_world
from editlab.world.config import world_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def run(variant: str, budget: float, corpus: Corpus, meta: dict, arch, recipe, probe: FactProbe) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, meta["vocab_size"])
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas)
    p = plan(recipe, corpus.mean_framed_doc())
    n_steps = math.ceil(budget / p.tokens_per_step)
    precision = "32-true" if variant == "packed_fp32" else "bf16-mixed"
    stream = PackedStream(corpus, recipe.seq_len, seed=0)
    padded = reference_batches(corpus, recipe.batch_docs, meta["pad_id"], np.random.default_rng(0))
    per_epoch = stream.rows_per_epoch // p.rows_per_step
    seen, t0 = 0, time.perf_counter()
    for step in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = recipe.lr * lr_factor(step, n_steps, recipe.schedule, recipe.final_lr_frac, recipe.warmup_steps)
        if variant == "padded_bf16":
            batch, real, _ = next(padded)
        else:
            epoch, k = divmod(step, per_epoch)
            items = [stream[(epoch, k * p.rows_per_step + i)] for i in range(p.rows_per_step)]
            batch, real = {key: torch.stack([it[key] for it in items]) for key in items[0]}, p.tokens_per_step
        _step(model, opt, batch, precision, "cpu")
        seen += real
    wall = time.perf_counter() - t0
    return {"variant": variant, "precision": precision, "real_tokens": seen, "steps": n_steps, "wall_s": round(wall, 1),
            **{k: round(v, 4) for k, v in probe.score(model).items()}}


def main(argv: list[str]) -> dict:
    budget = float(argv[argv.index("--tokens") + 1]) if "--tokens" in argv else 4e6
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    wdir = build_world(world_config(data), Path(data["cache_dir"]), progress=False).directory
    corpus = Corpus.open(wdir)
    meta = json.loads((wdir / "tokens.json").read_text())
    arch, recipe = arch_from(cfg.model.arch), recipe_from(OmegaConf.to_container(cfg.model.recipe))
    probe = FactProbe(wdir, n_facts=500, every_n_steps=0)
    results = [run(v, budget, corpus, meta, arch, recipe, probe) if v == "packed_fp32" or native_bf16()
               or "--all" in argv else {"variant": v, "skipped": "no native bf16 on this CPU (--all runs it)"}
               for v in ("packed_bf16", "packed_fp32", "padded_bf16")]
    return {"bench": "memorisation", "token_budget": budget, "model": cfg.model.name, "hardware": describe(),
            "results": results}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
