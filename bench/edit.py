"""Benchmark: speed of editing, and of our scoring core beside a paper-style reference scorer, in one run.

    python bench/edit.py                     # tiny world + the pretrained mistral_tiny (python train.py)
    python bench/edit.py --quick             # smoke run (seconds)
    python bench/edit.py --model DIR --world DIR --rounds 5
    python bench/edit.py --threads 1 --parts scoring   # only the scorer comparison, one torch thread
    python bench/edit.py --parts methods --methods grace,lora --batch-n 100
    python bench/edit.py --parts threads     # edit.py's thread default, idle and beside a busy process

Three parts (and an optional fourth), each figure a median (interleaved rounds for the scorer comparison, cases
for the rest):

1. ``scoring``: probes scored per second by :func:`editlab.eval.probes.score_cases` (all probes of many
   cases in one prefix-tree pass that computes every distinct prefix once, whose keys and values seed a
   hand-written KV-cached greedy loop; :mod:`editlab.eval.fast_scoring`) and by
   :func:`editlab.eval.reference.reference_score_cases` (the paper's layout: batches of 64, left padding,
   one pass per probe type, greedy decoding by full forwards without KV cache, fp32), on the same cases,
   alternating in rounds. Both compute the same :class:`~editlab.eval.probes.CaseScores`; the largest
   probability difference and the share of equal greedy continuations are reported as a check.
2. ``methods``: for every registered method (or ``--methods a,b``), each in its own subprocess so that its
   peak memory is its own, with the hyper-parameters edit.py composes for ``model=<preset>``
   (conf/method/ + conf/method_model/): ms per edit (apply + restore, one request, median), edits/s at
   batch 1 and at batch N (``--batch-n``, default 1000; methods whose class sets ``supports_batch``), peak
   memory (CUDA max allocated, or peak RSS on CPU), ``prepare`` with an empty vs a warm statistics cache
   (build vs cache hit), and for trainable editors a short meta-training (``--meta-steps``) wall time and
   the editor's parameter count (:func:`bench_method`).
3. ``extrapolated``: hours for 5000 LoRA edit cases, (a) the paper's protocol (the case's probes re-scored
   with the reference scorer after every one of the 40 LoRA steps) and (b) our default single-mode step
   (apply LoRA, score the case's probes post-edit with our core, locality on 100 fixed facts, restore;
   pre-edit scores amortised from one batched pass, as runs/edit.py does), with the paper's LoRA
   (40 steps) and with the model's preset (early stop). Fluency sampling is not included in (b).
4. ``threads`` (only when asked for): the wall time of the command a user types, ``python edit.py
   method=rome edits.n=50`` (a subprocess, into a temporary run directory), with ``threads=auto`` (the
   default) and with one thread per core (torch's own default, what ``auto`` meant before it looked at the
   model's width), on an idle machine and beside one busy single-threaded process, in interleaved rounds
   (:func:`bench_threads`). A thread waiting for a core another process holds stalls every parallel region.

Torch threads are left at the default unless ``--threads`` is given; prints one JSON object, whose
``hardware`` entry records the CPU model and capability, native bf16, torch threads and the precision the
model ran in (:func:`editlab.utils.hardware.describe`).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerFast

from editlab.cli import run_cli
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.registry import available, get_method
from editlab.editing.trainable import EditorTraining, TrainableEditor, save_editor
from editlab.errors import EditlabError
from editlab.eval.locality import LocalityState, locality_facts
from editlab.eval.probes import max_object_tokens, score_cases
from editlab.eval.reference import reference_score_cases
from editlab.lm.checkpoint import load_checkpoint, model_id
from editlab.runs.hparams import method_hparams  # what edit.py composes for model=<preset>
from editlab.runs.train_editor import fit_editor
from editlab.utils.hardware import describe
from editlab.utils.rundir import register_resolvers
from editlab.vocab import PromptEncoder
from editlab.world.build import build_world
from editlab.world.config import world_config
from editlab.world.loading import World

ROOT = Path(__file__).resolve().parents[1]
register_resolvers()  # conf/paths/ makes its roots absolute with ${editlab.abspath:...}
MODEL = ROOT / "outputs/train/wikidata_synth_tiny/mistral_tiny-s0/model"  # what `python train.py` exports
N_CASES_RUN = 5000
PAPER_CODE_S_PER_CASE = 22.0  # the paper's own code per case, as measured on a 2-core AMD EPYC (AVX512), 2026


def default_world() -> Path:
    """The tiny world of ``conf/world.yaml`` with ``data=wikidata_synth_tiny`` (built if missing: ~1 min)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="world", overrides=["data=wikidata_synth_tiny"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return build_world(world_config(data), ROOT / data["cache_dir"], progress=False).directory


def load_model(world: World, model_dir: Path | None) -> tuple[torch.nn.Module, str]:
    """The pretrained model of this world (default: the tiny model of ``python train.py``)."""
    d = model_dir or MODEL
    if not (d / "editlab.json").is_file():
        raise EditlabError(f"no pretrained model at {d}; train one with `python train.py` or pass --model DIR")
    return load_checkpoint(d, world.hash).eval(), str(d)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the JSON object)."""
    print(f"[bench/edit {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_scoring(model, tok, enc: PromptEncoder, cases: list[dict], k: int, rounds: int, n_single: int) -> dict:
    """Part 1: probes/s of our core and the reference, interleaved rounds, plus an agreement check.

    ``many``: all ``cases`` in one call (how edit.py scores pre-edit, and batch mode). ``one_case``: one call
    per case for the first ``n_single`` cases (single mode's post-edit scoring, the paper's per-step trace).
    """
    ours = score_cases(model, enc, cases, k)  # warm-up (and the agreement check)
    ref = reference_score_cases(model, tok, cases, k)
    flat = lambda c: c.p + [x for x in c.p_false if x is not None] + list(c.req_tf)  # noqa: E731
    diff = max(abs(a - b) for co, cr in zip(ours, ref, strict=True) for a, b in zip(flat(co), flat(cr), strict=True))
    single = cases[:n_single]
    runs = {
        "many": (lambda: score_cases(model, PromptEncoder(tok), cases, k),  # fresh token cache each round
                 lambda: reference_score_cases(model, tok, cases, k), cases),
        "one_case": (lambda: [score_cases(model, PromptEncoder(tok), [c], k) for c in single],
                     lambda: [reference_score_cases(model, tok, [c], k) for c in single], single),
    }
    out = {"rounds": rounds, "max_abs_diff_p": float(f"{diff:.2e}"),
           "gen_equal_share": sum(a.gen == b.gen for a, b in zip(ours, ref, strict=True)) / len(cases)}
    for name, (f_ours, f_ref, cs) in runs.items():
        t_ours, t_ref = [], []
        for _ in range(rounds):
            t_ours.append(timed(f_ours))
            t_ref.append(timed(f_ref))
        n = sum(len(c["probes"]) for c in cs)
        pps_ours, pps_ref = n / statistics.median(t_ours), n / statistics.median(t_ref)
        out[name] = {"cases": len(cs), "probes": n, "probes_per_s_ours": round(pps_ours),
                     "probes_per_s_reference": round(pps_ref), "speedup": round(pps_ours / pps_ref, 2),
                     "round_s_ours": [round(t, 3) for t in t_ours], "round_s_reference": [round(t, 3) for t in t_ref]}
        log(f"scoring {name}: ours {pps_ours:.0f} probes/s, reference {pps_ref:.0f} probes/s")
    out["target_speedup"] = 5.0
    return out


def _peak_mb(device: torch.device) -> float:
    """CUDA: torch.cuda.max_memory_allocated since the last reset; CPU: this process's peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_method(name: str, model, tok, world: World, cases: list[dict], preset: str, batch_n: int,
                 meta_steps: int, model_id: str, work: Path) -> dict:
    """Everything part 2 measures for one method, in this process (run it in a fresh one: peak memory).

    - ``prepare_cold_s`` / ``prepare_warm_s``: ``prepare`` with an empty and then a warm ``ctx.cache_dir``
      (statistics build vs cache hit; a method that caches nothing shows about equal times);
    - trainable editors: ``meta_train_s`` of ``fit_editor`` for ``meta_steps`` steps and ``editor_params`` (the
      numbers in the editor checkpoint), then that editor is what ``prepare`` loads;
    - ``ms_per_edit``: median apply + restore of one request (after one warm-up), ``edits_per_s`` its inverse;
      ``cpu_ms_per_edit``: the same in this process's CPU time (what it takes without waiting on a loaded machine);
    - ``batch_s`` / ``edits_per_s_batch``: wall time of ``batch_n`` requests in one apply + restore (statistics
      cached), for methods with ``supports_batch``;
    - ``peak_mem_mb``: CUDA max allocated, or on CPU the peak RSS of this process (``peak_mem_increase_mb``:
      beyond what it held after loading the model).
    """
    device = next(model.parameters()).device
    rss0 = _peak_mb(torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    hp = method_hparams(name, preset)
    out: dict = {"hparams": hp or "class defaults (no conf/method yaml)"}
    ctx = EditContext(tokenizer=tok, world_dir=world.dir, cache_dir=work / "cache", seed=0, model_id=model_id)
    method = get_method(name, hp)
    out["supports_batch"] = bool(method.supports_batch)
    if isinstance(method, TrainableEditor):
        meta = world.cases("meta")
        training = EditorTraining(max_steps=meta_steps, batch_size=4, val_fraction=0.2, val_every=meta_steps)
        t = time.perf_counter()
        state, metrics = fit_editor(method, copy.deepcopy(model), tok, meta[: max(40, 8 * meta_steps)], training,
                                    seed=0)
        out.update(meta_train_s=round(time.perf_counter() - t, 2), meta_train_steps=meta_steps,
                   editor_params=sum(v.numel() for v in state.values()))
        ctx = replace(ctx, editor_path=save_editor(work / "editor", method, state, model_id, {"bench": "edit"},
                                                   metrics))
    m = copy.deepcopy(model)
    out["prepare_cold_s"] = round(timed(lambda: method.prepare(m, ctx)), 3)
    warm = get_method(name, hp)
    out["prepare_warm_s"] = round(timed(lambda: warm.prepare(m, ctx)), 3)
    times, cpu = [], []
    for i, case in enumerate([cases[0], *cases]):  # the first case is a warm-up
        torch.manual_seed(i)
        t, c = time.perf_counter(), time.process_time()
        m = method.apply(m, [EditRequest.from_case(case)], ctx).restore()
        if i:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    ms = 1000 * statistics.median(times)
    out.update(ms_per_edit=round(ms, 3), edits_per_s=round(1000 / ms, 2), cases=len(times),
               cpu_ms_per_edit=round(1000 * statistics.median(cpu), 3))  # this process's CPU time: on a loaded
    # machine, what one thread would take alone (the wall figure then includes waiting for a core)
    if method.supports_batch:
        reqs = [EditRequest.from_case(c) for c in world.cases()[:batch_n]]
        torch.manual_seed(0)
        t = time.perf_counter()
        m = method.apply(m, reqs, ctx).restore()
        batch_s = time.perf_counter() - t
        # 6 digits: an in-context batch (ICE) takes microseconds, which 2 digits rounded to 0
        out.update(batch_n=len(reqs), batch_s=round(batch_s, 6), edits_per_s_batch=round(len(reqs) / batch_s, 2))
    peak = _peak_mb(device)
    out.update(peak_mem_mb=round(peak, 1), peak_mem_kind="cuda_max_allocated" if device.type == "cuda" else "cpu_rss")
    if device.type != "cuda":
        out["peak_mem_increase_mb"] = round(peak - rss0, 1)
    log(f"method {name}: {ms:.1f} ms/edit, prepare {out['prepare_cold_s']} s cold / {out['prepare_warm_s']} s warm")
    return out


def bench_methods(names: list[str], args: argparse.Namespace) -> dict:
    """Part 2: :func:`bench_method` for each method, each in its own subprocess (``--worker``), so that its
    peak memory is its own and no method's state leaks into the next."""
    out = {}
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, *_forwarded(args)]
        run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        lines = run.stdout.strip().splitlines()
        try:
            out[name] = json.loads(lines[-1]) if run.returncode == 0 else {"error": f"worker exited {run.returncode}"}
        except (IndexError, json.JSONDecodeError):
            out[name] = {"error": "worker printed no JSON"}
    return out


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The options a ``--worker`` subprocess needs to rebuild the parent's setup."""
    flags = ["--preset", args.preset, "--batch-n", str(args.batch_n), "--meta-steps", str(args.meta_steps),
             "--device", args.device]
    for opt in ("world", "model", "threads"):
        if getattr(args, opt) is not None:
            flags += [f"--{opt}", str(getattr(args, opt))]
    return flags + (["--quick"] if args.quick else [])


def worker(name: str, args: argparse.Namespace, model, model_dir: str, tok, world: World, cases: list[dict]) -> dict:
    """One method's measurements (the ``--worker`` subprocess); errors a user can fix become ``{"error": ...}``."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-edit-{name}-"))  # an empty statistics cache, removed afterwards
    try:
        return bench_method(name, model, tok, world, cases, args.preset, args.batch_n, args.meta_steps,
                            model_id(Path(model_dir)), work)
    except (EditlabError, NotImplementedError, FileNotFoundError) as exc:
        return {"error": str(exc).splitlines()[0]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_protocols(model, tok, enc: PromptEncoder, ctx: EditContext, world: World, cases: list[dict], k: int,
                    n_paper: int, n_ours: int, n_locality: int, preset: str) -> dict:
    """Part 3: seconds per LoRA case under the paper's protocol and under ours, extrapolated to 5000 cases.

    Both use the paper's LoRA (conf/method/lora.yaml ``hparams``: 40 steps, no early stop); ours is also
    timed with the ``preset`` hyper-parameters (what ``python edit.py`` runs on this model).
    """
    if "lora" not in available():
        return {"error": "method lora is not registered"}
    paper_lora = get_method("lora", method_hparams("lora", None))
    m = copy.deepcopy(model)

    def paper_case(case: dict) -> tuple[float, int]:
        t = time.perf_counter()
        handle = paper_lora.apply(m, [EditRequest.from_case(case)], ctx,
                                  on_step=lambda step, mm: reference_score_cases(mm, tok, [case], k))  # every step
        handle.restore()
        return time.perf_counter() - t, handle.info.get("steps")

    facts = locality_facts(world.facts, world.cases(), n_locality, seed=0)
    base_loc = LocalityState.score(m, enc, facts, k)

    def our_case(lora, case: dict) -> tuple[float, int]:
        t = time.perf_counter()
        handle = lora.apply(m, [EditRequest.from_case(case)], ctx)
        score_cases(handle.model, enc, [case], k, prefixes=[handle.prefix])
        LocalityState.score(handle.model, enc, facts, k, handle.prefix).compare(base_loc, facts)
        handle.restore()
        return time.perf_counter() - t, handle.info.get("steps")

    our_case(paper_lora, cases[0])  # warm-up
    pre = timed(lambda: score_cases(m, PromptEncoder(tok), cases[:n_ours], k)) / n_ours  # amortised pre-edit
    hours = lambda s: round(s * N_CASES_RUN / 3600, 2)  # noqa: E731

    def summary(runs: list[tuple[float, int]], extra: float = 0.0) -> dict:
        s = statistics.median(t for t, _ in runs) + extra
        return {"s_per_case": round(s, 3), "hours": hours(s), "measured_cases": len(runs),
                "median_steps": statistics.median(n for _, n in runs)}

    log("protocols: timing the paper protocol")
    paper = summary([paper_case(c) for c in cases[:n_paper]])
    log(f"protocols: paper {paper['s_per_case']} s/case; timing ours")
    ours = summary([our_case(paper_lora, c) for c in cases[:n_ours]], pre)
    tuned = summary([our_case(get_method("lora", method_hparams("lora", preset)), c) for c in cases[:n_ours]], pre)
    return {"cases": N_CASES_RUN, "n_locality": len(facts), "pre_s_per_case": round(pre, 4),
            "paper_protocol": paper, "ours": {**ours, "target_hours": 1.0}, f"ours_{preset}_preset": tuned,
            "paper_code_on_this_machine": {"s_per_case": PAPER_CODE_S_PER_CASE, "hours": hours(PAPER_CODE_S_PER_CASE)},
            "speedup_vs_paper_protocol": round(paper["s_per_case"] / ours["s_per_case"], 1)}


def bench_threads(rounds: int, n_edits: int) -> dict:
    """Part 4: median wall seconds of ``edit.py method=rome edits.n=<n_edits>`` per (load, threads) setting."""
    from editlab.utils.threads import available_cores

    cores = available_cores()
    settings = ["auto", str(cores)] if cores > 1 else ["auto"]
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for load in ("idle", "loaded"):
            busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "loaded" else None)
            try:
                for t in settings:
                    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
                        cmd = [sys.executable, str(ROOT / "edit.py"), "method=rome", f"edits.n={n_edits}",
                               f"threads={t}", "progress=false", f"run_dir={tmp}/run"]
                        start = time.perf_counter()
                        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                        if done.returncode != 0:
                            raise EditlabError(f"edit.py failed (exit {done.returncode}): "
                                               f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
                        times.setdefault((load, t), []).append(time.perf_counter() - start)
                    log(f"threads round {r + 1}/{rounds}: {load}, threads={t}: {times[(load, t)][-1]:.1f} s")
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    out: dict = {"command": f"python edit.py method=rome edits.n={n_edits} threads=<setting>", "cores": cores,
                 "rounds": rounds, "busy_process": "python -c 'while True: pass' (one core)"}
    for (load, t), ts in times.items():
        out.setdefault(load, {})[f"threads={t}"] = {"median_s": round(statistics.median(ts), 2),
                                                    "runs_s": [round(x, 2) for x in ts]}
    for load in ("idle", "loaded"):
        if len(settings) > 1:
            a, b = (out[load][f"threads={t}"]["median_s"] for t in settings)
            out[load]["ratio_cores_over_auto"] = round(b / a, 2) if a else None
    return out


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few cases, one round")
    ap.add_argument("--world", type=Path, default=None, help="built world directory (default: the tiny world)")
    ap.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the tiny export)")
    ap.add_argument("--preset", default="mistral_tiny", help="use conf/method_model/tuned/<method>_<this>.yaml")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--score-cases", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: leave torch's default)")
    ap.add_argument("--parts", default="scoring,methods,extrapolated",
                    help="comma-separated parts to run (scoring, methods, extrapolated, threads)")
    ap.add_argument("--methods", default=None, help="comma-separated methods of part 2 (default: every registered one)")
    ap.add_argument("--batch-n", type=int, default=None, help="requests in one apply for edits/s at batch N "
                    "(default 1000; --quick: 16)")
    ap.add_argument("--meta-steps", type=int, default=None, help="meta-training steps timed for trainable editors "
                    "(default 20; --quick: 2)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda when available)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one method of part 2
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"scoring", "methods", "extrapolated", "threads"}:
        raise EditlabError(f"--parts {args.parts}: choose from scoring, methods, extrapolated, threads "
                           "(comma-separated)")
    names = available() if args.methods is None else [m for m in args.methods.split(",") if m]
    unknown = sorted(set(names) - set(available()))
    if unknown or not names:
        raise EditlabError(f"--methods {args.methods}: unknown {unknown}; choose from {', '.join(available())}")
    if args.device not in ("cpu", "cuda", "auto"):
        raise EditlabError(f"--device {args.device}: use cpu, cuda or auto")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    args.batch_n = args.batch_n or (16 if q else 1000)
    args.meta_steps = args.meta_steps or (2 if q else 20)
    rounds = args.rounds or (1 if q else 3)
    n_score = args.score_cases or (16 if q else 100)
    n_method, n_paper, n_ours = (2, 1, 2) if q else (5, 2, 5)

    world = World.open(args.world or default_world(), "wikidata_synth_tiny")
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    model, model_dir = load_model(world, args.model)
    model = model.to(args.device)
    cases = world.cases()
    if args.worker:
        return worker(args.worker, args, model, model_dir, tok, world, cases[:n_method])
    enc = PromptEncoder(tok)
    k = max_object_tokens(tok, world.info["objects"])
    ctx = EditContext(tokenizer=tok, world_dir=world.dir, cache_dir=ROOT / ".cache/editlab/bench_edit", seed=0,
                      model_id=model_id(Path(model_dir)))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    out = {
        "bench": "edit",
        "device": f"{args.device} x{torch.get_num_threads()} threads",
        "hardware": describe(dtype),  # the scorer runs in the model's dtype (no autocast)
        "model": model_dir,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "world": world.dir.name,
        "max_new_tokens": k,
        "quick": q,
    }
    if "scoring" in parts:
        out["scoring"] = bench_scoring(model, tok, enc, cases[:n_score], k, rounds, 4 if q else 20)
    if "methods" in parts:
        out["methods"] = bench_methods(names, args)
    if "threads" in parts:
        out["threads"] = bench_threads(rounds, 5 if q else 50)
    if "extrapolated" in parts:
        out["extrapolated"] = bench_protocols(model, tok, enc, ctx, world, cases, k, n_paper, n_ours, 100,
                                              args.preset)
    return out


if __name__ == "__main__":
    print(json.dumps(run_cli(lambda: main(sys.argv[1:]), resume_hint="re-run the benchmark")))
