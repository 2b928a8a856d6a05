"""Covariance statistics C = E[k k^T] of the keys (inputs) of edited modules over the world's corpus.

ROME's ``layer_stats`` / MEMIT's ``mom2``: the second moment of the down-projection's inputs over
pretraining text, the metric in which ROME's rank-one update is the least-squares optimum (ROME Eq. 2)
and the preservation term of MEMIT (Eq. 11) and AlphaEdit's null space. On the synthetic corpus this
takes seconds to minutes, so it is computed on first use and cached:

- tokens: ``n_tokens`` real tokens (BOS + document, no padding) of whole documents drawn by a seeded
  permutation of the corpus (the corpus files are ordered by subject), the last batch cut to the exact
  count, so the statistic is a pure function of (model, module, n_tokens);
- accumulation in fp64 (a sum of 1e6 rank-one terms in fp32 loses the small eigenvalues AlphaEdit's
  null space is made of), all requested modules in one pass, with a progress bar;
- source: the world's corpus, or (``ctx.stats_text``) a text dataset on disk for a model that was not trained on
  the world: a JSON Lines, JSON, Parquet or Arrow file, or a ``datasets`` ``save_to_disk`` folder, whose ``text``
  column is read with ``datasets`` and tokenised with the model's own tokenizer (its special tokens, e.g. BOS),
  rows drawn by the same seeded permutation, each cut to :data:`MAX_LEN` tokens (ROME reads Wikipedia the same
  way, ``layer_stats``);
- cache: ``<ctx.cache_dir>/covariance/<module name>.n<n_tokens>.safetensors`` (``cache_dir`` is already
  one folder per model id, so two models never share a file; the module name carries the layer),
  written atomically (temporary sibling + rename: a killed run leaves no half file), reused by every run
  and method of that model; statistics of a text dataset are ``<module>.text-<sha256 of its bytes, 12>.n<n>``.
  A file that does not load or does not match its key is an error naming it.
  Without a cache directory but with a model id the statistics are kept in memory for the process, keyed the
  same way: they belong to the base model, so a method prepared again on an edited copy (a resumed stream)
  gets the base's statistics, as it does from the disk cache. Without a model id nothing is kept.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from editlab.editing.base import EditContext
from editlab.errors import EditlabError
from editlab.lm.packing import Corpus

FORMAT = "editlab-covariance-1"
BATCH_DOCS = 32
MAX_LEN = 256


_MEMORY: dict[tuple[str, str, int], torch.Tensor] = {}


TEXT_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


def text_key(path: Path) -> str:
    """``text-<12 hex>``: the SHA-256 of a text dataset's bytes (every file of a folder, in name order). Hashed once
    per process for each (file, size, modification time), so an edited file gets a new key in the same process."""
    path = Path(path)
    if not path.exists():
        raise EditlabError(f"no text dataset at {path}; give stats.dataset=<a .jsonl, .json, .parquet or .arrow file "
                           "with a 'text' column, or a datasets save_to_disk folder>")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return _digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@cache
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return f"text-{digest.hexdigest()[:12]}"


def cache_path(ctx: EditContext, module: str, n_tokens: int) -> Path | None:
    """Where the statistic of ``module`` over ``n_tokens`` tokens is cached (None: not cached)."""
    if ctx.cache_dir is None or not ctx.model_id:
        return None
    source = f".{text_key(Path(ctx.stats_text))}" if ctx.stats_text is not None else ""
    return Path(ctx.cache_dir) / "covariance" / f"{module}{source}.n{int(n_tokens)}.safetensors"


def read_text_dataset(path: Path):
    """The ``text`` column's dataset of a local file or ``save_to_disk`` folder (``datasets``), or one clear error."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise EditlabError(f"no text dataset at {path}; give stats.dataset=<a .jsonl, .json, .parquet or .arrow file "
                           "with a 'text' column, or a datasets save_to_disk folder>")
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
    elif path.suffix in TEXT_SUFFIXES:
        ds = datasets.load_dataset(TEXT_SUFFIXES[path.suffix], data_files=str(path), split="train")
    else:
        raise EditlabError(f"stats.dataset={path}: use a {', '.join(TEXT_SUFFIXES)} file or a save_to_disk folder")
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if "text" not in ds.column_names:
        raise EditlabError(f"stats.dataset={path} has no 'text' column (columns: {', '.join(ds.column_names)})")
    return ds


def covariances(model: nn.Module, modules: Sequence[str], ctx: EditContext, n_tokens: int, seed: int = 0,
                progress: bool = True) -> dict[str, torch.Tensor]:
    """``{module: C}`` with ``C = E[k k^T]`` (fp64, (d_in, d_in)) of each module's input, from cache or computed."""
    out: dict[str, torch.Tensor] = {}
    memo = ctx.cache_dir is None and bool(ctx.model_id)
    for name in modules:
        path = cache_path(ctx, name, n_tokens)
        if path is not None and path.exists():
            out[name] = _load(path, name, n_tokens)
        elif memo and (ctx.model_id, name, int(n_tokens)) in _MEMORY:
            out[name] = _MEMORY[(ctx.model_id, name, int(n_tokens))]
    missing = [m for m in modules if m not in out]
    if missing:
        computed = compute(model, missing, ctx.world_dir, n_tokens, seed, progress, ctx.stats_text, ctx.tokenizer)
        for name, cov in computed.items():
            path = cache_path(ctx, name, n_tokens)
            if path is not None:
                _save(path, cov, name, n_tokens)
            elif memo:
                _MEMORY[(ctx.model_id, name, int(n_tokens))] = cov
        out.update(computed)
    return out


def _documents(world_dir: Path | None, seed: int, text: Path | None, tokenizer) -> tuple[Iterator[list[int]], int]:
    """(token ids of each document in the seeded order, cut to MAX_LEN; the padding id) of the statistics' source."""
    if text is not None:
        ds = read_text_dataset(Path(text))
        order = np.random.default_rng(seed).permutation(len(ds))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        docs = (tokenizer(ds[int(i)]["text"])["input_ids"][:MAX_LEN] for i in order)
        return (d for d in docs if d), pad
    if world_dir is None or not (Path(world_dir) / "tokens.bin").exists():
        raise EditlabError(f"covariance statistics are computed over the world's corpus, but {world_dir} has no "
                           "tokens.bin; pass the built world's directory (python -m editlab.world data=...) or a "
                           "text dataset (stats.dataset=...)")
    corpus = Corpus.open(Path(world_dir))
    order = np.random.default_rng(seed).permutation(corpus.n_docs)
    return ([corpus.bos_id, *corpus.tokens[corpus.offsets[d]: corpus.offsets[d + 1]].tolist()][:MAX_LEN]
            for d in order), corpus.eos_id


@torch.no_grad()
def compute(model: nn.Module, modules: Sequence[str], world_dir: Path | None, n_tokens: int, seed: int = 0,
            progress: bool = True, text: Path | None = None, tokenizer=None) -> dict[str, torch.Tensor]:
    """One pass over ``n_tokens`` tokens of the world's corpus (or of the text dataset ``text``, tokenised with
    ``tokenizer``) accumulating ``sum k k^T`` in fp64 for every module."""
    if n_tokens < 1:
        raise EditlabError(f"covariance statistics need n_tokens >= 1 (got {n_tokens}); set the method's stats_tokens")
    documents, pad = _documents(world_dir, seed, text, tokenizer)
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    take: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_mod: nn.Module, args: tuple, _out) -> None:
            x = outer_sum(args[0], take["mask"])
            sums[name] = sums[name] + x if name in sums else x
        return hook

    handles = [model.get_submodule(m).register_forward_hook(hook_for(m)) for m in modules]
    seen = 0
    bar = tqdm(total=n_tokens, desc="covariance statistics", unit="tok", file=sys.stderr,
               disable=not progress or None, leave=False)
    try:
        while seen < n_tokens:
            seqs = [d for _, d in zip(range(BATCH_DOCS), documents, strict=False)]
            if not seqs:
                raise EditlabError(f"the {'text dataset' if text is not None else 'corpus'} has fewer than "
                                   f"stats_tokens={n_tokens} tokens ({seen}); lower the method's stats_tokens")
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.bool)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = True
            need = n_tokens - seen
            if int(mask.sum()) > need:  # cut the last batch to the exact count (row-major order)
                keep = mask.flatten().cumsum(0) <= need
                mask = (mask.flatten() & keep).view_as(mask)
            take["mask"] = mask.to(device)
            model(input_ids=ids.to(device), attention_mask=mask.long().to(device), use_cache=False)
            got = int(mask.sum())
            seen += got
            bar.update(got)
    finally:
        bar.close()
        for h in handles:
            h.remove()
    return {m: (sums[m] / seen).cpu() for m in modules}


def outer_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum k k^T`` (fp64) over the positions of ``x`` (B, T, d) where ``mask`` (B, T) is True: the real tokens, so
    padding never enters the statistic (ROME's ``layer_stats`` drops it with ``flatten_masked_batch``)."""
    k = x[mask].double()
    return k.T @ k


def _save(path: Path, cov: torch.Tensor, module: str, n_tokens: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"mom2": cov.contiguous()}, str(tmp),
              metadata={"format": FORMAT, "module": module, "n_tokens": str(int(n_tokens))})
    os.replace(tmp, path)


def _load(path: Path, module: str, n_tokens: int) -> torch.Tensor:
    fix = f"delete {path} to recompute it"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            cov = f.get_tensor("mom2")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EditlabError(f"covariance statistics {path} are unreadable ({str(exc).splitlines()[0]}); {fix}") from None
    if meta.get("format") != FORMAT or meta.get("module") != module or meta.get("n_tokens") != str(int(n_tokens)):
        raise EditlabError(f"covariance statistics {path} were not written for {module} over {n_tokens} tokens; {fix}")
    if cov.dtype != torch.float64 or cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not torch.isfinite(cov).all():
        raise EditlabError(f"covariance statistics {path} are not a finite square fp64 matrix; {fix}")
    return cov
