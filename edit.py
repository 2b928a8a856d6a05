"""Editing entry point (Hydra). The story: compose config -> open world and checkpoint -> edit -> score -> write.

    python edit.py                                               # 200 single LoRA edits on the tiny model
    python edit.py method=lora edits.n=500                       # the paper's protocol
    python edit.py method=lora edits.mode=sequential edits.n=1000
    python edit.py -m method=lora,ft_m,ice                       # sweep: one run directory per job
    python edit.py -m method.hparams.lr=1e-4,1e-3 edits.n=50     # (named from its overrides; re-run = reuse)

Returns the run's ``objective`` (default: post-edit s1r1 generative accuracy; editlab.eval.objectives), the
number a Hydra sweeper such as optuna maximises (``python edit.py -m hparams_search=lora_optuna``). Errors the
user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from editlab.cli import check_launcher, run_cli
from editlab.errors import EditlabError
from editlab.utils.rundir import record_multirun_job, register_resolvers

register_resolvers()  # ${editlab.job_subdir:} in run_dir: one directory per multirun job


def edit(cfg: DictConfig) -> dict:
    """Validate the config and run the edits; returns the run's metrics."""
    from editlab.editing.registry import get_method
    from editlab.lm.checkpoint import trained_overrides
    from editlab.runs.config import EditRun, EditsConfig, MetricsConfig
    from editlab.runs.edit import edit_run
    from editlab.runs.hparams import with_base_hparams
    from editlab.utils.threads import apply_threads
    from editlab.utils.typed import from_dict
    from editlab.world.loading import World

    # parallel multirun jobs share the cores; a small model runs on one thread (utils/threads.py)
    apply_threads(cfg.threads, OmegaConf.select(cfg, "model.arch.hidden_size"))

    # conf/method/<name>.yaml, specialised by conf/method_model/tuned/<name>_<model>.yaml, then the command line
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    hparams = with_base_hparams(method_cfg.get("hparams") or {}, cfg.model.name, cfg.preset.name)  # propagate's base
    method = get_method(method_cfg["name"], hparams)
    edits = from_dict(EditsConfig, OmegaConf.to_container(cfg.edits, resolve=True), "edits")
    metrics = from_dict(MetricsConfig, OmegaConf.to_container(cfg.metrics, resolve=True), "metrics")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data.get("benchmark"):  # a community benchmark file on a Hugging Face model (runs/benchmark_edit.py)
        return _benchmark(cfg, data, method, edits)
    if cfg.model.name == "hf":
        raise EditlabError("model=hf edits benchmark files (data=counterfact|zsre|knowedit data.path=<file>); the "
                           "world's cases are edited on an editlab checkpoint: checkpoint=<dir> or model=<preset>")
    world = World.from_config(data, data["cache_dir"])
    checkpoint = Path(to_absolute_path(cfg.checkpoint))
    if not checkpoint.is_dir():
        found = trained_overrides(Path(cfg.paths.outputs) / "train" / data["name"])
        offer = f"; or edit a model trained already: {' | '.join(found)}" if found else ""
        raise EditlabError(f"no checkpoint at {checkpoint}; train one with: python train.py data={data['name']} "
                           f"model={cfg.model.name}{offer} (or pass checkpoint=<dir>)")
    return edit_run(EditRun(
        world=world,
        checkpoint=checkpoint,
        method=method,
        edits=edits,
        metrics=metrics,
        editor_path=Path(to_absolute_path(cfg.editor_path)) if cfg.editor_path else None,
        trainer=OmegaConf.to_container(cfg.trainer, resolve=True),
        **_run_settings(cfg),
    ))


def _run_settings(cfg: DictConfig) -> dict:
    """What every edit run takes from the run-level keys (where it writes, its seed and config, loggers, device,
    caches), the job recorded for ``evaluate.py sweep=<sweep dir>``."""
    stats = Path(to_absolute_path(cfg.stats.dataset)) if cfg.stats.dataset else None
    if stats is not None and not stats.exists():  # before the run directory is touched
        raise EditlabError(f"no text dataset at {stats}; give stats.dataset=<a .jsonl, .json, .parquet or .arrow file "
                           "with a 'text' column, or a datasets save_to_disk folder>")
    logger = instantiate(cfg.logger)
    record_multirun_job(Path(to_absolute_path(cfg.run_dir)))  # evaluate.py sweep=<sweep dir> finds the jobs
    return {"run_dir": Path(to_absolute_path(cfg.run_dir)), "seed": int(cfg.seed),
            "run_config": OmegaConf.to_container(cfg, resolve=True), "loggers": [logger] if logger is not None else [],
            "device": str(cfg.device), "progress": bool(cfg.progress), "overwrite": bool(cfg.overwrite),
            "cache_root": Path(cfg.paths.stats),
            "stats_dataset": stats}


def _benchmark(cfg: DictConfig, data: dict, method, edits) -> dict:
    """``data=counterfact|zsre|knowedit``: the file's requests on ``model.path`` (model=hf) or, by default, on the
    editlab checkpoint (a Hugging Face model directory with its tokenizer)."""
    from editlab.runs.benchmark_edit import BenchmarkData, BenchmarkRun, benchmark_run
    from editlab.runs.editors import benchmark_editor_dir, editor_dir_name

    if data.get("path") in (None, "???"):
        raise EditlabError(f"data={data['name']} reads a local {data['benchmark']} file: add data.path=<file> "
                           "(docs/benchmarks.md shows the format)")
    if cfg.model.name == "hf" and cfg.model.path in (None, "???"):
        raise EditlabError("model=hf needs model.path=<a Hugging Face model directory, or a hub id in the local cache>")
    options = {"target": data["target"]} if "target" in data else {}
    model_path = cfg.model.path if cfg.model.name == "hf" else to_absolute_path(cfg.checkpoint)
    editor = getattr(method, "base_method", method)  # where train.py task=editor data=<benchmark> writes it
    editor_path = (Path(to_absolute_path(cfg.editor_path)) if cfg.editor_path else benchmark_editor_dir(
        Path(cfg.paths.outputs), data["name"], OmegaConf.select(cfg, "model.run_name", default=cfg.model.name),
        editor_dir_name(editor, str(cfg.preset.tag))))
    return benchmark_run(BenchmarkRun(
        data=BenchmarkData(data["name"], data["benchmark"], Path(to_absolute_path(data["path"])), options,
                           int(data.get("generation_tokens") or 0),
                           Path(to_absolute_path(data["references"])) if data.get("references") else None),
        model_path=str(model_path),
        dtype=str(OmegaConf.select(cfg, "model.dtype", default="float32")),
        method=method,
        edits=edits,
        editor_path=editor_path,
        **_run_settings(cfg),
    ))


def print_benchmark(out: dict) -> float:
    """The headline of a benchmark run; returns its post-edit edit success (the number a sweeper maximises)."""
    post = out["summary"]["post"]
    reused = " (finished earlier with this config; overwrite=true redoes it)" if out.get("reused") else ""
    key = "rewrite_success" if out["benchmark"] == "counterfact" else "edit_succ"
    keys = (key, "paraphrase_success", "neighborhood_success", "score", "edit_succ_exact", "rephrase", "portability",
            "locality/nq agree", "fluency", "reference_score")
    parts = [f"{k} {post[k]:.3f}" for k in keys if post.get(k) is not None]
    print(f"results: {out['results']}{reused}\n{out['n']} {out['method']} edits ({out['mode']}) on {out['benchmark']}: "
          f"{', '.join(parts)}; median {out['median_edit_s'] * 1000:.0f} ms/edit")
    return float(post[key])


def check_method_args(argv: list[str]) -> None:
    """Unknown ``method=`` values fail here with the registry's "did you mean" line, not Hydra's page."""
    from editlab.editing.registry import method_class

    conf = Path(__file__).resolve().parent / "conf" / "method"
    for arg in argv:
        if arg.startswith("method="):
            for name in arg.split("=", 1)[1].split(","):  # a multirun sweep lists several
                if not (conf / f"{name}.yaml").is_file():
                    method_class(name)  # raises for an unregistered name
                    raise EditlabError(f"method {name} is registered but has no conf/method/{name}.yaml")


@hydra.main(config_path="conf", config_name="edit", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    out = run_cli(lambda: edit(cfg), "re-run the same command to resume")
    if "benchmark" in out:
        return print_benchmark(out)
    post = out["summary"]["subsets"]["all"]
    reused = " (finished earlier with this config; overwrite=true redoes it)" if out.get("reused") else ""
    print(f"results: {out['results']}{reused}\n{out['n']} {out['method']} edits ({out['mode']}): "
          f"post s1r1 acc {post['post/s1r1_acc']:.3f}, s1r2 {post['post/s1r2_acc']:.3f}, "
          f"s2r1 {post['post/s2r1_acc']:.3f}, s2r2 {post['post/s2r2_acc']:.3f}; edit success (exact) "
          f"{post['post/edit_exact']:.3f}; median {out['median_edit_s'] * 1000:.0f} ms/edit\n"
          f"report: python evaluate.py run={Path(out['results']).parent}")
    from editlab.eval.objectives import Objective
    from editlab.utils.typed import from_dict

    objective = from_dict(Objective, OmegaConf.to_container(cfg.objective, resolve=True), "objective")
    value = objective(out["summary"])
    print(f"objective {objective.name}: {value:.4f}")
    return value


if __name__ == "__main__":
    run_cli(lambda: (check_launcher(sys.argv[1:]), check_method_args(sys.argv[1:])))
    main()
