"""Reports of evaluate.py: the tables and plots of an edit run, and the pre-edit scores of a checkpoint.

Every report directory is written into a staging sibling and renamed into place (:func:`publish`), so a
failed or killed report leaves the previous one (or nothing), never a half-written directory. Plain typed
arguments only: evaluate.py composes the config, opens the world and loads the model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from editlab.errors import EditlabError
from editlab.eval import plots
from editlab.eval.probes import PromptEncoder, max_object_tokens, score_cases
from editlab.eval.records import read_records
from editlab.eval.report import editing_markdown, table4_markdown, table5_markdown, tidy_csv
from editlab.eval.summary import summarize
from editlab.utils.atomic import atomic_directory
from editlab.utils.csvlog import read_csv_log
from editlab.utils.jsonio import dumps, read_jsonl
from editlab.utils.rundir import read_yaml
from editlab.world.loading import World

REPORT_KEY = "editlab-report-1"


def publish(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a fresh staging directory, then replace ``out`` with it (nothing half-written)."""
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    with atomic_directory(staging, REPORT_KEY) as tmp:
        write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(staging, out)


def write_tables(directory: Path, summary: dict, meta: dict) -> None:
    """Table 4 + Table 5 (markdown), the tidy CSV of every number, and the editing-metrics table."""
    (directory / "table4.md").write_text(table4_markdown(summary, meta) + "\n" + table5_markdown(summary, meta))
    (directory / "table4.csv").write_text(tidy_csv(summary))
    (directory / "editing.md").write_text(editing_markdown(summary, meta))


def training_loss(csv_path: Path) -> list[tuple[float, float]]:
    """(tokens, train/loss) pairs of a pretraining run's CSV log (Lightning CSVLogger), if there is one."""
    return [(p["train/tokens"], p["train/loss"]) for p in read_csv_log(csv_path)
            if "train/loss" in p and "train/tokens" in p]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EditlabError(f"{path} is not valid JSON ({exc.msg}); re-run the command that wrote it") from None


def evaluate_run(run_dir: Path, out: Path, data: dict, max_panels: int) -> dict:
    """Render the report of an edit run directory (edit.py's results.jsonl, metrics.json, curve.jsonl).

    Args:
        run_dir: the directory edit.py printed.
        out: the report directory to (re)place.
        data: the world config to use when the run does not record one (its run_config.yaml wins: the
            report must describe the world the run edited, not this command's ``data=`` default).
        max_panels: at most this many traced records get a Fig. 4 panel.
    """
    if not run_dir.is_dir():
        raise EditlabError(f"run={run_dir} is not a directory; pass the run directory edit.py printed")
    if not (run_dir / "results.jsonl").is_file():
        raise EditlabError(f"no results.jsonl in {run_dir}; the edit run did not finish, re-run edit.py")
    records = read_records(run_dir / "results.jsonl")
    if not records:
        raise EditlabError(f"{run_dir}/results.jsonl is empty; re-run edit.py")
    metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    if (run_dir / "run_config.yaml").is_file():
        data = read_yaml(run_dir / "run_config.yaml").get("data", data)
    traced = [r for r in records if r.get("trace")][:max_panels]
    summary = metrics.get("summary")
    cases = {}
    if summary is None or traced:
        cases = {c["case_id"]: c for c in World.from_config(data, data["cache_dir"]).cases("eval")}
        if missing := [r["case_id"] for r in traced if r["case_id"] not in cases][:1]:
            raise EditlabError(f"case {missing[0]} of {run_dir} is not in the world's cases; "
                               "evaluate with the world the run edited")
    if summary is None:
        summary = summarize(cases, records)
    curve = read_jsonl(run_dir / "curve.jsonl", "re-run edit.py") if (run_dir / "curve.jsonl").is_file() else []
    meta = {k: metrics.get(k, records[0].get(k)) for k in ("method", "mode")}

    def write(tmp: Path) -> None:
        write_tables(tmp, summary, meta)
        for r in traced:
            plots.save(plots.edit_panels(r, cases[r["case_id"]]), tmp / f"fig4_{r['case_id']}.png")
        if curve:
            plots.save(plots.sequential_curves(curve), tmp / "sequential.png")

    publish(out, write)
    return {"report": str(out), "n": len(records), "panels": len(traced), "sequential": bool(curve),
            **{f"all/{k}": v for k, v in summary["subsets"].get("all", {}).items()}}


def evaluate_checkpoint(model: torch.nn.Module, world: World, checkpoint: Path, out: Path, n_cases: int | None,
                        batch_size: int, protocol: str) -> dict:
    """Score ``model`` (loaded from ``checkpoint``) on the world's evaluation cases before any edit (Table 4's
    "pre" rows); plot the pretraining curve (Fig. 3) when ``checkpoint``'s run recorded one."""
    from transformers import PreTrainedTokenizerFast

    if n_cases is not None and n_cases < 1:
        raise EditlabError(f"n_cases={n_cases} must be positive (or null for all cases)")
    model = model.eval()
    if torch.cuda.is_available():
        model = model.cuda()
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    cases = world.cases("eval")[:n_cases]
    scores = score_cases(model, PromptEncoder(tok), cases, max_object_tokens(tok, world.info["objects"]),
                         batch_size=batch_size)
    records = [{"case_id": c["case_id"], "index": i, "pre": s.to_json()}
               for i, (c, s) in enumerate(zip(cases, scores, strict=True))]
    summary = summarize({c["case_id"]: c for c in cases}, records, protocol=protocol)
    train_metrics = checkpoint.parent / "metrics.json"
    curve = _read_json(train_metrics).get("curve") if train_metrics.is_file() else None

    def write(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(dumps({"checkpoint": str(checkpoint), "world_hash": world.hash,
                                                 "n": len(cases), "protocol": protocol, "summary": summary},
                                                indent=1, sort_keys=True))
        (tmp / "results.jsonl").write_text("".join(dumps(r) + "\n" for r in records))
        write_tables(tmp, summary, {"method": "none (checkpoint)", "mode": None})
        if curve:
            plots.save(plots.training_curve(curve, training_loss(checkpoint.parent / "csv" / "metrics.csv")),
                       tmp / "fig3_training.png")

    publish(out, write)
    return {"report": str(out), "n": len(cases), **{f"all/{k}": v for k, v in summary["subsets"]["all"].items()}}
