"""Reports of evaluate.py: the tables and plots of an edit run, and the pre-edit scores of a checkpoint.

Every report directory is written into a staging sibling and renamed into place (:func:`publish`), so a
failed or killed report leaves the previous one (or nothing), never a half-written directory. Plain typed
arguments only: evaluate.py composes the config, opens the world and loads the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from editlab.errors import EditlabError
from editlab.eval import compare, plots, propagation
from editlab.eval.probes import max_object_tokens, score_cases
from editlab.eval.records import read_records
from editlab.eval.report import editing_markdown, table4_markdown, table5_markdown, tidy_csv
from editlab.eval.summary import summarize
from editlab.utils.atomic import publish
from editlab.utils.csvlog import log_files, read_csv_log
from editlab.utils.jsonio import dumps, read_json, read_jsonl
from editlab.utils.rundir import read_yaml
from editlab.vocab import PromptEncoder
from editlab.world.loading import World


def write_tables(directory: Path, summary: dict, meta: dict) -> None:
    """Table 4 + Table 5 (markdown), the tidy CSV of every number, and the editing-metrics table."""
    (directory / "table4.md").write_text(table4_markdown(summary, meta) + "\n" + table5_markdown(summary, meta))
    (directory / "table4.csv").write_text(tidy_csv(summary))
    (directory / "editing.md").write_text(editing_markdown(summary, meta))


def training_loss(csv_path: Path) -> list[tuple[float, float]]:
    """(tokens, train/loss) pairs of a pretraining run's CSV log (Lightning CSVLogger), if there is one; with the
    parts a resumed run kept beside ``csv_path`` (:func:`~editlab.utils.csvlog.log_files`)."""
    return [(p["train/tokens"], p["train/loss"]) for p in read_csv_log(*log_files(Path(csv_path).parent))
            if "train/loss" in p and "train/tokens" in p]


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
    has_metrics = (run_dir / "metrics.json").is_file()
    metrics = read_json(run_dir / "metrics.json", "re-run edit.py", "edit run metrics") if has_metrics else {}
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


@dataclass(frozen=True)
class CheckpointEval:
    """What ``python evaluate.py checkpoint=<dir>`` scores, built once from its config.

    Attributes:
        world: the opened world whose evaluation cases are scored.
        checkpoint: the model's checkpoint directory (its run's ``metrics.json`` curve gives Fig. 3).
        out: the report directory (replaced atomically).
        n_cases: the first ``n_cases`` evaluation cases (``None``: all of them).
        batch_size: prompts per scoring batch.
        protocol: the hit rule of the tables, ``paper`` (substring) or ``exact``.
    """

    world: World
    checkpoint: Path
    out: Path
    n_cases: int | None = None
    batch_size: int = 256
    protocol: str = "paper"

    def __post_init__(self) -> None:
        if self.n_cases is not None and self.n_cases < 1:
            raise EditlabError(f"n_cases={self.n_cases} must be positive (or null for all cases)")
        if self.batch_size < 1:
            raise EditlabError(f"batch_size={self.batch_size} must be positive")
        if self.protocol not in ("paper", "exact"):
            raise EditlabError(f"protocol={self.protocol} must be paper or exact")


def evaluate_checkpoint(model: torch.nn.Module, spec: CheckpointEval) -> dict:
    """Score ``model`` (loaded from ``spec.checkpoint``, on the device it is on) on the world's evaluation cases
    before any edit (Table 4's "pre" rows); plot the pretraining curve (Fig. 3) when the checkpoint's run recorded
    one."""
    from transformers import PreTrainedTokenizerFast

    world, checkpoint, protocol = spec.world, spec.checkpoint, spec.protocol
    model = model.eval()
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    cases = world.cases("eval")[:spec.n_cases]
    scores = score_cases(model, PromptEncoder(tok), cases, max_object_tokens(tok, world.info["objects"]),
                         batch_size=spec.batch_size)
    records = [{"case_id": c["case_id"], "index": i, "pre": s.to_json()}
               for i, (c, s) in enumerate(zip(cases, scores, strict=True))]
    summary = summarize({c["case_id"]: c for c in cases}, records, protocol=protocol)
    train_metrics = checkpoint.parent / "metrics.json"
    curve = (read_json(train_metrics, "re-run train.py", "pretraining metrics").get("curve")
             if train_metrics.is_file() else None)

    def write(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(dumps({"checkpoint": str(checkpoint), "world_hash": world.hash,
                                                 "n": len(cases), "protocol": protocol, "summary": summary},
                                                indent=1, sort_keys=True))
        (tmp / "results.jsonl").write_text("".join(dumps(r) + "\n" for r in records))
        write_tables(tmp, summary, {"method": "none (checkpoint)", "mode": None})
        if curve:
            plots.save(plots.training_curve(curve, training_loss(checkpoint.parent / "csv" / "metrics.csv")),
                       tmp / "fig3_training.png")

    publish(spec.out, write)
    return {"report": str(spec.out), "n": len(cases), **{f"all/{k}": v for k, v in summary["subsets"]["all"].items()}}


def evaluate_sweep(directories: Path | list[Path], out: Path, wandb_dir: Path | None = None) -> dict:
    """The comparison of every run of one or more multiruns (or folders of runs): Markdown, CSV and plots in ``out``.

    Args:
        directories: multirun records (``<outputs>/multirun/edit/<date>_<time>``, whose ``jobs/`` lists its runs)
            or directories holding finished edit runs; several are one table (a sweep extended by a later one).
        out: the report directory to (re)place (``comparison.md``, ``comparison.csv``, ``generations.md``,
            ``propagation.md``, ``propagation.png``, ``success_locality.png``, ``bars_<group>.png``).
        wandb_dir: when set, also log the table as a W&B table (offline unless logged in) under this directory.
    """
    runs, missing = [], []
    for directory in [directories] if isinstance(directories, Path) else directories:
        found, lost = compare.find_runs(directory)
        runs += [r for r in found if r.path not in {q.path for q in runs}]
        missing += lost
    comp = compare.compare(runs, missing)
    labels = [compare.setup_label(row, comp.keys) for row in comp.rows]

    generations = _generations(runs, comp.keys)
    prop = propagation.propagation_rows(runs, comp.keys, _n_facts(runs))

    def write(tmp: Path) -> None:
        (tmp / "comparison.md").write_text(compare.comparison_markdown(comp))
        (tmp / "propagation.md").write_text(propagation.propagation_markdown(prop))
        plots.save(plots.propagation_scatter(prop), tmp / "propagation.png")
        if generations:
            (tmp / "generations.md").write_text(generations)
        (tmp / "comparison.csv").write_text(compare.comparison_csv(comp))
        points = [(lab, row["edit success"][0], row["locality agree"][0], row["edit success"][1],
                   row["locality agree"][1]) for lab, row in zip(labels, comp.rows, strict=True)
                  if row["edit success"][0] is not None and row["locality agree"][0] is not None]
        if points:
            plots.save(plots.success_locality(points), tmp / "success_locality.png")
        for group in dict.fromkeys(g for _, _, g, _ in compare.METRICS):
            cols = [c for c, _, g, _ in compare.METRICS if g == group]
            plots.save(plots.metric_bars(labels, cols, [[row[c] for c in cols] for row in comp.rows], group),
                       tmp / f"bars_{group}.png")

    publish(out, write)
    if wandb_dir is not None:
        _log_wandb_table(comp, labels, wandb_dir)
    return {"report": str(out), "n": len(runs), "setups": len(comp.rows), "missing": len(missing),
            "keys": comp.keys}


def _n_facts(runs: list[compare.Run]) -> dict[Path, int | None]:
    """Per run, the number of facts of its world's knowledge graph (the propagation report's estimate of the facts an
    edit changed), None where the run records no world or its world is not built."""
    sizes: dict[str, int | None] = {}
    out: dict[Path, int | None] = {}
    for r in runs:
        data = read_yaml(r.path / "run_config.yaml").get("data")
        if not data:
            out[r.path] = None
            continue
        key = repr(sorted(data.items()))
        if key not in sizes:
            try:
                sizes[key] = len(World.from_config(data, data["cache_dir"]).facts)
            except EditlabError:
                sizes[key] = None
        out[r.path] = sizes[key]
    return out


def _generations(runs: list[compare.Run], keys: list[str], n: int = 3) -> str:
    """generations.md of a sweep (eval/generations.py): one row per setup (its first run, e.g. seed 0), the
    records beside the world's cases; "" when no run records its world."""
    from editlab.eval.generations import generations_markdown

    first: dict[str, compare.Run] = {}
    for r in runs:
        label = compare.setup_label({k: r.config.get(k, "<unset>") for k in keys}, keys)
        if (r.path / "results.jsonl").is_file():
            first.setdefault(label, r)
    lead = next(iter(first.values()), None)
    data = read_yaml(lead.path / "run_config.yaml").get("data") if lead else None
    if not data:
        return ""
    world = World.from_config(data, data["cache_dir"])
    cases = {c["case_id"]: c for split in ("eval", "meta") for c in world.cases(split)}
    protocol = str(lead.config.get("metrics.protocol", "paper"))
    return generations_markdown(list(first), [read_records(r.path / "results.jsonl") for r in first.values()],
                                cases, protocol, n)


def _log_wandb_table(comp: compare.Comparison, labels: list[str], save_dir: Path) -> None:
    """The comparison as a ``wandb.Table`` (means; offline unless the user is logged in)."""
    from editlab.utils.loggers import wandb_logger

    logger = wandb_logger(str(save_dir), name="comparison")
    columns = ["setup", *comp.keys, "seeds", *(c for c, *_ in compare.METRICS)]
    rows = [[lab, *(str(row[k]) for k in comp.keys), row["seeds"], *(row[c][0] for c, *_ in compare.METRICS)]
            for lab, row in zip(labels, comp.rows, strict=True)]
    logger.log_table("comparison", columns=columns, data=rows)
    logger.experiment.finish()
