"""The hyper-parameters ``edit.py`` gives a method: conf/method/<name>.yaml (the paper's values, ``preset=paper``),
specialised for ``model=<model>`` by conf/method_model/tuned/<name>_<model>.yaml under ``preset=tuned`` (the
default; Hydra's specializing-config pattern). The one place that composes them outside edit.py itself
(bench/edit.py, the analyses of evaluate.py), so a method is measured with the values it edits with.
"""

from __future__ import annotations

from pathlib import Path

from editlab.utils.confdir import conf_dir as default_conf_dir


def method_hparams(name: str, model: str | None, preset: str = "tuned", conf_dir: Path | None = None) -> dict:
    """``hparams`` of conf/method/<name>.yaml as edit.py composes them for ``model=<model> preset=<preset>``
    (with conf/method_model/<preset>/<name>_<model>.yaml where it exists); ``model=None``: the method's own
    (paper) values.

    Without a YAML file: {} (the class defaults). Inside a running Hydra app (evaluate.py) the app's
    config search path is used, which is ``conf/`` for every entry point of this repository. ``conf_dir``: the
    configs (default: :func:`editlab.utils.confdir.conf_dir`).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    conf_dir = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    path = conf_dir / "method" / f"{name}.yaml"
    if not path.is_file():
        return {}
    if model is None:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True).get("hparams") or {}
    overrides = [f"method={name}", f"model={model}", f"preset={preset}"]
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="edit", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="edit", overrides=overrides)
    return OmegaConf.to_container(cfg.method.hparams, resolve=True) or {}


def with_base_hparams(hparams: dict, model: str | None, preset: str = "tuned") -> dict:
    """A wrapper method's hyper-parameters (``base`` + ``base_hparams``, e.g. ``propagate``) with the base method's
    own values for ``model`` (:func:`method_hparams`) under the explicit ``base_hparams``; others unchanged."""
    if "base" not in hparams:
        return hparams
    own = method_hparams(str(hparams["base"]), model, preset)
    return {**hparams, "base_hparams": {**own, **(hparams.get("base_hparams") or {})}}
