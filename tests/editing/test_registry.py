"""Registry lookups and every conf/method/*.yaml: names agree, hparams build the method (per-model values:
tests/test_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from editlab.editing import registry
from editlab.errors import EditlabError

CONF = Path(__file__).resolve().parents[2] / "conf" / "method"
YAMLS = sorted(CONF.glob("*.yaml"))


def test_unknown_method_lists_valid_names_and_close_matches():
    with pytest.raises(EditlabError) as err:
        registry.get_method("lorra")
    msg = str(err.value)
    assert "did you mean lora" in msg
    assert all(name in msg for name in registry.available())
    assert "\n" not in msg


def test_bad_hyperparameter_key_is_a_user_error():
    with pytest.raises(EditlabError, match="rnk"):
        registry.get_method("lora", {"rnk": 2})
    with pytest.raises(EditlabError):
        registry.get_method("ft_l", {"norm_constraint": -1.0})
    with pytest.raises(EditlabError):
        registry.get_method("lora", {"objective": "last_token"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_hyperparameter_is_refused_naming_key_and_value(value):
    """lr=inf once passed every check and failed 50 lines later; lr=nan was refused without the value."""
    with pytest.raises(EditlabError) as err:
        registry.get_method("lora", {"lr": value})
    assert f"method lora.lr={value}" in str(err.value) and "not a finite number" in str(err.value)
    with pytest.raises(EditlabError, match="not a finite number"):
        registry.get_method("memit", {"layers": [1, value]})


def test_every_registered_method_has_a_config():
    assert {p.stem for p in YAMLS} >= set(registry.available())


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_method_yaml_loads_and_builds(path):
    text = path.read_text()
    assert text.startswith("#") and f"python edit.py method={path.stem}" in text  # header with launch command
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert cfg["name"] == path.stem and path.stem in registry.available()
    hparams = cfg.get("hparams") or {}
    method = registry.get_method(cfg["name"], hparams)
    assert method.name == path.stem
    assert "presets" not in cfg  # per-model values live in conf/method_model/, test-only ones in the tests
