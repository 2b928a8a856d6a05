"""Evaluation entry point (Hydra): tables and plots of an edit run, or scores of a checkpoint.

    python evaluate.py run=outputs/edit/<run>          # <run>/report/: Table 4/5, editing metrics, Fig. 4, curves
    python evaluate.py checkpoint=<model dir>          # <model dir>/eval/: pre-edit scores on the world's cases
    python evaluate.py checkpoint=<dir> data=wikidata_synth n_cases=1000 out_dir=outputs/eval/base
    python evaluate.py sweep=outputs/multirun/edit/<date>_<time>   # one table of every job of a multirun
    python evaluate.py sweep=[<multirun dir>,<multirun dir>]       # one table of several
    python evaluate.py analysis=tracing                # causal tracing: heatmaps, best layer (conf/analysis/)
    python evaluate.py analysis=hase analysis.method=rome

The story: compose config -> (checkpoint mode: open the world, load the model) -> write the report
(editlab.runs.reports; every report directory is replaced atomically). Returns the headline s1r1 accuracy.
Errors the user can fix print one line and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from editlab.cli import run_cli
from editlab.errors import EditlabError
from editlab.utils.rundir import register_resolvers

register_resolvers()  # a method config composed for an analysis may take ${editlab.traced_layer:...}


def evaluate(cfg: DictConfig) -> dict:
    """Validate the config and run the mode it names; returns the report's location and headline numbers."""
    from editlab.runs.reports import evaluate_checkpoint, evaluate_run, evaluate_sweep
    from editlab.utils.hardware import resolve_device
    from editlab.utils.threads import apply_threads

    apply_threads(cfg.threads, OmegaConf.select(cfg, "model.arch.hidden_size"))
    device = resolve_device(str(cfg.device))
    if cfg.get("analysis") is not None:
        return analyse(cfg)
    if sum(cfg[k] is not None for k in ("run", "checkpoint", "sweep")) != 1:
        raise EditlabError("set exactly one of run=<edit run dir>, checkpoint=<model dir> or sweep=<multirun dir>")
    if cfg.sweep is not None:
        sweeps = [Path(to_absolute_path(str(s))) for s in (cfg.sweep if OmegaConf.is_list(cfg.sweep) else [cfg.sweep])]
        if not sweeps:
            raise EditlabError("sweep=[] names no directory; pass sweep=<multirun dir> or sweep=[<dir>,<dir>]")
        out = Path(to_absolute_path(str(cfg.out_dir))) if cfg.out_dir else sweeps[0] / "comparison"
        return evaluate_sweep(sweeps, out, out.parent / f"{out.name}_wandb" if cfg.wandb else None)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.run is not None:
        run_dir = Path(to_absolute_path(str(cfg.run)))
        out = Path(to_absolute_path(str(cfg.out_dir))) if cfg.out_dir else run_dir / "report"
        return evaluate_run(run_dir, out, data, int(cfg.max_panels))

    from editlab.lm.checkpoint import load_checkpoint
    from editlab.runs.reports import CheckpointEval
    from editlab.world.loading import World

    ckpt = Path(to_absolute_path(str(cfg.checkpoint)))
    world = World.from_config(data, data["cache_dir"])
    spec = CheckpointEval(world, ckpt, Path(to_absolute_path(str(cfg.out_dir))) if cfg.out_dir else ckpt / "eval",
                          None if cfg.n_cases is None else int(cfg.n_cases), int(cfg.batch_size), str(cfg.protocol))
    return evaluate_checkpoint(load_checkpoint(ckpt, world.hash).to(device), spec)


def analyse(cfg: DictConfig) -> dict:
    """``analysis=<name>``: compose the analysis and the hyper-parameters of the methods it edits with (as
    edit.py composes them for this ``model``), open the world and the checkpoint, run it."""
    from editlab.lm.checkpoint import load_checkpoint
    from editlab.runs.analysis import AnalysisRun, run_analysis
    from editlab.runs.hparams import method_hparams
    from editlab.world.loading import World

    if cfg.run is not None:
        raise EditlabError("analysis= analyses a checkpoint, not an edit run; drop run= (checkpoint= picks the model)")
    settings = OmegaConf.to_container(cfg.analysis, resolve=True)
    name, out_dir, default_ckpt = settings.pop("name"), settings.pop("out_dir"), settings.pop("checkpoint")
    out = Path(to_absolute_path(str(cfg.out_dir or out_dir)))  # top-level out_dir= / checkpoint= win
    ckpt = Path(to_absolute_path(str(cfg.checkpoint or default_ckpt)))
    if not ckpt.is_dir():
        raise EditlabError(f"no checkpoint at {ckpt}; train one with: python train.py data={cfg.data.name} "
                           f"model={cfg.model.name} (or pass checkpoint=<dir>)")
    names = list(settings.get("methods") or []) + ([settings["method"]] if settings.get("method") else [])
    hparams = {m: method_hparams(m, str(cfg.model.name)) for m in names}
    data = OmegaConf.to_container(cfg.data, resolve=True)
    world = World.from_config(data, data["cache_dir"])
    run = AnalysisRun(name, settings, world, ckpt, out, hparams, Path(cfg.paths.stats),
                      bool(cfg.progress))
    return run_analysis(load_checkpoint(ckpt, world.hash), run)


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli(lambda: evaluate(cfg), "re-run the same command")
    if cfg.get("analysis") is None and cfg.sweep is not None:
        print(f"report: {metrics['report']} ({metrics['n']} runs, {metrics['setups']} setups, "
              f"{metrics['missing']} missing; setups differ in {', '.join(metrics['keys'])})")
        return None
    print(f"report: {metrics['report']} ({metrics['n']} {metrics.get('unit', 'cases')})")
    return metrics.get("all/post/s1r1_acc", metrics.get("all/pre/s1r1_acc"))


if __name__ == "__main__":
    main()
