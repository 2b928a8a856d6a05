"""Benchmark: pretraining throughput, ours vs a paper-style reference loop, side by side.

    python bench/pretrain.py                       # tiny world + mistral_tiny, on the CPU it runs on
    python bench/pretrain.py model=mistral_83m     # + MFU when a GPU is present

Ours: packed rows (no padding), the trainer preset's precision (``auto``: bf16 autocast only where the
CPU/GPU computes bf16 natively, else fp32; see editlab.lm.precision), AdamW on matrix
weights. Reference (as the paper's code): batches of whole documents left-padded to the longest in
the batch, fp32, no packing. Both see the same number of documents per step and the same model; the
two loops alternate in rounds and each figure is the median over rounds. Tokens/s counts real
(non-pad) tokens. Prints one JSON object.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from editlab.lm.optim import param_groups
from editlab.lm.packing import Corpus, PackedStream
from editlab.lm.precision import resolve_precision
from editlab.lm.presets import arch_from, build_model, recipe_from
from editlab.runs.pretrain import plan
from editlab.utils.hardware import describe, mfu
from editlab.utils.rundir import register_resolvers
from editlab.world.build import build_world
from editlab.world.config import world_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register_resolvers()  # conf/paths/ makes its roots absolute with ${editlab.abspath:...}


def _step(model, opt, batch: dict, precision: str, device: str) -> None:
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision in ("bf16-mixed", "bf16")):
        loss = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def reference_batches(corpus: Corpus, docs_per_step: int, pad_id: int, rng: np.random.Generator):
    """The paper's batches: whole documents (BOS + doc + EOS) of a shuffled epoch, left-padded per batch."""
    while True:
        order = rng.permutation(corpus.n_docs)
        for a in range(0, corpus.n_docs - docs_per_step + 1, docs_per_step):
            yield _padded(corpus, order[a : a + docs_per_step], pad_id)


def _padded(corpus: Corpus, pick: np.ndarray, pad_id: int) -> tuple[dict, int, int]:
    """(batch, real tokens, total tokens) of the documents ``pick``, left-padded to the longest."""
    seqs = [[corpus.bos_id, *corpus.tokens[corpus.offsets[d] : corpus.offsets[d + 1]].tolist(), corpus.eos_id]
            for d in pick]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum()), ids.numel()


def main(argv: list[str]) -> dict:
    rounds = 5
    steps_per_round = 6
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=argv)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    wdir = build_world(world_config(data), Path(data["cache_dir"]), progress=False).directory
    corpus = Corpus.open(wdir)
    meta = json.loads((wdir / "tokens.json").read_text())
    arch, recipe = arch_from(cfg.model.arch), recipe_from(OmegaConf.to_container(cfg.model.recipe))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # a GPU resolves its own precision (the CPU preset's explicit value would not apply to it)
    precision = resolve_precision(cfg.trainer.precision, "cpu") if device == "cpu" else resolve_precision("auto", "gpu")
    p = plan(recipe, corpus.mean_framed_doc())
    stream = PackedStream(corpus, recipe.seq_len, seed=0)
    torch.manual_seed(0)
    ours = build_model(arch, meta["vocab_size"]).to(device)
    ref = build_model(arch, meta["vocab_size"]).to(device)
    ref.load_state_dict(ours.state_dict())
    opt_ours = torch.optim.AdamW(param_groups(ours, recipe.weight_decay), lr=recipe.lr)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    ref_iter = reference_batches(corpus, recipe.batch_docs, meta["pad_id"], np.random.default_rng(0))
    row = 0

    def ours_batch() -> dict:
        nonlocal row
        items = [stream[(0, (row + i) % stream.rows_per_epoch)] for i in range(p.rows_per_step)]
        row += p.rows_per_step
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    # warm-up both (allocations, autocast caches)
    _step(ours, opt_ours, ours_batch(), precision, device)
    _step(ref, opt_ref, next(ref_iter)[0], "32-true", device)
    tps_ours, tps_ref, pad_share = [], [], []
    for _ in range(rounds):
        batches = [ours_batch() for _ in range(steps_per_round)]
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in batches:
            _step(ours, opt_ours, b, precision, device)
        if device == "cuda":
            torch.cuda.synchronize()
        tps_ours.append(steps_per_round * p.tokens_per_step / (time.perf_counter() - t))
        rb = [next(ref_iter) for _ in range(steps_per_round)]
        t = time.perf_counter()
        for b, _, _ in rb:
            _step(ref, opt_ref, b, "32-true", device)
        if device == "cuda":
            torch.cuda.synchronize()
        tps_ref.append(sum(real for _, real, _ in rb) / (time.perf_counter() - t))
        pad_share.append(1 - sum(real for _, real, _ in rb) / sum(total for _, _, total in rb))
    out = {
        "bench": "pretrain",
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "model": cfg.model.name,
        "params": sum(x.numel() for x in ours.parameters()),
        "precision_ours": precision,
        "hardware": describe(precision),
        "seq_len": recipe.seq_len,
        "rows_per_step": p.rows_per_step,
        "docs_per_step_reference": recipe.batch_docs,
        "tokens_per_s_ours": round(statistics.median(tps_ours)),
        "tokens_per_s_reference": round(statistics.median(tps_ref)),
        "speedup": round(statistics.median(tps_ours) / statistics.median(tps_ref), 2),
        "padding_share_ours": 0.0,
        "padding_share_reference": round(statistics.median(pad_share), 3),
        "rounds": rounds,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "target_speedup_cpu": 1.5,
    }
    if device == "cuda":
        c = ours.config
        out["mfu"] = mfu(out["device"], out["params"], c.num_hidden_layers, c.hidden_size, recipe.seq_len,
                         out["tokens_per_s_ours"])
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
