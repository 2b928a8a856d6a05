"""Where runs find trainable editors: the directory ``train.py task=editor`` writes an editor to, the one
``edit.py`` looks in, and the exact train command named when none is there.

The method contract (:mod:`editlab.editing.trainable`) only reads an editor from the path it is given;
choosing that path from a base checkpoint, a preset and a method belongs to the runs that train and use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from editlab.editing.base import EditMethod
from editlab.editing.trainable import EDITOR_INFO, TrainableEditor, read_editor
from editlab.errors import EditlabError


def editor_dir_name(method: EditMethod, preset_tag: str = "") -> str:
    """The directory name of ``method``'s editor under ``editors/``: :meth:`TrainableEditor.editor_name` (the
    method's name for a method with nothing to train), plus the preset's tag (conf/preset/: ``-paper``), because an
    editor meta-trained with the paper's values is another editor than the tuned one."""
    return (method.editor_name() if isinstance(method, TrainableEditor) else method.name) + preset_tag


def default_editor_dir(checkpoint: Path, method: str) -> Path:
    """Where ``train.py task=editor`` writes ``method``'s editor for the base model at ``checkpoint`` and where
    ``edit.py`` looks for it: ``<checkpoint's run dir>/editors/<method>`` (the one definition of that path;
    ``method`` is :meth:`TrainableEditor.editor_name`, e.g. ``serac`` or ``serac-agent``)."""
    return Path(checkpoint).parent / "editors" / method


def benchmark_editor_dir(outputs: Path, data: str, model: str, method: str) -> Path:
    """Where ``train.py task=editor data=<benchmark>`` writes ``method``'s editor for a model (``model``: its run name,
    ``hf-<dir name>``) and where ``edit.py data=<benchmark>`` looks: ``<outputs>/editors/<data>/<model>/<method>``
    (outside the model's own directory, which may be a read-only Hugging Face cache)."""
    return Path(outputs) / "editors" / data / model / method


def train_command(method: str, checkpoint: Path, fallback: dict, overrides: Sequence[str] = ()) -> str:
    """The exact ``python train.py task=editor ...`` that trains ``method``'s editor for ``checkpoint``.

    data / model / seed come from the checkpoint's ``run_config.yaml`` (the pretraining run that made it),
    else from ``fallback`` (``{"data": ..., "model": ..., "seed": ...}``, the edit run's config); ``overrides``
    (:meth:`TrainableEditor.train_overrides`) follow ``method=``;
    ``editor.checkpoint=`` is added when the checkpoint is not where that command's run writes its model.
    """
    import yaml

    cfg_path = Path(checkpoint) / "run_config.yaml"
    cfg = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
    data = (cfg.get("data") or {}).get("name") or fallback.get("data")
    model = (cfg.get("model") or {}).get("name") or fallback.get("model")
    seed = cfg.get("seed", fallback.get("seed"))
    extra = "".join(f" {o}" for o in overrides)
    cmd = f"python train.py task=editor method={method}{extra} data={data} model={model} seed={seed}"
    run_dir = cfg.get("run_dir")
    if not run_dir or Path(run_dir).resolve() != Path(checkpoint).resolve().parent:
        cmd += f" editor.checkpoint={checkpoint}"
    return cmd


def resolve_editor(editor_path: Path | None, method: TrainableEditor, checkpoint: Path, model_id: str,
                   fallback: dict) -> Path:
    """The editor directory ``edit.py`` uses: ``editor_path``, or :func:`default_editor_dir` of the checkpoint
    when unset; checked whole (method, base model, readable files) so that bad input fails before editing,
    with the exact train command (:func:`train_command`) in the error. ``fallback["preset"]`` (the run's
    ``preset`` node, conf/preset/) names the directory (:func:`editor_dir_name`, e.g. ``mend-paper``)."""
    preset = fallback.get("preset") or {"name": "tuned", "tag": ""}
    path = Path(editor_path) if editor_path is not None else default_editor_dir(checkpoint,
                                                                                editor_dir_name(method, preset["tag"]))
    overrides = method.train_overrides() + ([f"preset={preset['name']}"] if preset["name"] != "tuned" else [])
    command = train_command(method.name, checkpoint, fallback, overrides)
    if not (path / EDITOR_INFO).is_file():
        where = f"editor_path={path} holds no editor" if editor_path is not None else f"no trained editor at {path}"
        then = "" if editor_path is None else " (then leave editor_path unset: edit.py finds it)"
        raise EditlabError(f"method {method.name} needs a trained editor, but {where}; train it with: {command}{then}")
    read_editor(path, method.name, model_id, command)
    return path
