"""Every config composes; per-model method values are Hydra-composed and lose to the command line; the
data presets keep their worlds; run directories are predictable (single run) or per job (multirun)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from editlab.editing import registry
from editlab.editing.weights import relative_layers
from editlab.world.config import world_config, world_hash
from tests.conftest import CONF, data_config

ROOT = Path(CONF)
PRIMARY = ("train", "edit", "evaluate", "world")
METHODS = sorted(p.stem for p in (ROOT / "method").glob("*.yaml"))
MODELS = sorted(p.stem for p in (ROOT / "model").glob("*.yaml"))
SPECIALISED = sorted((ROOT / "method_model" / "tuned").glob("*.yaml"))


def _compose(name: str, overrides: list[str] = (), hydra: bool = False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)


def _options(primary: str) -> list[list[str]]:
    """One override list per option of every config group the primary config selects."""
    groups = [g for g in ("data", "model", "method", "trainer", "logger") if f"- {g}:" in (ROOT / f"{primary}.yaml")
              .read_text()]
    return [[]] + [[f"{g}={p.stem}"] for g in groups for p in sorted((ROOT / g).glob("*.yaml"))
                   if not p.stem.endswith("_base")]


@pytest.mark.parametrize("primary", PRIMARY)
def test_every_config_composes_and_resolves(primary):
    for overrides in _options(primary):
        cfg = _compose(primary, overrides)
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # model=hf: path ??? is yours
        assert out["paths"]["outputs"] and "hydra" not in out, overrides
        text = (ROOT / f"{primary}.yaml").read_text()
        assert "\nhydra:" not in text and "- hydra: default" in text and "- paths: default" in text


@pytest.mark.parametrize("primary", PRIMARY)
def test_hydra_group_sets_no_chdir_no_output_subdir_and_stdout_logging(primary):
    h = _compose(primary, hydra=True).hydra
    assert h.job.chdir is False and h.output_subdir is None and h.run.dir == "."
    assert h.runtime.choices["hydra/job_logging"] == "stdout"


def _split(stem: str) -> tuple[str, str]:
    found = [(m, stem[len(m) + 1:]) for m in METHODS if stem.startswith(f"{m}_") and stem[len(m) + 1:] in MODELS]
    assert len(found) == 1, f"conf/method_model/tuned/{stem}.yaml must be named <method>_<model> of existing configs"
    return found[0]


@pytest.mark.parametrize("path", SPECIALISED, ids=[p.stem for p in SPECIALISED])
def test_method_model_specialises_the_method_and_builds_it(path):
    method, model = _split(path.stem)
    text = path.read_text()
    assert text.startswith("# @package method\n#") and f"method={method}" in text  # header: how values were chosen
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    inherited: dict = {}  # a preset may start from another model's preset of the same method (defaults list)
    for parent in own.pop("defaults", []):
        if parent != "_self_":
            parent = parent.removeprefix("tuned/")
            assert _split(parent)[0] == method, f"{path.name} may only extend a {method}_<model> preset"
            inherited.update(OmegaConf.to_container(OmegaConf.load(ROOT / "method_model" / "tuned" / f"{parent}.yaml"),
                                                    resolve=True)["hparams"])
    own_hp = own.get("hparams") or {}
    assert set(own) <= {"hparams", "train"} and (own_hp or inherited or own.get("train"))
    if "train" in own:  # an editor's training schedule: keys of train.py's editor node, which reads them
        editor = _compose("train", ["task=editor", f"method={method}", f"model={model}"]).editor
        assert {k: editor[k] for k in own["train"]} == own["train"]
    base = OmegaConf.to_container(OmegaConf.load(ROOT / "method" / f"{method}.yaml"), resolve=True)
    assert set(own_hp) | set(inherited) <= set(base["hparams"])  # overrides of known keys only
    cfg = _compose("edit", [f"method={method}", f"model={model}"])
    hp = OmegaConf.to_container(cfg.method.hparams, resolve=True)
    assert hp == {**base["hparams"], **inherited, **own_hp}
    assert registry.get_method(method, hp).name == method
    tuned = ROOT / "method_model" / "tuned"
    other = next(m for m in MODELS if m != model and not (tuned / f"{method}_{m}.yaml").exists())
    assert OmegaConf.to_container(_compose("edit", [f"method={method}", f"model={other}"]).method.hparams,
                                  resolve=True) == base["hparams"]  # another model: the method's own values


@pytest.mark.parametrize("method", METHODS)
def test_preset_paper_is_the_methods_own_values_on_every_model(method):
    """preset=paper takes conf/method/<method>.yaml alone (no per-model file), and its layers fit every model
    preset's depth; preset=tuned is the default and names nothing in run directories."""
    own = OmegaConf.to_container(OmegaConf.load(ROOT / "method" / f"{method}.yaml"), resolve=True)
    base, run_name = own["hparams"], own.get("run_name", method)  # a wrapper names its base: propagate-lora
    for model in MODELS:
        cfg = _compose("edit", [f"method={method}", f"model={model}", "preset=paper"])
        assert OmegaConf.to_container(cfg.method.hparams, resolve=True) == base
        assert f"/{run_name}-paper-single-" in cfg.run_dir.replace("${editlab.job_subdir:}", "")
        depth = (cfg.model.get("arch") or {}).get("num_hidden_layers")
        for key in ("layers", "layer"):
            spec = base.get(key)
            if depth is not None and spec is not None:
                for s in spec if isinstance(spec, list) else [spec]:
                    idx = relative_layers(s, depth) if isinstance(s, str) else [s]
                    assert all(-depth <= i < depth for i in idx), (method, model, s)
    tuned = _compose("edit", [f"method={method}"])
    assert tuned.preset.name == "tuned" and f"/{run_name}-single-" in tuned.run_dir.replace("${editlab.job_subdir:}",
                                                                                            "")


def test_command_line_beats_the_per_model_value():
    default = _compose("edit").method.hparams
    assert (default.lr, default.stop_loss) == (1e-3, 0.1)  # conf/method_model/tuned/lora_mistral_tiny.yaml
    cfg = _compose("edit", ["method.hparams.lr=1e-4"]).method.hparams
    assert (cfg.lr, cfg.stop_loss) == (1e-4, 0.1)


def test_no_test_only_values_in_product_configs():
    for path in ROOT.rglob("*.yaml"):
        assert "tiny_lm" not in path.read_text() and "presets:" not in path.read_text(), path


# the resolved data nodes of the two presets before they shared a base (the worlds must not change)
BEFORE = {
    "wikidata_synth": {
        "kg": {"source": "synthetic", "n_subjects": 75000, "n_objects": 38000, "p_extra_relation": 0.115,
               "downstream_share": 0.2, "zipf_exponent": 0.7, "mode_prob": [0.45, 0.8], "tail_size": 6,
               "min_objects_per_type": 8},
        "name": "wikidata_synth", "seed": 0, "cache_dir": ".cache/editlab/worlds", "max_facts": 100000,
        "generative": {"mgtp": 0.6, "distractors": "support"},
        "corpus": {"n_samples": 10, "n_or": 1, "n_and": 1, "n_not": 1, "resamples": 5, "doc_sentences": 10},
        "tokenizer": {"vocab_size": 32000, "train_docs": 200000},
        "agent": {"upstream_weighting": "posterior", "weight": "n_prime", "target": 0.95},
        "cases": {"n_cases": 5000, "meta_fraction": 0.1, "n_meta_cases": 2000, "max_candidates": 20,
                  "p_downstream_try": 0.8, "p_reinforce": 0.5},
    },
    "wikidata_synth_tiny": {
        "kg": {"source": "synthetic", "n_subjects": 800, "n_objects": 400, "p_extra_relation": 0.55,
               "downstream_share": 0.2, "zipf_exponent": 1.0, "mode_prob": [0.45, 0.8], "tail_size": 6,
               "min_objects_per_type": 8},
        "name": "wikidata_synth_tiny", "seed": 0, "cache_dir": ".cache/editlab/worlds", "max_facts": None,
        "generative": {"mgtp": 0.6, "distractors": "support"},
        "corpus": {"n_samples": 10, "n_or": 1, "n_and": 1, "n_not": 1, "resamples": 5, "doc_sentences": 10},
        "tokenizer": {"vocab_size": 2048, "train_docs": 20000},
        "agent": {"upstream_weighting": "posterior", "weight": "n_prime", "target": 0.95},
        "cases": {"n_cases": 1000, "meta_fraction": 0.4, "n_meta_cases": 800, "max_candidates": 20,
                  "p_downstream_try": 0.8, "p_reinforce": 0.5},
    },
}
HASHES = {"wikidata_synth": "fc45c9502af7", "wikidata_synth_tiny": "c7987513c380"}


@pytest.mark.parametrize("preset", sorted(BEFORE))
def test_data_presets_on_a_shared_base_keep_their_worlds(preset, monkeypatch):
    monkeypatch.delenv("EDITLAB_CACHE", raising=False)
    data = data_config(preset=preset)
    assert data == {**BEFORE[preset], "cache_dir": os.path.abspath(BEFORE[preset]["cache_dir"])}  # absolute once
    assert world_hash(world_config(data)) == HASHES[preset]
    assert "- wikidata_synth_base\n" in (ROOT / "data" / f"{preset}.yaml").read_text()


def test_paths_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("EDITLAB_OUTPUTS", "/o")
    monkeypatch.setenv("EDITLAB_CACHE", "/c")
    cfg = _compose("edit")
    assert cfg.run_dir.startswith("/o/edit/") and cfg.checkpoint.startswith("/o/train/")
    assert cfg.data.cache_dir == "/c/worlds"


def test_single_run_directory_is_predictable_and_names_the_model_seed(monkeypatch):
    monkeypatch.delenv("EDITLAB_OUTPUTS", raising=False)
    cfg = _compose("edit", ["model_seed=3", "method.hparams.lr=1e-4", "edits.n=7"])
    out = os.path.abspath("outputs")  # conf/paths/ makes the roots absolute, from the working directory
    assert cfg.run_dir == f"{out}/edit/wikidata_synth_tiny/mistral_tiny-s3/lora-single-n7-s0"
    assert cfg.checkpoint == f"{out}/train/wikidata_synth_tiny/mistral_tiny-s3/model"
    assert _compose("train", ["seed=2"]).run_dir == f"{out}/train/wikidata_synth_tiny/mistral_tiny-s2"


@contextmanager
def _multirun_job(cfg):
    """Hydra's state inside one job of a multirun (what the launcher sets before calling the task)."""
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize(("overrides", "subdir"), [
    (["method.hparams.lr=1e-4", "edits.n=5", "progress=false", "device=cpu"], "/method.hparams.lr=1e-4"),
    (["method=ft_m", "seed=1", "checkpoint=/a/b"], ""),  # a sweep over keys already in the path: the single-run dir
    (["data/kg=synthetic", "edits.trace=2"], "/data_kg=synthetic,edits.trace=2"),  # one directory, not two
])
def test_multirun_job_directory_is_named_from_its_overrides(monkeypatch, overrides, subdir):
    monkeypatch.delenv("EDITLAB_OUTPUTS", raising=False)
    single = _compose("edit", overrides).run_dir
    cfg = _compose("edit", overrides, hydra=True)
    with _multirun_job(cfg):
        assert cfg.run_dir == single + subdir


def test_multirun_job_directory_name_stays_short():
    cfg = _compose("edit", ["edits.split=" + "x" * 300], hydra=True)
    with _multirun_job(cfg):
        name = cfg.run_dir.rsplit("/", 1)[1]
    assert len(name) <= 200 and name.startswith("edits.split=xxx")


def test_methods_table_experiment_lists_every_registered_method():
    cfg = _compose("edit", ["experiment=methods_table"], hydra=True)
    listed = str(cfg.hydra.sweeper.params.method).split(",")
    assert sorted(listed) == sorted(registry.available()) and cfg.edits.n == 500
    params = cfg.hydra.sweeper.params
    assert str(params.preset).split(",") == ["paper", "tuned"] and len(str(params.seed).split(",")) >= 3


def test_sequential_locate_experiment_compares_memit_and_alphaedit_in_the_papers_setting():
    cfg = _compose("edit", ["experiment=sequential_locate"], hydra=True)
    assert str(cfg.hydra.sweeper.params.method).split(",") == ["memit", "alphaedit"]
    for method, key, value in (("memit", "mom2_update_weight", 1000.0), ("alphaedit", "alpha", 300.0)):
        job = _compose("edit", ["experiment=sequential_locate", f"method={method}"])
        assert job.method.hparams.shared_keys is False  # the experiment wins over the model preset
        assert job.method.hparams.fact_token == "subject_last"
        assert job.method.hparams[key] == value  # and keeps the rest of it
        assert (job.edits.mode, job.edits.n, job.edits.batch_size) == ("sequential", 1000, 100)


@pytest.mark.parametrize("primary", ["train", "edit"])
def test_paper_experiment_composes_the_paper_run(primary):
    cfg = _compose(primary, ["experiment=paper_table4"])
    assert cfg.data.name == "wikidata_synth" and cfg.model.name == "mistral_83m"
    assert cfg.model.recipe.token_budget == 1e9
    if primary == "edit":
        assert (cfg.method.name, cfg.edits.n, cfg.edits.weight) == ("lora", 5000, "n_prime")


def test_optuna_search_tunes_on_the_meta_split():
    cfg = _compose("edit", ["hparams_search=lora_optuna"], hydra=True)
    assert cfg.edits.split == "meta" and cfg.objective.name == "locality_at_success"
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.n_trials == 12
    assert set(cfg.hydra.sweeper.params) == {"method.hparams.lr", "method.hparams.steps", "method.hparams.stop_loss"}
