"""The widened contract's pieces: wrapper scoring, step hooks as arguments, model ids, exports, trained editors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest, EditWrapper, unwrap
from editlab.editing.trainable import EditorTraining, save_editor, split_by_subject
from editlab.errors import EditlabError
from editlab.eval.scoring import greedy_continuations, object_scores
from editlab.lm.checkpoint import INFO, compute_model_id, export_checkpoint, load_checkpoint, model_id
from editlab.runs.export import METHOD_STATE, export_edited, load_edited
from editlab.runs.train_editor import EditorRun, train_editor
from editlab.vocab import PromptEncoder, hit_exact
from editlab.world.loading import World
from tests.editing import toys


@pytest.fixture(autouse=True)
def _toys():
    with toys.toys_registered():
        yield


def _ctx(lm, **kw) -> EditContext:
    return EditContext(tokenizer=lm.tok, world_dir=lm.world.dir, **kw)


def test_a_wrapper_is_scored_through_its_own_forward_and_generate(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    enc = PromptEncoder(tiny_lm.tok)
    req = EditRequest.from_case(tiny_lm.world.cases[3])
    handle = registry.get_method("toy_memory", {"boost": 30.0}).apply(model, [req], _ctx(tiny_lm))
    assert isinstance(handle.model, EditWrapper) and handle.base is model and unwrap(handle.model) is model
    prompts, objects = enc.prompts([("", req.prompt)]), enc.objects([req.target])
    base_lp, _ = object_scores(model, prompts, objects, tiny_lm.tok.pad_token_id)
    lp, acc = object_scores(handle.model, prompts, objects, tiny_lm.tok.pad_token_id)
    # what the wrapper's forward says, by hand: the boosted logits, teacher-forced
    ids = torch.tensor([prompts[0] + objects[0]])
    with torch.no_grad():
        logp = torch.log_softmax(handle.model(input_ids=ids).logits.float(), -1)[0]
    n = len(prompts[0])
    by_hand = sum(float(logp[n - 1 + k, t]) for k, t in enumerate(objects[0]))
    assert float(lp[0]) == pytest.approx(by_hand, abs=1e-4) and float(acc[0]) == 1.0
    assert float(base_lp[0]) < -1 and float(lp[0]) > -1e-3  # the scorer did not bypass the wrapper
    (cont,) = greedy_continuations(handle.model, tiny_lm.tok, prompts, tiny_lm.max_new_tokens)
    assert hit_exact(cont, req.target)
    assert handle.restore() is model


def test_identity_wrapper_decodes_like_hugging_face(tiny_lm):
    """EditWrapper.generate (no KV cache, positions from the mask) == HF generate on left-padded prompts."""
    enc = PromptEncoder(tiny_lm.tok)
    prompts = enc.prompts([("", c["probes"][0]["prompt"]) for c in tiny_lm.world.cases[:6]] + [("", "x")])
    ref, ref_lp = greedy_continuations(tiny_lm.model, tiny_lm.tok, prompts, 6, first_logp=True)
    got, got_lp = greedy_continuations(EditWrapper(tiny_lm.model), tiny_lm.tok, prompts, 6, first_logp=True)
    assert got == ref
    torch.testing.assert_close(got_lp, ref_lp, atol=1e-4, rtol=1e-4)


def test_step_hook_is_an_argument_not_context_state(tiny_lm):
    ctx = _ctx(tiny_lm)
    assert not hasattr(ctx, "on_step")
    calls = []
    method = registry.get_method("lora", {"lr": 1e-2, "steps": 3})
    handle = method.apply(copy.deepcopy(tiny_lm.model), [EditRequest.from_case(tiny_lm.world.cases[0])], ctx,
                          on_step=lambda step, m: calls.append((step, m)))
    assert [s for s, _ in calls] == [1, 2, 3] and all(m is not None for _, m in calls)
    handle.restore()


def test_model_id_is_recorded_and_recomputed_for_old_checkpoints(tiny_lm, tmp_path):
    run = {"model": {"name": "tiny", "arch": {"hidden_size": 64}}, "seed": 3}
    whash = tiny_lm.world.world["hash"]
    out = export_checkpoint(tiny_lm.model, tiny_lm.world.dir, tmp_path / "m", run, whash, {})
    mid = json.loads((out / INFO).read_text())["model_id"]
    assert mid == compute_model_id(whash, run["model"], 3) == model_id(out)
    assert compute_model_id(whash, run["model"], 4) != mid  # another training seed is another model
    info = json.loads((out / INFO).read_text())
    del info["model_id"]  # a checkpoint exported before model_id existed
    (out / INFO).write_text(json.dumps(info))
    assert model_id(out) == mid
    with pytest.raises(EditlabError, match="export_edited"):
        export_checkpoint(EditWrapper(tiny_lm.model), tiny_lm.world.dir, tmp_path / "w", run, whash, {})


def test_ice_sequential_export_keeps_its_memory(tiny_lm, tmp_path):
    model = copy.deepcopy(tiny_lm.model)
    ice = registry.get_method("ice", {})
    for c in tiny_lm.world.cases[:3]:
        handle = ice.apply(model, [EditRequest.from_case(c)], _ctx(tiny_lm))
        model = handle.commit()
    out = export_edited(model, ice, tiny_lm.world.dir, tmp_path / "ice", {"edits": 3}, tiny_lm.world.world["hash"],
                        {}, "base-id")
    info = json.loads((out / INFO).read_text())
    assert info["method"] == {"name": "ice", "hparams": {"template": "sentence"}} and info["method_state"]
    assert (out / METHOD_STATE).is_file() and info["base_model_id"] == "base-id" and info["model_id"] != "base-id"
    with pytest.raises(EditlabError, match="load_edited"):  # never loaded without its memory by accident
        load_checkpoint(out)
    loaded, again = load_edited(out, tiny_lm.world.world["hash"])
    assert again.context_prefix() == handle.prefix  # the three sentences
    enc = PromptEncoder(tiny_lm.tok)
    cases = tiny_lm.world.cases[:3]
    texts = [f"{c['subject']} {c['relation']}" for c in cases]
    prompts = [enc.prompts([(p, t) for t in texts]) for p in (handle.prefix, again.context_prefix())]
    objects = enc.objects([c["requested_object"] for c in cases])
    a = object_scores(model, prompts[0], objects, tiny_lm.tok.pad_token_id)[0]
    b = object_scores(loaded, prompts[1], objects, tiny_lm.tok.pad_token_id)[0]
    assert torch.equal(a, b)


def test_meta_split_is_seeded_and_disjoint_by_subject(tiny_lm):
    cases = tiny_lm.world.meta_cases
    train, val = split_by_subject(cases, 0.2, seed=0)
    assert len(train) + len(val) == len(cases) and train and val
    assert not {c["subject"] for c in train} & {c["subject"] for c in val}
    assert split_by_subject(cases, 0.2, seed=0) == (train, val) and split_by_subject(cases, 0.2, seed=1) != (train, val)
    assert not {c["subject"] for c in cases} & {c["subject"] for c in tiny_lm.world.cases}  # the world's promise


def test_editor_checkpoint_must_match_the_model(tiny_lm, tmp_path):
    method = toys.ToyLearnedStep()
    path = save_editor(tmp_path / "ed", method, {"log_step": torch.tensor([0.5])}, "model-a", {}, {})
    with pytest.raises(EditlabError, match=r"python train\.py task=editor method=toy_learned_step"):
        method.prepare(tiny_lm.model, _ctx(tiny_lm, editor_path=path, model_id="model-b"))
    with pytest.raises(EditlabError, match="needs a trained editor"):
        method.prepare(tiny_lm.model, _ctx(tiny_lm))
    method.prepare(tiny_lm.model, _ctx(tiny_lm, editor_path=path, model_id="model-a"))
    assert method.log_step == 0.5


def test_train_editor_on_a_checkpoint_records_its_model_id(tiny_lm, tmp_path):
    run = {"model": {"name": "tiny"}, "seed": 0}
    ckpt = export_checkpoint(tiny_lm.model, tiny_lm.world.dir, tmp_path / "model", run, tiny_lm.world.world["hash"],
                             {})
    world = World.open(tiny_lm.world.dir)
    training = EditorTraining(max_steps=3, batch_size=4, val_fraction=0.2, val_every=3)
    cfg = {"task": "editor", "method": "toy_learned_step"}
    run = EditorRun(world, ckpt, toys.ToyLearnedStep(), tmp_path / "editor", 0, training, cfg, progress=False)
    out = train_editor(run)
    info = json.loads((tmp_path / "editor" / "editor.json").read_text())
    assert info["base_model_id"] == model_id(ckpt) == out["base_model_id"] and out["steps"] == 3
    assert info["method"] == "toy_learned_step" and info["config"] == cfg and "val/edit_success" in info["metrics"]
    again = train_editor(run)
    assert again["reused"]
    with pytest.raises(EditlabError, match="nothing to train"):
        train_editor(EditorRun(world, ckpt, registry.get_method("lora"), tmp_path / "x", 0, training, cfg))


def test_train_py_dispatches_task_editor(tiny_world, tmp_path):
    """``python train.py task=editor`` reaches the editor trainer: a method with nothing to train is one error line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "EDITLAB_OUTPUTS": str(tmp_path)}
    res = subprocess.run([sys.executable, str(root / "train.py"), "task=editor", "method=lora",
                          f"data.cache_dir={tiny_world.dir.parent}"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "method lora has nothing to train" in res.stderr + res.stdout
