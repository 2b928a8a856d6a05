"""Training entry point (Hydra). The story: compose config -> open the world -> pretrain -> export
(task=pretrain), or meta-train an editor on the pretrained model (task=editor method=<name>).

    python train.py                                                   # tiny world + mistral_tiny on CPU
    python train.py model=mistral_83m data=wikidata_synth trainer=gpu # the paper's run
    python train.py ckpt_path=last                                    # resume a killed run

Returns the generative accuracy (the metric a sweep optimises). Errors the user can fix print one
line and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from editlab.cli import run_cli
from editlab.errors import EditlabError
from editlab.utils.rundir import register_resolvers

register_resolvers()  # ${editlab.job_subdir:} in run_dir: one directory per multirun job

TASKS = ("pretrain", "editor")


def train(cfg: DictConfig) -> dict:
    """Validate the config and run the task; returns its final metrics."""
    from editlab.lm.presets import arch_from, recipe_from
    from editlab.lm.pretrain import pretrain
    from editlab.utils.threads import apply_threads
    from editlab.world.loading import World

    apply_threads(cfg.threads)  # parallel multirun jobs share the cores (utils/threads.py)

    if cfg.task not in TASKS:
        raise EditlabError(f"task={cfg.task} is not available; valid tasks: {', '.join(TASKS)}")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    world = World.from_config(data, to_absolute_path(data["cache_dir"]))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in ("devices", "num_nodes"):
        if key in trainer_kwargs and isinstance(trainer_kwargs[key], int) and trainer_kwargs[key] == 0:
            raise EditlabError(f"trainer.{key}=0 makes no sense; use a positive number (or -1 for all GPUs)")
    run_dir = Path(to_absolute_path(cfg.run_dir))
    logger = instantiate(cfg.logger)
    if cfg.task == "editor":
        return _train_editor(cfg, world, run_dir, trainer_kwargs, [logger] if logger is not None else [])
    return pretrain(
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
    )


def _train_editor(cfg: DictConfig, world, run_dir: Path, trainer_kwargs: dict, loggers: list) -> dict:
    """task=editor: meta-train ``method`` on the checkpoint this config pretrains (editing/train_editor.py)."""
    from editlab.editing.registry import get_method
    from editlab.editing.train_editor import train_editor
    from editlab.editing.trainable import EditorTraining
    from editlab.utils.typed import from_dict

    if cfg.get("method") is None:
        raise EditlabError("task=editor needs method=<name> of a trainable editor (e.g. method=mend)")
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    ed = OmegaConf.to_container(cfg.editor, resolve=True)
    out, checkpoint = ed.pop("out"), Path(to_absolute_path(ed.pop("checkpoint")))
    out = Path(to_absolute_path(out)) if out else run_dir / "editors" / method_cfg["name"]
    method = get_method(method_cfg["name"], method_cfg.get("hparams"))
    return train_editor(world, checkpoint, method, out, int(cfg.seed), from_dict(EditorTraining, ed, "editor"),
                        OmegaConf.to_container(cfg, resolve=True), trainer_kwargs, loggers,
                        progress=bool(cfg.progress), overwrite=bool(cfg.overwrite))


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli(lambda: train(cfg), "resume with the same command and ckpt_path=last")
    if metrics and "editor" in metrics:
        print(f"editor: {metrics['editor']} (base model {metrics['base_model_id']}); edit with editor_path=<it>")
        return metrics.get("val/loss")
    if metrics:
        reused = " (finished earlier with this config; overwrite=true retrains)" if metrics.get("reused") else ""
        print(f"checkpoint: {metrics['checkpoint']}{reused}\ngenerative accuracy: {metrics['gen_acc']:.3f} "
              f"(paper protocol, {metrics['steps']} steps, {metrics['tokens'] / 1e6:.1f}M tokens)")
    return metrics.get("gen_acc")


if __name__ == "__main__":
    main()
