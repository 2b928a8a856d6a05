"""``benchmark_run(run)``: ``python edit.py model=hf model.path=<model> data=<benchmark> data.path=<file>``.

A community benchmark's requests applied to any Hugging Face causal LM with its own tokenizer, scored by the
benchmark's own metrics (:mod:`editlab.eval.benchmark_scores`, named by protocol) and beside them by editlab's
exact rule (``*_exact``: the greedy continuation is the target, i.e. every teacher-forced token is the argmax).
There is no Bayesian agent for a benchmark file, so the world's gold-standard columns do not exist here.

Protocols, as for the world's cases (evaluation.md): ``single`` (apply one request, score its case, restore),
``batch`` (``batch_size`` requests at once, score them, restore) and ``sequential`` (commit one batch after
another; each case is scored right after its batch, ``post``, and on the final model, ``final``). A single or
batch run stopped by a signal resumes from ``results.jsonl.partial``; a sequential one starts again (its edited
model is not checkpointed).

Records (``results.jsonl``): ``case_id``, ``index``, ``edited``, ``time_s``, ``peak_mem_mb``, ``info`` and the
case's metric values per stage (``pre``, ``post``, ``final``). ``metrics.json``: the means per stage, the
benchmark's summary scores (CounterFact's Score S), timings and the model's identity.

Methods: every method that does not read the world (the fine-tuners, ROME, MEMIT, AlphaEdit, GRACE, ICE, and KE,
MEND, MALMEN and SERAC with an editor meta-trained for the model on a benchmark's train file: ``train.py
task=editor data=<benchmark>``). ROME, MEMIT and AlphaEdit need ``stats.dataset=<text>`` for their covariances and
context prefixes. IKE, propagate and schema_propagate read the world, so each is refused with one line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

import torch
from tqdm.auto import tqdm

from editlab.benchmarks import BenchmarkCase, read_benchmark
from editlab.benchmarks.references import ReferenceTexts
from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest
from editlab.editing.trainable import EDITOR_INFO, TrainableEditor, read_editor
from editlab.errors import EditlabError
from editlab.eval.benchmark_scores import (
    counterfact_metrics,
    generation_metrics,
    summarize_counterfact,
    token_metrics,
    token_scores,
)
from editlab.lm.hf import load_hf_for_editing
from editlab.runs.config import EditsConfig
from editlab.runs.results import FINAL, PARTIAL, ResultsWriter
from editlab.runs.session import timed_apply
from editlab.utils.hardware import resolve_device
from editlab.utils.jsonio import write_json
from editlab.utils.rundir import NON_RESULT_KEYS, prepare

BENCHMARKS = ("counterfact", "zsre", "knowedit")
WORLD_METHODS = ("ike", "propagate", "schema_propagate")
"""Methods that read the world itself (IKE's demonstrations from its meta split, the agent's implications, the
relation schema): refused on a benchmark file."""


@dataclass(frozen=True)
class BenchmarkData:
    """The ``data`` node of conf/data/<benchmark>.yaml: which file, in which format, read with which options."""

    name: str
    format: str
    path: Path
    options: dict = field(default_factory=dict)
    generation_tokens: int = 0
    references: Path | None = None

    def __post_init__(self) -> None:
        if self.format not in BENCHMARKS:
            raise EditlabError(f"data.benchmark={self.format} must be one of {', '.join(BENCHMARKS)}")
        if int(self.generation_tokens) < 0:
            raise EditlabError(f"data.generation_tokens={self.generation_tokens} must be >= 0 (0: no generations)")
        if self.references is not None and self.format != "counterfact":
            raise EditlabError("data.references (ROME's TF-IDF files) score CounterFact generations; drop it for "
                               f"{self.format}")


@dataclass(frozen=True)
class BenchmarkRun:
    """One benchmark edit run, built by ``edit.py`` (paths absolute, settings validated)."""

    data: BenchmarkData
    model_path: str
    dtype: str
    method: EditMethod
    edits: EditsConfig
    run_dir: Path
    seed: int
    run_config: dict
    loggers: list = field(default_factory=list)
    device: str = "auto"
    progress: bool = True
    overwrite: bool = False
    cache_root: Path | None = None
    stats_dataset: Path | None = None
    editor_path: Path | None = None


def request_of(case: BenchmarkCase) -> EditRequest:
    """The edit request of a benchmark case: its own prompt text, the subject inside it, the new target."""
    return EditRequest(case.subject, case.relation_id, case.target_new, case.case_id, text=case.prompt)


def check_method(method: EditMethod, edits: EditsConfig) -> None:
    """Refuse, in one line each, what a benchmark run cannot do (before anything is loaded or written)."""
    name = method.name
    if name in WORLD_METHODS or method.uses_implied:
        raise EditlabError(f"method {name} reads the world (demonstrations, implications or its relation schema), "
                           "which a benchmark file does not have: use it with data=wikidata_synth_tiny")
    if edits.target != "certain":
        raise EditlabError("edits.target=credence asks for the Bayesian agent's posterior, which exists for the "
                           "world's cases only: use edits.target=certain with a benchmark")
    if edits.split != "eval" or edits.skip_correct or edits.trace:
        raise EditlabError("edits.split, edits.skip_correct and edits.trace are settings of the world's cases; "
                           "leave them at their defaults with a benchmark")
    if edits.mode != "single" and edits.batch_size > 1 and not method.supports_batch:
        raise EditlabError(f"method {name} edits one request at a time; use edits.batch_size=1")


@dataclass(frozen=True)
class Scoring:
    """How a run scores its cases: the format, and ROME's generations (``data.generation_tokens`` long, 0: none)
    with the reference texts of their CounterFact reference score (``data.references``)."""

    format: str
    generation_tokens: int = 0
    references: ReferenceTexts | None = None
    seed: int = 0


def case_scores(model: torch.nn.Module, tok, cases: Sequence[BenchmarkCase], scoring: Scoring, prefix: str = "",
                pre: Sequence | None = None, salt: int = 0) -> tuple[list[dict], list]:
    """Per case the benchmark's metrics (and editlab's exact ones), plus the raw token scores that a later stage's
    locality ``agree`` compares against (``pre``). ``salt`` varies the generations' sampling seed per stage/edit."""
    fmt = scoring.format
    if fmt == "counterfact":
        rows = counterfact_metrics(model, tok, cases, prefix=prefix)
        forced = token_scores(model, tok, cases, prefix=prefix, keys=("edit_succ", "rephrase"))
    else:
        rows = [{} for _ in cases]
        forced = token_scores(model, tok, cases, prefix=prefix)
    tokens = token_metrics(forced, forced if pre is None else pre)
    out = []
    for row, tk, fs in zip(rows, tokens, forced, strict=True):
        exact: dict[str, list[float]] = {}
        for key, f in fs:
            if not key.startswith("locality/"):
                exact.setdefault(f"{key}_exact", []).append(float(f.acc() == 1.0))
        out.append({**row, **tk, **{k: fmean(v) for k, v in exact.items()}})
    if scoring.generation_tokens:
        gen = generation_metrics(model, tok, cases, scoring.generation_tokens, prefix, scoring.references,
                                 seed=scoring.seed * 1_000_003 + salt)
        out = [{**row, **g} for row, g in zip(out, gen, strict=True)]
    return out, forced


def summarize_stage(fmt: str, rows: Sequence[dict]) -> dict[str, float | None]:
    """Mean of each metric over the cases that have it; CounterFact adds its Score S (summarize_counterfact)."""
    keys = dict.fromkeys(k for r in rows for k in r)
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = fmean(vals) if vals else None
    if fmt == "counterfact":
        out.update(summarize_counterfact(rows))
    return out


def benchmark_run(run: BenchmarkRun) -> dict:
    """Apply the first ``run.edits.n`` requests of the benchmark file to the model, score, write, summarise."""
    edits, method, fmt = run.edits, run.method, run.data.format
    check_method(method, edits)
    cases = read_benchmark(fmt, run.data.path, **run.data.options)
    if edits.n > len(cases):
        raise EditlabError(f"edits.n={edits.n} but {run.data.path} has {len(cases)} records; use edits.n<={len(cases)}")
    cases = cases[: edits.n]
    refs = ReferenceTexts.load(run.data.references) if run.data.references is not None else None
    loaded = load_hf_for_editing(run.model_path, run.dtype)  # before touching run_dir: bad input leaves nothing
    dev = resolve_device(run.device)
    model, tok = loaded.model.to(dev), loaded.tokenizer
    editor_path = _editor(run, loaded.model_id)
    run_dir = Path(run.run_dir)
    state = prepare(run_dir, run.run_config, ignore=NON_RESULT_KEYS, overwrite=run.overwrite,
                    done=("metrics.json", FINAL))
    if state == "done":
        return {**json.loads((run_dir / "metrics.json").read_text()), "reused": True}
    torch.manual_seed(run.seed)
    cache = Path(run.cache_root) if run.cache_root is not None else run_dir.parent / ".cache"
    ctx = EditContext(tokenizer=tok, cache_dir=cache / loaded.model_id, seed=run.seed, model_id=loaded.model_id,
                      stats_text=run.stats_dataset, editor_path=editor_path)
    t0 = time.perf_counter()
    method.prepare(model, ctx)
    prepare_s = time.perf_counter() - t0
    scoring = Scoring(fmt, int(run.data.generation_tokens), refs, run.seed)
    pre, pre_forced = case_scores(model, tok, cases, scoring, salt=-1)
    sequential = edits.mode == "sequential"
    writer = ResultsWriter(run_dir, resume=state == "resume" and not sequential and (run_dir / PARTIAL).exists())
    size = edits.batch_size
    t1 = time.perf_counter()
    handle: EditHandle | None = None
    with tqdm(total=len(cases), desc=f"{method.name} {edits.mode} edits", unit="edit", file=sys.stderr,
              disable=not run.progress or None, initial=len(writer.records)) as progress:
        for start in range(len(writer.records), len(cases), size):
            chunk = cases[start:start + size]
            handle, cost = timed_apply(method, model, [request_of(c) for c in chunk], ctx,
                                       run.seed * 1_000_003 + start)
            post, _ = case_scores(handle.model, tok, chunk, scoring, handle.prefix, pre_forced[start:start + size],
                                  salt=start)
            writer.append([{"case_id": c.case_id, "index": start + j, "mode": edits.mode, "batch": len(chunk),
                            "edited": True, **cost, "pre": pre[start + j], "post": post[j]}
                           for j, c in enumerate(chunk)])
            model = handle.commit() if sequential else handle.restore()
            progress.update(len(chunk))
    if sequential and handle is not None:
        final, _ = case_scores(model, tok, cases, scoring, method.context_prefix(), pre_forced, salt=-2)
        for rec, sc in zip(writer.records, final, strict=True):
            rec["final"] = sc
        writer.keep(len(writer.records))
    out = _finish(run, loaded.model_id, loaded.source, writer.records, time.perf_counter() - t1, prepare_s)
    writer.finish()  # last: results.jsonl appears only once metrics.json is written
    return out


def _editor(run: BenchmarkRun, model_id: str) -> Path | None:
    """A trainable editor's directory, checked whole (its method and base model), or one line with the command that
    meta-trains it on a benchmark file; None for a method with nothing trained."""
    editor = getattr(run.method, "base_method", run.method)
    if not isinstance(editor, TrainableEditor):
        return None
    command = (f"python train.py task=editor method={editor.name} model=hf model.path={run.model_path} "
               f"data={run.data.name} data.path=<its train file>")
    path = run.editor_path
    if path is None or not (Path(path) / EDITOR_INFO).is_file():
        raise EditlabError(f"method {editor.name} needs an editor meta-trained for this model, but there is none at "
                           f"{path}; train it on a benchmark file with: {command}")
    read_editor(Path(path), editor.name, model_id, command)
    return Path(path)


def _finish(run: BenchmarkRun, model_id: str, source: str, records: list[dict], wall: float, prepare_s: float) -> dict:
    """``metrics.json``: the means per stage and the benchmark's scores, with the run's costs."""
    fmt = run.data.format
    stages = ("pre", "post", "final") if run.edits.mode == "sequential" else ("pre", "post")
    summary = {s: summarize_stage(fmt, [r[s] for r in records]) for s in stages}
    times = sorted(r["time_s"] for r in records)
    out = {"method": run.method.name, "benchmark": fmt, "data": str(run.data.path), "model": source,
           "model_id": model_id, "dtype": run.dtype, "mode": run.edits.mode, "n": len(records), "summary": summary,
           "wall_s": round(wall, 2), "prepare_s": round(prepare_s, 2), "median_edit_s": times[len(times) // 2],
           "peak_mem_mb": max(r["peak_mem_mb"] for r in records), "results": str(Path(run.run_dir) / FINAL)}
    write_json(Path(run.run_dir) / "metrics.json", out)
    flat = {f"{s}/{k}": float(v) for s, vals in summary.items() for k, v in vals.items() if v is not None}
    for lg in run.loggers or []:
        lg.log_metrics(flat, step=len(records))
        lg.save()
    return out
