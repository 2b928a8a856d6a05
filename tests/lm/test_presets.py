"""Model presets: the paper's 83M model, config composition, vocabulary from the world."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from editlab.errors import EditlabError
from editlab.lm.presets import arch_from, build_model, recipe_from

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _compose(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=False)


def test_mistral_83m_has_the_papers_size():
    cfg = _compose(["model=mistral_83m"])["model"]
    model = build_model(arch_from(cfg["arch"]), vocab_size=32000)
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads,
            c.num_hidden_layers) == (512, 2048, 8, 8, 12)
    assert not c.tie_word_embeddings and c.hidden_act == "silu" and c.rms_norm_eps == 1e-5
    n = sum(p.numel() for p in model.parameters())
    # 2 x 32000 x 512 (embeddings + head) + 12 x (4 x 512^2 + 3 x 512 x 2048 + 2 x 512) + 512
    assert n == 2 * 32000 * 512 + 12 * (4 * 512 * 512 + 3 * 512 * 2048 + 2 * 512) + 512
    assert 82.5e6 < n < 83.5e6
    assert recipe_from(cfg["recipe"]).lr == 5e-5


@pytest.mark.parametrize("overrides", [[], ["model=mistral_83m", "data=wikidata_synth", "trainer=gpu"],
                                       ["trainer=ddp"], ["trainer=fsdp"], ["logger=wandb"], ["model=hf"]])
def test_every_train_config_composes(overrides):
    cfg = _compose(overrides)
    assert cfg["task"] == "pretrain" and "recipe" in cfg["model"]


def test_vocab_pin_mismatch_is_an_error():
    arch = arch_from({**_compose([])["model"]["arch"], "vocab_size": 32000})
    with pytest.raises(EditlabError, match="vocab_size=32000 but the world's tokenizer has 2048"):
        build_model(arch, vocab_size=2048)


def test_bad_recipe_values():
    with pytest.raises(EditlabError, match="schedule"):
        recipe_from({"schedule": "exp"})
    with pytest.raises(EditlabError, match="lr must be > 0"):
        recipe_from({"lr": 0})
