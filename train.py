"""Training entry point (Hydra). The story: compose config -> open the world -> pretrain -> export
(task=pretrain), or meta-train an editor on the pretrained model (task=editor method=<name>).

    python train.py                                                   # tiny world + mistral_tiny on CPU
    python train.py model=mistral_83m data=wikidata_synth trainer=gpu # the paper's run
    python train.py ckpt_path=last                                    # resume a killed run
    python train.py task=editor method=mend                           # meta-train an editor on that model
    python train.py task=editor method=mend ckpt_path=last            # resume a killed meta-training

Returns the generative accuracy (task=editor: the best val/edit_success), the metric a sweep optimises.
Errors the user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from editlab.cli import check_launcher, run_cli
from editlab.errors import EditlabError
from editlab.utils.rundir import register_resolvers

register_resolvers()  # ${editlab.job_subdir:} in run_dir: one directory per multirun job

TASKS = ("pretrain", "editor")


def train(cfg: DictConfig) -> dict:
    """Validate the config and run the task; returns its final metrics."""
    from editlab.lm.presets import arch_from, recipe_from
    from editlab.runs.pretrain import PretrainRun, pretrain
    from editlab.utils.threads import apply_threads
    from editlab.world.loading import World

    apply_threads(cfg.threads)  # parallel multirun jobs share the cores (utils/threads.py)

    if cfg.task not in TASKS:
        raise EditlabError(f"task={cfg.task} is not available; valid tasks: {', '.join(TASKS)}")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_accelerator(trainer_kwargs)  # before a world is built or a finished run compared
    if data.get("benchmark"):  # meta-train an editor on a benchmark file (runs/train_editor.py)
        if cfg.task != "editor":
            raise EditlabError(f"data={data['name']} is a benchmark file: it meta-trains editors (task=editor "
                               "method=mend model=hf model.path=<dir> data.path=<train file>); pretraining needs a "
                               "world")
        return _train_editor(cfg, None, trainer_kwargs, data)
    world = World.from_config(data, data["cache_dir"], build=cfg.task == "pretrain")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("devices", "num_nodes"):
        if key in trainer_kwargs and isinstance(trainer_kwargs[key], int) and trainer_kwargs[key] == 0:
            raise EditlabError(f"trainer.{key}=0 makes no sense; use a positive number (or -1 for all GPUs)")
    run_dir = Path(to_absolute_path(cfg.run_dir))
    if cfg.task == "editor":
        return _train_editor(cfg, world, trainer_kwargs)
    logger = instantiate(cfg.logger)
    return pretrain(PretrainRun(
        world=world,
        arch=arch_from(model_cfg["arch"]) if model_cfg.get("arch") else None,
        recipe=recipe_from(model_cfg["recipe"]),
        run_dir=run_dir,
        seed=int(cfg.seed),
        trainer_kwargs=trainer_kwargs,
        loggers=[logger] if logger is not None else [],
        run_config={k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "editor"},
        hf_path=model_cfg.get("path"),
        probe_facts=int(cfg.probe.n_facts),
        probe_every=int(cfg.probe.every_n_steps),
        ckpt_every=int(cfg.ckpt_every_n_steps),
        ckpt_path=cfg.ckpt_path,
        compile=bool(cfg.compile),
        max_steps=cfg.max_steps,
        progress=bool(cfg.progress),
        overwrite=bool(cfg.overwrite),
    ))


def check_accelerator(trainer_kwargs: dict) -> None:
    """A GPU recipe on a machine whose torch sees no CUDA GPU is one line naming both ways on, before anything is read
    or compared (Lightning would say "No supported gpu backend found!")."""
    import torch

    if str(trainer_kwargs.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise EditlabError(f"trainer.accelerator={trainer_kwargs['accelerator']} asks for a CUDA GPU, and torch "
                           f"{torch.__version__} sees none here: run it on a GPU machine (with a CUDA build of "
                           "torch), or drop trainer=gpu / trainer.accelerator=gpu to train on the CPU")


def _train_editor(cfg: DictConfig, world, trainer_kwargs: dict, benchmark: dict | None = None) -> dict:
    """task=editor: meta-train ``method`` on ``editor.checkpoint`` (runs/train_editor.py); the editor goes to
    ``editor.out`` or, by default, next to the checkpoint where edit.py looks for it (default_editor_dir)."""
    from editlab.editing.registry import get_method
    from editlab.editing.trainable import EditorTraining
    from editlab.runs.benchmark_edit import BenchmarkData
    from editlab.runs.editors import benchmark_editor_dir, default_editor_dir, editor_dir_name
    from editlab.runs.train_editor import EditorRun, train_editor, training_dir
    from editlab.utils.typed import from_dict

    if cfg.get("method") is None:
        raise EditlabError("task=editor needs method=<name> of a trainable editor (e.g. method=mend)")
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    ed = OmegaConf.to_container(cfg.editor, resolve=True)
    out, checkpoint = ed.pop("out"), Path(to_absolute_path(ed.pop("checkpoint")))
    method = get_method(method_cfg["name"], method_cfg.get("hparams"))
    # a method with nothing to train is refused by train_editor, with one line naming the trainable ones
    name = editor_dir_name(method, str(cfg.preset.tag) if cfg.get("preset") else "")  # preset=paper: <name>-paper
    data = None
    if benchmark is not None:  # the model: model.path (model=hf) or the editlab checkpoint, with its own tokenizer
        if benchmark.get("path") in (None, "???"):
            raise EditlabError(f"data={benchmark['name']} needs data.path=<its train file> (docs/benchmarks.md)")
        data = BenchmarkData(benchmark["name"], benchmark["benchmark"], Path(to_absolute_path(benchmark["path"])),
                             {"target": benchmark["target"]} if "target" in benchmark else {})
        if cfg.model.name == "hf":
            local = Path(cfg.model.path).expanduser().exists()
            checkpoint = Path(to_absolute_path(cfg.model.path)) if local else Path(cfg.model.path)  # or a hub id
        model_name = OmegaConf.select(cfg, "model.run_name", default=cfg.model.name)
        default = benchmark_editor_dir(Path(cfg.paths.outputs), benchmark["name"], model_name, name)
    else:
        default = default_editor_dir(checkpoint, name)
    out = Path(to_absolute_path(out)) if out else default
    training = from_dict(EditorTraining, ed, "editor")
    # the logs belong to the editor's training run, not to the pretraining run in run_dir
    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else None
    if logger_cfg:
        logger_cfg["save_dir"] = str(training_dir(out))
        if logger_cfg.get("name") and "wandb" in str(logger_cfg.get("_target_")):
            logger_cfg["name"] = f"{logger_cfg['name']}-{name}"
    logger = instantiate(logger_cfg) if logger_cfg else None
    return train_editor(EditorRun(world, checkpoint, method, out, int(cfg.seed), training,
                                  OmegaConf.to_container(cfg, resolve=True), trainer_kwargs, [logger] if logger else [],
                                  progress=bool(cfg.progress), overwrite=bool(cfg.overwrite), ckpt_path=cfg.ckpt_path,
                                  benchmark=data, dtype=str(OmegaConf.select(cfg, "model.dtype", default="float32"))))


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli(lambda: train(cfg), "resume with the same command and ckpt_path=last")
    if metrics and "editor" in metrics:
        reused = " (finished earlier with this config; overwrite=true retrains)" if metrics.get("reused") else ""
        print(f"editor: {metrics['editor']}{reused} (base model {metrics['base_model_id']}; best validation at step "
              f"{metrics.get('best_step')}: edit success {metrics.get('val/edit_success')}, locality "
              f"{metrics.get('val/locality')}); edit.py finds it (same model and data), else pass editor_path=<it>")
        return metrics.get("val/edit_success")
    if metrics:
        reused = " (finished earlier with this config; overwrite=true retrains)" if metrics.get("reused") else ""
        from editlab.lm.checkpoint import checkpoint_info

        digest = checkpoint_info(Path(metrics["checkpoint"])).get("weights_sha256", "not recorded")
        print(f"checkpoint: {metrics['checkpoint']}{reused}\ngenerative accuracy: {metrics['gen_acc']:.3f} "
              f"(paper protocol, {metrics['steps']} steps, {metrics['tokens'] / 1e6:.1f}M tokens); weights {digest}")
    return metrics.get("gen_acc")


if __name__ == "__main__":
    run_cli(lambda: check_launcher(sys.argv[1:]))
    main()
