"""Every method on every small model preset, under both presets: what ``python edit.py model=<preset>
method=<method> preset=<paper|tuned>`` composes resolves its layers on that model's depth and edits two
requests (a random model of the preset's architecture and the tiny world's vocabulary; one optimisation step
per edit, a small covariance sample; trainable editors meta-trained for one step). A method default that names
an absolute layer of a deeper model fails here.

Only that the edit runs is checked (finite logits after it, a bit-exact restore); whether it succeeds is the
contract tests' business (test_contract.py), on trained models.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.trainable import EditorTraining, TrainableEditor, save_editor
from editlab.errors import EditlabError
from editlab.lm.presets import arch_from, build_model
from editlab.runs.hparams import method_hparams
from editlab.runs.train_editor import fit_editor
from editlab.vocab import PromptEncoder
from tests.conftest import world_schema

SMALL = ("mistral_tiny_demo", "mistral_tiny", "mistral_tiny_wide")
PRESETS = ("paper", "tuned")
FAST = {"steps": 1, "stats_tokens": 8192,  # 8192 > the widest preset's 2048 key dimensions (full-rank statistics)
        "max_subjects": 20}  # schema_propagate reads 20 subjects per relation
_MODELS: dict[str, torch.nn.Module] = {}


def _model(preset: str, tok) -> torch.nn.Module:
    """A random model of ``preset``'s architecture (seed 0), built once per session."""
    if preset not in _MODELS:
        from tests.test_configs import _compose

        arch = arch_from(dict(_compose("edit", [f"model={preset}"]).model.arch))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _MODELS[preset] = build_model(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id).eval()
    return _MODELS[preset]


def _cases() -> list:
    """Every (method, model preset, preset); the default suite runs ``make demo``'s model under the paper preset
    (whose layers are written for other depths), the rest is ``slow`` (make test-slow)."""
    return [pytest.param(n, m, p, id=f"{n}-{m}-{p}",
                         marks=() if (m, p) == ("mistral_tiny_demo", "paper") else pytest.mark.slow)
            for n in registry.available() for m in SMALL for p in PRESETS]


@pytest.mark.parametrize(("name", "model_preset", "preset"), _cases())
def test_method_edits_on_every_small_model_preset(name, model_preset, preset, tiny_lm, tmp_path):
    tok, world = tiny_lm.tok, tiny_lm.world
    base = _model(model_preset, tok)
    hp = method_hparams(name, model_preset, preset)
    # one optimisation step and a small covariance sample: this test checks that the composed values run on the
    # model (layers, modules, shapes), not what they achieve
    fields = {f.name for f in dataclasses.fields(registry.method_class(name))}
    try:
        method = registry.get_method(name, {**hp, **{k: v for k, v in FAST.items() if k in fields}})
    except EditlabError:  # a schedule tied to the step count (AdaLoRA's tinit/tfinal): the composed steps
        method = registry.get_method(name, {**hp, **{k: v for k, v in FAST.items() if k in fields and k != "steps"}})
    ctx = EditContext(tokenizer=tok, world_dir=world.dir, cache_dir=tmp_path / "stats", model_id=f"rand-{model_preset}",
                      schema=world_schema(world.dir))
    model = base
    if isinstance(method, TrainableEditor):
        training = EditorTraining(max_steps=1, batch_size=2, val_fraction=0.25, val_every=1)
        state, metrics = fit_editor(method, base, tok, world.meta_cases[:16], training, seed=0)
        path = save_editor(tmp_path / "editor", method, state, ctx.model_id, {}, metrics)
        ctx = dataclasses.replace(ctx, editor_path=path)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    method.prepare(model, ctx)
    reqs = [EditRequest.from_case(c) for c in world.cases[:2]]
    handles = [method.apply(model, reqs, ctx)] if method.supports_batch else [method.apply(model, reqs[:1], ctx)]
    ids = torch.tensor([PromptEncoder(tok).prompts([("", reqs[0].prompt)])[0]])
    with torch.no_grad():
        assert torch.isfinite(handles[0].model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).all()
    restored = handles[0].restore()
    assert all(torch.equal(v, before[k]) for k, v in restored.state_dict().items() if k in before)
