"""``edit_run(run)``: the library function behind ``python edit.py`` (one typed :class:`EditRun`, no DictConfig).

Layout of a run directory (predictable from the config, so a killed run finds itself again)::

    <run_dir>/run_config.yaml          the resolved config (a finished run with the same config is reused)
    <run_dir>/results.jsonl            per-case records (eval/records.py); ``.partial`` while running
    <run_dir>/metrics.json             summary per subset and stage (eval/summary.py) + run-level values (strict JSON)
    <run_dir>/curve.jsonl              sequential: one evaluation point every ``eval_every`` edits
    <run_dir>/checkpoints/last.ckpt    sequential: Lightning state for resuming (not for loading models)
    <run_dir>/model/                   sequential: the final edited model (self-describing checkpoint)
    <run_dir>/csv/ or wandb/           logs

Stopping (SIGTERM / SIGINT, :mod:`editlab.utils.signals`): single/batch stop at once, leaving the
complete records in ``results.jsonl.partial``; a sequential stream stops after the current edit with
``last.ckpt``. Neither writes ``results.jsonl``, ``metrics.json`` or ``model/``; the same command resumes.

Method statistics (covariances, ...) are cached under ``<cache_root>/<model_id>/``: keyed by the
checkpoint's identity, never shared between two models (or two seeds of one model).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from editlab.editing.base import EditContext, EditMethod, EditRequest, RelationSchema
from editlab.editing.trainable import TrainableEditor
from editlab.errors import EditlabError
from editlab.eval.locality import LocalityState, locality_facts
from editlab.eval.probes import max_object_tokens, score_cases
from editlab.lm.checkpoint import load_checkpoint, model_id
from editlab.runs.config import EditRun
from editlab.runs.editors import resolve_editor
from editlab.runs.export import export_edited
from editlab.runs.pretrain import resolve_resume
from editlab.runs.protocols import RestoringProtocol, SequentialProtocol, fit_sequential, sequential_trainer
from editlab.runs.results import FINAL, PARTIAL, ResultsWriter
from editlab.runs.session import Session
from editlab.utils.hardware import resolve_device
from editlab.utils.jsonio import write_json
from editlab.utils.rundir import NON_RESULT_KEYS, prepare
from editlab.vocab import PromptEncoder
from editlab.world.implied import Implications
from editlab.world.loading import World
from editlab.world.stream import AgentStream

FINAL_LOCALITY = ("locality_agree", "locality_agree_answer", "locality_acc", "locality_kl")
"""Curve values of a sequential run's final model that its summary carries as ``final/<key>`` (records score
each edit's own probes; locality is measured on the model, once per curve point)."""


def implications_of(world: World, credence: bool = False):
    """A case -> its implied facts as edit requests (:mod:`editlab.world.implied`), for methods that take them; with
    ``credence`` each asks for the edited agent's posterior of its new answer (``edits.target=credence``)."""
    implied = Implications.from_world(world)
    return lambda case: tuple(EditRequest(f.subject, f.relation, f.object, f"{case['case_id']}/implied",
                                          credence=f.p if credence else 1.0) for f in implied.of_case(case))


def schema_of(world: World) -> RelationSchema:
    """The world's knowledge graph without its objects (:class:`~editlab.editing.base.RelationSchema`): its relation
    pairs, each relation's objects and the subjects with a fact of it, for schema-guided editors."""
    subjects: dict[str, set[str]] = {}
    for fact in world.facts:
        subjects.setdefault(fact["relation"], set()).add(fact["subject"])
    rels = world.info["relations"]
    return RelationSchema(downstream={r["name"]: r["downstream"] for r in rels if r["downstream"]},
                          objects={r["name"]: tuple(r["support"]) for r in rels},
                          subjects={r["name"]: tuple(sorted(subjects.get(r["name"], ()))) for r in rels})


def check_target(method: EditMethod, target: str) -> None:
    """``edits.target=credence`` only for a method whose loss takes a target probability (one line naming the fix)."""
    if target == "credence" and not method.supports_credence:
        raise EditlabError(f"edits.target=credence asks each edit for a probability below 1, which method "
                           f"{method.name} cannot aim at (it optimises no target loss): use edits.target=certain, "
                           "or lora, adalora, ft_l, ft_m, rome, memit, alphaedit, grace (or propagate over one)")


def preset_of(run_config: dict) -> str:
    """The run's preset (conf/preset/: ``tuned``, the default, or ``paper``), as records and tables name it."""
    return str((run_config.get("preset") or {}).get("name", "tuned"))


def edit_run(run: EditRun) -> dict:
    """Apply ``run.edits.n`` edit cases with ``run.method`` to the model at ``run.checkpoint``; score, write,
    summarise."""
    world, method, edits, metrics, seed, run_config = (run.world, run.method, run.edits, run.metrics, run.seed,
                                                       run.run_config)
    checkpoint, editor_path = run.checkpoint, run.editor_path
    cases = world.cases(edits.split)
    if edits.n > len(cases):
        raise EditlabError(f"edits.n={edits.n} but the world has {len(cases)} {edits.split} cases; use edits.n<="
                           f"{len(cases)} or build a world with more cases (data.cases.n_cases)")
    if edits.mode != "single" and edits.batch_size > 1 and not method.supports_batch:
        raise EditlabError(f"method {method.name} edits one request at a time; use edits.batch_size=1")
    check_target(method, edits.target)
    dev = resolve_device(run.device)
    model = load_checkpoint(checkpoint, world.hash).to(dev).eval()  # before touching run_dir: bad input leaves nothing
    mid = model_id(checkpoint)
    editor = getattr(method, "base_method", method)  # a wrapper (propagate) edits with its base's editor
    if isinstance(editor, TrainableEditor):  # editor_path, or the editor train.py task=editor wrote for this checkpoint
        fallback = {"data": (run_config.get("data") or {}).get("name"),
                    "model": (run_config.get("model") or {}).get("name"), "seed": run_config.get("model_seed"),
                    "preset": run_config.get("preset")}
        editor_path = resolve_editor(editor_path, editor, checkpoint, mid, fallback)
    run_dir = Path(run.run_dir)
    state = prepare(run_dir, run_config, ignore=NON_RESULT_KEYS, overwrite=run.overwrite, done=("metrics.json", FINAL))
    if state == "done":
        return {**json.loads((run_dir / "metrics.json").read_text()), "reused": True}
    torch.manual_seed(seed)
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    enc = PromptEncoder(tok)
    mx = max_object_tokens(tok, world.info["objects"])
    chosen = cases[: edits.n]
    loc = locality_facts(world.facts, cases, metrics.n_locality, seed)
    cache = Path(run.cache_root) if run.cache_root is not None else run_dir.parent / ".cache"
    ctx = EditContext(model_id=mid, tokenizer=tok, world_dir=world.dir, cache_dir=cache / mid, editor_path=editor_path,
                      seed=seed, stats_text=run.stats_dataset, schema=schema_of(world))
    method.prepare(model, ctx)
    base_loc = LocalityState.score(model, enc, loc, mx)
    credence = edits.target == "credence"
    implied = implications_of(world, credence) if method.uses_implied else None
    session = Session(method, ctx, enc, mx, loc, base_loc, seed=seed, n_samples=metrics.n_samples,
                      sample_tokens=metrics.sample_tokens, trace=edits.trace,
                      skip_correct=edits.skip_correct, implications=implied, credence=credence)
    t0 = time.perf_counter()
    pre = score_cases(model, enc, chosen, mx, progress="pre-edit scores" if run.progress else None)
    pre_fluency = session.fluency(model, chosen, salt=-1)
    writer = ResultsWriter(run_dir, resume=state == "resume" and (run_dir / PARTIAL).exists())
    if edits.mode == "sequential":
        _run_sequential(run, session, model, (chosen, pre, pre_fluency), writer, resume=state == "resume")
    else:
        stream = AgentStream.from_world(world, edits.weight) if edits.mode == "batch" else None
        RestoringProtocol(session, model, edits.mode, edits.batch_size, stream).run(chosen, pre, pre_fluency, writer,
                                                                                    run.progress)
    wall = time.perf_counter() - t0
    out = _finish(run, chosen, writer.records, wall, base_loc.accuracy(loc))
    writer.finish()  # last: results.jsonl appears only once metrics.json is written, so "done" means complete
    return out


def _run_sequential(run: EditRun, session: Session, model: torch.nn.Module, scored: tuple[list[dict], list, list[dict]],
                    writer: ResultsWriter, resume: bool) -> None:
    """Fit the :class:`SequentialProtocol` (one epoch per batch of edits, resuming from last.ckpt), then score
    every edit on the final model and export it. ``scored``: the cases with their pre-edit scores and fluency."""
    cases, pre, pre_fluency = scored
    edits, world, run_dir = run.edits, run.world, Path(run.run_dir)
    stream = AgentStream.from_world(world, edits.weight)
    curve = run_dir / "curve.jsonl"
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if not resume:
        curve.unlink(missing_ok=True)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    protocol = SequentialProtocol(session, model, cases, pre, pre_fluency, edits.batch_size, edits.eval_every,
                                  stream, writer, curve)
    fit = sequential_trainer(run.trainer or {}, protocol, last, edits.ckpt_every, resolve_device(run.device), run_dir,
                             run.loggers or [], run.progress)
    if resume and last.is_file():
        ckpt_path: str | None = resolve_resume(str(last), run_dir)  # a truncated checkpoint is a clear error
    else:
        ckpt_path = None
        writer.keep(0)
    fit_sequential(fit, protocol, ckpt_path)
    # every edit scored on the final model, against the agent holding all edits
    final = session.score(protocol.model, cases, protocol.prefix)
    for rec, case, sc in zip(writer.records, cases, final, strict=True):
        rec.update(final=sc.to_json(), **stream.scored(case, "final"))
    writer.keep(len(writer.records))
    export_edited(protocol.model, session.method, world.dir, run_dir / "model", run.run_config, world.hash,
                  {"edits": len(cases)}, session.ctx.model_id)


def _finish(run: EditRun, cases: list[dict], records: list[dict], wall: float, loc_acc_pre: float) -> dict:
    """Summarise the records into ``metrics.json`` and the loggers."""
    from editlab.eval.summary import summarize

    world, metrics, edits, run_dir = run.world, run.metrics, run.edits, Path(run.run_dir)

    summary = summarize({c["case_id"]: c for c in cases}, records, metrics.protocol)
    if edits.mode == "sequential":  # the final model's locality: the curve's last point (written at the end)
        last = json.loads((run_dir / "curve.jsonl").read_text().splitlines()[-1])
        summary["subsets"]["all"].update({f"final/{k}": last[k] for k in FINAL_LOCALITY if k in last})
    edited = [r for r in records if r.get("edited", True)]
    times = sorted(r["time_s"] for r in edited) or [0.0]  # a request left unedited (edits.skip_correct) costs nothing
    name, preset = run.method.name, preset_of(run.run_config)
    out = {"method": name, "preset": preset, "mode": edits.mode, "n": len(records), "protocol": metrics.protocol,
           "skip_correct": edits.skip_correct, "edited_share": len(edited) / len(records),
           "summary": summary, "locality_acc_pre": loc_acc_pre, "wall_s": round(wall, 2),
           "median_edit_s": times[len(times) // 2], "peak_mem_mb": max(r["peak_mem_mb"] for r in records),
           "world_hash": world.hash, "results": str(run_dir / FINAL)}
    write_json(run_dir / "metrics.json", out)
    flat = {}
    for subset, vals in summary["subsets"].items():
        for k, v in vals.items():
            if isinstance(v, int | float):
                flat[k if subset == "all" else f"{subset}/{k}"] = float(v)
    for lg in run.loggers or []:
        lg.log_metrics(flat, step=len(records))
        lg.save()
    return out
