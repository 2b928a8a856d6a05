"""Benchmark: speed of editing, and of our scoring core beside a paper-style reference scorer, in one run.

    python bench/edit.py                     # tiny world + the pretrained mistral_tiny on this machine
    python bench/edit.py --quick             # smoke run (seconds)
    python bench/edit.py --model DIR --world DIR --rounds 5
    python bench/edit.py --threads 1 --parts scoring   # only the scorer comparison, one torch thread

Three parts, each figure a median (interleaved rounds for the scorer comparison, cases for the rest):

1. ``scoring``: probes scored per second by :func:`editlab.eval.probes.score_cases` (all probes of many
   cases in one prefix-tree pass that computes every distinct prefix once, whose keys and values seed a
   hand-written KV-cached greedy loop; :mod:`editlab.eval.fast_scoring`) and by
   :func:`editlab.eval.reference.reference_score_cases` (the paper's layout: batches of 64, left padding,
   one pass per probe type, greedy decoding by full forwards without KV cache, fp32), on the same cases,
   alternating in rounds. Both compute the same :class:`~editlab.eval.probes.CaseScores`; the largest
   probability difference and the share of equal greedy continuations are reported as a check.
2. ``methods``: apply + restore time of every registered method (single mode, one case at a time), with
   the hyper-parameters edit.py composes for ``model=<preset>`` (conf/method/ + conf/method_model/).
3. ``extrapolated``: hours for 5000 LoRA edit cases, (a) the paper's protocol (the case's probes re-scored
   with the reference scorer after every one of the 40 LoRA steps) and (b) our default single-mode step
   (apply LoRA, score the case's probes post-edit with our core, locality on 100 fixed facts, restore;
   pre-edit scores amortised from one batched pass, as editing/runner.py does), with the paper's LoRA
   (40 steps) and with the model's preset (early stop). Fluency sampling is not included in (b).

Torch threads are left at the default unless ``--threads`` is given; prints one JSON object, whose
``hardware`` entry records the CPU model and capability, native bf16, torch threads and the precision the
model ran in (:func:`editlab.utils.hardware.describe`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerFast

from editlab.cli import run_cli
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.hparams import method_hparams  # what edit.py composes for model=<preset>
from editlab.editing.registry import available, get_method
from editlab.errors import EditlabError
from editlab.eval.locality import LocalityState, locality_facts
from editlab.eval.probes import PromptEncoder, max_object_tokens, score_cases
from editlab.eval.reference import reference_score_cases
from editlab.lm.checkpoint import load_checkpoint
from editlab.utils.hardware import describe
from editlab.world.build import build_world
from editlab.world.config import world_config
from editlab.world.loading import World

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "outputs/train/wikidata_synth_tiny/mistral_tiny-s0/model"  # what `python train.py` exports
N_CASES_RUN = 5000
PAPER_CODE_S_PER_CASE = 22.0  # the paper's own code, measured on this machine (task brief)


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


def bench_methods(model, ctx: EditContext, cases: list[dict], preset: str) -> dict:
    """Part 2: median ms per apply + restore of each registered method, one case at a time."""
    out = {}
    for name in available():
        try:
            hp = method_hparams(name, preset)
            method = get_method(name, hp)
            m = copy.deepcopy(model)
            t_prep = timed(lambda: method.prepare(m, ctx))  # noqa: B023 - called right here
            times = []
            for i, case in enumerate([cases[0], *cases]):  # the first case is a warm-up
                torch.manual_seed(i)
                t = time.perf_counter()
                m = method.apply(m, [EditRequest.from_case(case)], ctx).restore()
                if i:
                    times.append(time.perf_counter() - t)
        except (EditlabError, NotImplementedError, FileNotFoundError) as exc:
            out[name] = {"error": str(exc).splitlines()[0]}
            continue
        ms = 1000 * statistics.median(times)
        log(f"method {name}: {ms:.1f} ms/edit")
        out[name] = {"ms_per_edit": round(ms, 3), "edits_per_s": round(1000 / ms, 2), "cases": len(times),
                     "prepare_s": round(t_prep, 2), "hparams": hp or "class defaults (no conf/method yaml)"}
    return out


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


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few cases, one round")
    ap.add_argument("--world", type=Path, default=None, help="built world directory (default: the tiny world)")
    ap.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the tiny export)")
    ap.add_argument("--preset", default="mistral_tiny", help="use conf/method_model/<method>_<this>.yaml")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--score-cases", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: leave torch's default)")
    ap.add_argument("--parts", default="scoring,methods,extrapolated",
                    help="comma-separated parts to run (scoring, methods, extrapolated)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"scoring", "methods", "extrapolated"}:
        raise EditlabError(f"--parts {args.parts}: choose from scoring, methods, extrapolated (comma-separated)")
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    rounds = args.rounds or (1 if q else 3)
    n_score = args.score_cases or (16 if q else 100)
    n_method, n_paper, n_ours = (2, 1, 2) if q else (5, 2, 5)

    world = World.open(args.world or default_world(), "wikidata_synth_tiny")
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    model, model_dir = load_model(world, args.model)
    enc = PromptEncoder(tok)
    cases = world.cases()
    k = max_object_tokens(tok, world.info["objects"])
    ctx = EditContext(tokenizer=tok, world_dir=world.dir, cache_dir=ROOT / ".cache/editlab/bench_edit", seed=0)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    out = {
        "bench": "edit",
        "device": f"cpu x{torch.get_num_threads()} threads",
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
        out["methods"] = bench_methods(model, ctx, cases[:n_method], args.preset)
    if "extrapolated" in parts:
        out["extrapolated"] = bench_protocols(model, tok, enc, ctx, world, cases, k, n_paper, n_ours, 100,
                                              args.preset)
    return out


if __name__ == "__main__":
    print(json.dumps(run_cli(lambda: main(sys.argv[1:]), resume_hint="re-run the benchmark")))
