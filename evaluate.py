"""Evaluation entry point (Hydra): tables and plots of an edit run, or scores of a checkpoint.

    python evaluate.py run=outputs/edit/<run>          # <run>/report/: Table 4/5, editing metrics, Fig. 4, curves
    python evaluate.py checkpoint=<model dir>          # <model dir>/eval/: pre-edit scores on the world's cases
    python evaluate.py checkpoint=<dir> data=wikidata_synth n_cases=1000 out_dir=outputs/eval/base

Every output directory is written in a temporary sibling and renamed into place, so a failed run leaves
the previous report (or nothing). Errors the user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import hydra
import yaml
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from editlab.cli import run_cli
from editlab.errors import EditlabError

REPORT_KEY = "editlab-report-1"


def _publish(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a fresh staging directory, then replace ``out`` with it (nothing half-written)."""
    from editlab.utils.atomic import atomic_directory

    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    with atomic_directory(staging, REPORT_KEY) as tmp:
        write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(staging, out)


def _open_world(data: dict):
    from editlab.world.loading import World

    return World.from_config(data, to_absolute_path(data["cache_dir"]))


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except json.JSONDecodeError as exc:
        raise EditlabError(f"malformed line in {path} ({exc.msg}); re-run edit.py") from None


def _tables(tmp: Path, summary: dict, meta: dict) -> None:
    from editlab.eval.report import editing_markdown, table4_markdown, table5_markdown, tidy_csv

    (tmp / "table4.md").write_text(table4_markdown(summary, meta) + "\n" + table5_markdown(summary, meta))
    (tmp / "table4.csv").write_text(tidy_csv(summary))
    (tmp / "editing.md").write_text(editing_markdown(summary, meta))


def evaluate_run(run_dir: Path, out: Path, data: dict, max_panels: int) -> dict:
    """Render the report of an edit run directory (edit.py's results.jsonl, metrics.json, curve.jsonl)."""
    from editlab.eval import plots
    from editlab.eval.records import read_records

    if not run_dir.is_dir():
        raise EditlabError(f"run={run_dir} is not a directory; pass the run directory edit.py printed")
    if not (run_dir / "results.jsonl").is_file():
        raise EditlabError(f"no results.jsonl in {run_dir}; the edit run did not finish, re-run edit.py")
    records = read_records(run_dir / "results.jsonl")
    if not records:
        raise EditlabError(f"{run_dir}/results.jsonl is empty; re-run edit.py")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    if (run_dir / "run_config.yaml").is_file():  # the world the run edited, not this command's data= default
        data = yaml.safe_load((run_dir / "run_config.yaml").read_text()).get("data", data)
    traced = [r for r in records if r.get("trace")][:max_panels]
    summary = metrics.get("summary")
    cases = {}
    if summary is None or traced:
        cases = {c["case_id"]: c for c in _open_world(data).cases("eval")}
        if missing := [r["case_id"] for r in traced if r["case_id"] not in cases][:1]:
            raise EditlabError(f"case {missing[0]} of {run_dir} is not in the world's cases; "
                               "evaluate with the world the run edited")
    if summary is None:
        from editlab.eval.summary import summarize

        summary = summarize(cases, records)
    curve = _read_jsonl(run_dir / "curve.jsonl") if (run_dir / "curve.jsonl").is_file() else []
    meta = {k: metrics.get(k, records[0].get(k)) for k in ("method", "mode")}

    def write(tmp: Path) -> None:
        _tables(tmp, summary, meta)
        for r in traced:
            plots.save(plots.edit_panels(r, cases[r["case_id"]]), tmp / f"fig4_{r['case_id']}.png")
        if curve:
            plots.save(plots.sequential_curves(curve), tmp / "sequential.png")

    _publish(out, write)
    return {"report": str(out), "n": len(records), "panels": len(traced), "sequential": bool(curve),
            **{f"all/{k}": v for k, v in summary["subsets"].get("all", {}).items()}}


def _training_loss(csv_path: Path) -> list[tuple[float, float]]:
    """(tokens, train/loss) pairs of a pretraining run's CSV log (Lightning CSVLogger), if there is one."""
    if not csv_path.is_file():
        return []
    with csv_path.open() as f:
        return [(float(r["train/tokens"]), float(r["train/loss"])) for r in csv.DictReader(f)
                if r.get("train/loss") and r.get("train/tokens")]


def evaluate_checkpoint(ckpt: Path, out: Path, data: dict, n_cases: int | None, batch_size: int,
                        protocol: str) -> dict:
    """Score a checkpoint on the world's evaluation cases before any edit (Table 4's "pre" rows)."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from editlab.eval import plots
    from editlab.eval.probes import PromptEncoder, max_object_tokens, score_cases
    from editlab.eval.summary import summarize
    from editlab.lm.checkpoint import load_checkpoint

    world = _open_world(data)
    model = load_checkpoint(ckpt, world.hash).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    cases = world.cases("eval")[:n_cases]
    scores = score_cases(model, PromptEncoder(tok), cases, max_object_tokens(tok, world.info["objects"]),
                         batch_size=batch_size)
    records = [{"case_id": c["case_id"], "index": i, "pre": s.to_json()}
               for i, (c, s) in enumerate(zip(cases, scores, strict=True))]
    summary = summarize({c["case_id"]: c for c in cases}, records, protocol=protocol)
    train_metrics = ckpt.parent / "metrics.json"
    curve = json.loads(train_metrics.read_text()).get("curve") if train_metrics.is_file() else None

    def write(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps({"checkpoint": str(ckpt), "world_hash": world.hash,
                                                      "n": len(cases), "protocol": protocol, "summary": summary},
                                                     indent=1, sort_keys=True))
        (tmp / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        _tables(tmp, summary, {"method": "none (checkpoint)", "mode": None})
        if curve:
            plots.save(plots.training_curve(curve, _training_loss(ckpt.parent / "csv" / "metrics.csv")),
                       tmp / "fig3_training.png")

    _publish(out, write)
    return {"report": str(out), "n": len(cases), **{f"all/{k}": v for k, v in summary["subsets"]["all"].items()}}


def evaluate(cfg: DictConfig) -> dict:
    """Validate the config and run the mode it names; returns the report's location and headline numbers."""
    if (cfg.run is None) == (cfg.checkpoint is None):
        raise EditlabError("set exactly one of run=<edit run dir> or checkpoint=<model dir>")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.run is not None:
        run_dir = Path(to_absolute_path(str(cfg.run)))
        out = Path(to_absolute_path(str(cfg.out_dir))) if cfg.out_dir else run_dir / "report"
        return evaluate_run(run_dir, out, data, int(cfg.max_panels))
    ckpt = Path(to_absolute_path(str(cfg.checkpoint)))
    out = Path(to_absolute_path(str(cfg.out_dir))) if cfg.out_dir else ckpt / "eval"
    if cfg.n_cases is not None and int(cfg.n_cases) < 1:
        raise EditlabError(f"n_cases={cfg.n_cases} must be positive (or null for all cases)")
    return evaluate_checkpoint(ckpt, out, data, None if cfg.n_cases is None else int(cfg.n_cases),
                               int(cfg.batch_size), str(cfg.protocol))


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli(lambda: evaluate(cfg), "re-run the same command")
    print(f"report: {metrics['report']} ({metrics['n']} cases)")
    return metrics.get("all/post/s1r1_acc", metrics.get("all/pre/s1r1_acc"))


if __name__ == "__main__":
    main()
