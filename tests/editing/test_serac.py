"""SERAC (methods/serac*.py): routing as trained, the wrapper's composition of the two models, flat
per-query cost in the memory size, and the method state / export rules.

The contract matrix (test_contract.py) covers restore, state and export round trips, sequential
commits and batches on the three fixture models.
"""

from __future__ import annotations

import copy

import pytest
import torch

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest, unwrap
from editlab.editing.loss import target_batch
from editlab.editing.meta_data import MetaDataOptions, meta_examples
from editlab.editing.methods.serac_model import SeracWrapper, cf_prefix_ids, prepend
from editlab.editing.methods.serac_train import Query, SeracTrainer, in_scope, queries, query_batch
from editlab.editing.trainable import EditorTraining
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder

STEPS = 500
"""Classifier steps of the routing test. 250 left 12.5% of the out-of-scope positions routed wrong (hard negatives
"other subject, same relation" sent to the stored edit of that relation: 0.875 < 0.95); 500 send all of them to
the base model."""


def _ctx(lm) -> EditContext:
    return EditContext(tokenizer=lm.tok, world_dir=lm.world.dir, model_id="test")


def _untrained(lm, **hparams):
    """SERAC with an untrained editor: the counterfactual model = a copy of the base, a fresh classifier."""
    method = registry.get_method("serac", hparams)
    base = lm.model
    torch.manual_seed(0)
    cls = method.new_classifier(base)
    method.load_editor({**{f"cf.{k}": v.clone() for k, v in base.state_dict().items()},
                        **{f"classifier.{k}": v for k, v in cls.state_dict().items()}})
    return method


def _route(wrapper: SeracWrapper, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = wrapper.base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return wrapper.route(out.hidden_states, mask)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_in_scope_positions_read_the_counterfactual_model_and_the_rest_the_base(tiny_lm, padding):
    """Each position's logits are the counterfactual model's on ``prefix + row`` if routed, else the base's."""
    model = copy.deepcopy(tiny_lm.model)
    method = _untrained(tiny_lm, init_bias=-2.0)
    ctx = _ctx(tiny_lm)
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:3]]
    wrapper = method.apply(model, reqs, ctx).model
    with torch.no_grad():  # a counterfactual model that differs from the base everywhere
        for p in wrapper.cf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    enc = PromptEncoder(tiny_lm.tok)
    others = [("", c["probes"][0]["prompt"]) for c in tiny_lm.world.cases[3:6]]
    rows = enc.prompts([("", r.prompt) for r in reqs] + others)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tiny_lm.tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if padding == "right" else slice(width - len(r), width)
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    route = _route(wrapper, ids, mask)
    assert (route[:3] >= 0).any() and (route[mask.bool()] < 0).any(), "the test needs both kinds of positions"
    with torch.no_grad():
        got = wrapper(input_ids=ids, attention_mask=mask).logits
        base = model(input_ids=ids, attention_mask=mask).logits
    for i, r in enumerate(rows):
        pos = mask[i].nonzero()[:, 0]
        routed = route[i, pos]
        if (routed >= 0).any():
            e = int(routed[routed >= 0][-1])
            cf_ids, cf_mask = prepend([wrapper.prefixes[e]], [r], tiny_lm.tok.pad_token_id)
            with torch.no_grad():
                cf = wrapper.cf(input_ids=cf_ids, attention_mask=cf_mask).logits[0, len(wrapper.prefixes[e]):]
            on = routed == e
            torch.testing.assert_close(got[i, pos[on]], cf[on], atol=1e-4, rtol=1e-4)
            assert torch.equal(got[i, pos[~on]], base[i, pos[~on]])
        else:
            assert torch.equal(got[i, pos], base[i, pos])


@pytest.mark.slow
def test_routes_in_scope_and_out_of_scope_queries_as_trained(tiny_lm):
    """Classifier trained on a toy memory of 8 edits (~50 s): the request prompt of every stored edit routes to
    that edit, and the read positions (last prompt token, answer tokens) of the equivalents route to their
    edit and those of the out-of-scope queries (locality facts; hard negatives: same subject other relation,
    other subject same relation) to the base model, each at >= 95% (an untrained classifier: about 60%)."""
    cases = tiny_lm.world.meta_cases[:8]
    examples = meta_examples(cases, MetaDataOptions(), seed=0)
    method = registry.get_method("serac", {"lr_cls": 1.0e-2, "c_loc": 0.0})
    module = method.training_module(copy.deepcopy(tiny_lm.model), tiny_lm.tok, EditorTraining())
    module.cf.requires_grad_(False)  # the classifier alone: routing is what is tested here
    opt = torch.optim.AdamW(module.classifier.parameters(), lr=method.lr_cls)
    torch.manual_seed(0)
    for _ in range(STEPS):
        module.losses(examples)["loss"].backward()
        opt.step()
        opt.zero_grad()
    method.load_editor(method.editor_state(module))
    wrapper = method.apply(tiny_lm.model, [EditRequest.from_case(c) for c in cases], _ctx(tiny_lm)).model
    qs = queries(examples)
    edit_of = {ex.request.prompt: i for i, ex in enumerate(examples)}
    batch = query_batch(PromptEncoder(tiny_lm.tok), qs)
    route = _route(wrapper, batch.ids, batch.mask)
    t = torch.arange(batch.ids.shape[1])
    right = {True: [], False: []}
    for i, q in enumerate(qs):
        read = (t >= batch.last_prompt[i]) & batch.mask[i].bool()
        want = edit_of.get(q.about, -1)  # a hard negative of one edit may be another stored edit's own fact
        right[want >= 0] += (route[i, read] == want).tolist()
        if q.prompt == examples[q.example].request.prompt:
            assert route[i, batch.last_prompt[i]] == q.example, q.prompt
    share = {k: sum(v) / len(v) for k, v in right.items()}
    assert share[True] >= 0.95 and share[False] >= 0.95, share


def test_per_query_cost_is_flat_in_the_memory_size(tiny_lm):
    """Memory of 10 vs 1000 edits: the memory is embedded once when stored; a query costs one base forward,
    one classifier embedding and at most one counterfactual pass over its own rows, whatever the memory."""
    world = tiny_lm.world
    objects = world.world["objects"]
    facts = [(c["subject"], c["relation"]) for c in world.cases + world.meta_cases]
    pool = [EditRequest(s, r, objects[i % len(objects)]) for i, (s, r) in enumerate(dict.fromkeys(facts))]
    assert len(pool) >= 1000
    enc = PromptEncoder(tiny_lm.tok)
    q = target_batch(enc, pool[:4] + [EditRequest.from_case(c) for c in world.cases[-4:]])
    costs = {}
    for size in (10, 1000):
        method = _untrained(tiny_lm)
        wrapper = method.apply(tiny_lm.model, pool[:size], _ctx(tiny_lm)).commit()
        assert wrapper.keys.shape[0] == size
        calls = {"base": 0, "classifier": 0, "cf": 0, "cf_rows": 0}

        def count(name, calls=calls):
            def hook(mod, args, kwargs):
                calls[name] += 1
                if name == "cf":
                    calls["cf_rows"] += kwargs["input_ids"].shape[0]
            return hook

        hooks = [wrapper.base.register_forward_pre_hook(count("base"), with_kwargs=True),
                 wrapper.classifier.mlp.register_forward_pre_hook(count("classifier"), with_kwargs=True),
                 wrapper.cf.register_forward_pre_hook(count("cf"), with_kwargs=True)]
        with torch.no_grad():
            wrapper(input_ids=q.ids, attention_mask=q.mask)
        for h in hooks:
            h.remove()
        costs[size] = calls
        assert calls["base"] == 1 and calls["classifier"] == 1 and calls["cf"] <= 1
        assert calls["cf_rows"] <= q.ids.shape[0]
    assert costs[10]["base"] == costs[1000]["base"] and costs[10]["classifier"] == costs[1000]["classifier"]


def test_memory_is_appended_per_edit_and_restore_returns_the_base(tiny_lm):
    method = _untrained(tiny_lm)
    ctx = _ctx(tiny_lm)
    model = tiny_lm.model
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:3]]
    handle = method.apply(model, reqs[:1], ctx)
    assert handle.restore() is model and method.keys is None  # restore stores nothing
    first = method.apply(model, reqs[:1], ctx).commit()
    keys1 = method.keys.clone()
    second = method.apply(first, reqs[1:], ctx).commit()
    assert unwrap(second) is model and method.keys.shape[0] == 3
    assert torch.equal(method.keys[:1], keys1)  # earlier embeddings are kept, not recomputed
    assert set(method.state_dict()) == {"keys", "prefix_ids", "prefix_len"}
    assert any(k.startswith("editor.cf.") for k in method.export_state(second))


def test_untrained_serac_is_one_clear_error(tiny_lm):
    method = registry.get_method("serac", {})
    with pytest.raises(EditlabError, match=r"train\.py task=editor method=serac"):
        method.apply(tiny_lm.model, [EditRequest.from_case(tiny_lm.world.cases[0])], _ctx(tiny_lm))
    with pytest.raises(EditlabError, match="threshold"):
        registry.get_method("serac", {"threshold": 1.5})
    with pytest.raises(EditlabError, match="scope='both' must be one of request or agent"):
        registry.get_method("serac", {"scope": "both"})


def test_meta_training_swaps_objects_for_alternatives_seeded_by_the_step(tiny_lm):
    examples = [ex for ex in meta_examples(tiny_lm.world.meta_cases[:80], MetaDataOptions(), seed=0)
                if ex.alternatives][:16]
    trainer = SeracTrainer(registry.get_method("serac", {"resample": 0.5}), tiny_lm.model, tiny_lm.tok)
    torch.manual_seed(3)
    first = trainer.swapped(examples)
    assert first == trainer.swapped(examples)  # same seed and step -> the same draw (a resume repeats it)
    changed = [a for a, b in zip(first, examples, strict=True) if a != b]
    assert 0 < len(changed) < len(examples)
    for new, old in zip(first, examples, strict=True):
        assert new.request.prompt == old.request.prompt and new.locality == old.locality
        assert new == old or new.request.target in old.alternatives
    torch.manual_seed(4)
    assert trainer.swapped(examples) != first  # another seed, another draw
    trainer.method.resample = 0.0
    assert trainer.swapped(examples) == examples
    trainer.method.resample = 1.0
    assert all(new.request.target in old.alternatives for new, old in zip(trainer.swapped(examples), examples,
                                                                          strict=True))


# --------------------------------------------------------------------------- scope: request | agent
def _queries_before_scope(examples, n_hard=2):
    """serac_train.queries as it was before ``scope`` (the reference ``scope="request"`` must reproduce)."""
    from editlab.vocab import prompt

    subjects = sorted({ex.request.subject for ex in examples})
    relations = sorted({ex.request.relation for ex in examples})
    out = []
    for i, ex in enumerate(examples):
        r = ex.request
        out += [Query(t.prompt, t.target, r.prompt, i, True) for t in ex.equivalents]
        out += [Query(t.prompt, t.target, t.prompt, i, False) for t in ex.locality]
        hard = [prompt(r.subject, x) for x in relations if x != r.relation][:n_hard]
        hard += [prompt(x, r.relation) for x in subjects if x != r.subject][:n_hard]
        out += [Query(h, "", h, i, False) for h in hard]
    return out


def _scope_batch(world):
    """A batch with changing and unchanged downstream facts, and subjects with several relations, whose
    downstream fact the request scope's batch hard negatives already name (so ``agent`` must take it out)."""
    examples = meta_examples(world.meta_cases[:120], MetaDataOptions(), seed=0)
    changing = [ex for ex in examples if ex.downstream_changes]
    stays = [ex for ex in examples if not ex.downstream_changes]
    batch = changing[:4] + stays[:4]
    relations = {ex.downstream.prompt.removeprefix(ex.subject + " ") for ex in batch}
    extra = [ex for ex in examples if ex.request.relation in relations and ex not in batch][:4]
    return batch + extra


def test_request_scope_is_the_original_serac(tiny_world):
    batch = _scope_batch(tiny_world)
    qs = queries(batch)
    assert qs == queries(batch, scope="request") == _queries_before_scope(batch)
    assert in_scope(qs, batch) == [[q.about == ex.request.prompt for ex in batch] for q in qs]


def test_agent_scope_trains_changing_downstream_facts_in_scope_and_unchanged_ones_as_hard_negatives(tiny_world):
    batch = _scope_batch(tiny_world)
    qs = queries(batch, scope="agent")
    scope = in_scope(qs, batch, "agent")
    before = _queries_before_scope(batch)
    named = 0  # changing downstream facts the request scope trains as hard negatives of their own edit
    for i, ex in enumerate(batch):
        down = ex.downstream.prompt
        own = [(q, scope[k][i]) for k, q in enumerate(qs) if q.example == i and q.prompt == down]
        if ex.downstream_changes:
            # in scope, one query per recorded object, weighted by the agent's posterior; not a hard negative
            assert {(q.target, q.weight) for q, _ in own} == set(zip(ex.downstream.objects, ex.downstream.probs,
                                                                     strict=True))
            assert all(q.positive and q.about == down and ins for q, ins in own)
            named += any(q.example == i and q.prompt == down and not q.target for q in before)
        else:  # a hard negative, out of scope of its own edit
            assert [(q.positive, q.target, ins) for q, ins in own] == [(False, "", False)]
        # the equivalents and locality facts are the request scope's
        assert [q for q in qs if q.example == i and q.target and q.prompt != down] == [
            q for q in before if q.example == i and q.target]
    assert sum(ex.downstream_changes for ex in batch) >= 2 and sum(not ex.downstream_changes for ex in batch) >= 4
    assert named >= 1


def test_agent_scope_counterfactual_loss_includes_the_downstream_answer(tiny_lm):
    """c_loc 0: the agent scope's counterfactual loss = (NLL of the equivalents + the posterior-weighted NLL of
    the changing downstream answers, with the edit prepended) / (number of equivalents + their weights); the
    request scope's is the equivalents' alone. Unswapped under ``agent``: the downstream answer belongs to the
    case's own object."""
    batch = _scope_batch(tiny_lm.world)[:6]
    losses = {}
    for scope in ("request", "agent"):
        trainer = SeracTrainer(registry.get_method("serac", {"c_loc": 0.0, "scope": scope, "resample": 1.0}),
                               tiny_lm.model, tiny_lm.tok)
        with torch.no_grad():
            losses[scope] = trainer.losses(batch)["cf_loss"]
        swapped = trainer.swapped(batch)
        assert all((a == b) == (scope == "agent" and b.downstream_changes) for a, b in zip(swapped, batch,
                                                                                       strict=True) if b.alternatives)

    def nll(qs):  # -log p_cf(answer tokens | BOS "s r o*." BOS query) per query, computed directly
        enc = PromptEncoder(tiny_lm.tok)
        prefixes = cf_prefix_ids(tiny_lm.tok, [ex.request for ex in batch])
        out = []
        for q in qs:
            p, a = enc.prompts([("", q.prompt)])[0], enc.objects([f"{q.target}."])[0]
            ids = torch.tensor([prefixes[q.example] + p + a])
            with torch.no_grad():
                logp = torch.log_softmax(trainer.cf(input_ids=ids).logits[0].float(), -1)
            start = len(prefixes[q.example]) + len(p)
            out.append(-sum(float(logp[t - 1, ids[0, t]]) for t in range(start, start + len(a))))
        return torch.tensor(out, dtype=torch.float64)

    eq = [q for q in queries(batch) if q.positive]
    down = [q for q in queries(batch, scope="agent") if q.positive and q.weight != 1.0]
    assert down and all(batch[q.example].downstream_changes for q in down)
    w = torch.tensor([q.weight for q in down], dtype=torch.float64)
    expected_request = nll(eq).sum() / len(eq)
    expected_agent = (nll(eq).sum() + (w * nll(down)).sum()) / (len(eq) + w.sum())
    assert float(losses["request"]) == pytest.approx(float(expected_request), rel=1e-4)
    assert float(losses["agent"]) == pytest.approx(float(expected_agent), rel=1e-4)


def test_request_scope_losses_ignore_the_downstream_fields(tiny_lm):
    """``scope: request`` reads nothing of ``MetaExample.downstream``: the same losses without it."""
    from dataclasses import replace

    batch = _scope_batch(tiny_lm.world)[:6]
    trainer = SeracTrainer(registry.get_method("serac", {}), tiny_lm.model, tiny_lm.tok)
    torch.manual_seed(0)
    with torch.no_grad():
        got = trainer.losses(batch)
        bare = trainer.losses([replace(ex, downstream=None, downstream_changes=False) for ex in batch])
    assert all(torch.equal(got[k], bare[k]) for k in got)


@pytest.mark.parametrize("scope", ["request", "agent"])
def test_short_meta_training_runs_under_both_scopes(tiny_lm, scope):
    from editlab.runs.train_editor import fit_editor

    method = registry.get_method("serac", {"scope": scope, "lr_cf": 1.0e-3, "lr_cls": 1.0e-2})
    training = EditorTraining(max_steps=2, batch_size=4, val_fraction=0.2, val_every=2, patience=None)
    state, metrics = fit_editor(method, copy.deepcopy(tiny_lm.model), tiny_lm.tok, tiny_lm.world.meta_cases[:80],
                                training, seed=0)
    assert metrics["steps"] == 2 and any(k.startswith("cf.") for k in state)
    assert ("val/downstream_success" in metrics) == (scope == "agent")


def test_an_agent_scope_editor_has_its_own_directory_and_train_command(tmp_path):
    """Both editors of a base model coexist: ``editors/serac`` (request) and ``editors/serac-agent``; edit.py finds
    each from ``method.hparams.scope`` and names the command that trains the missing one."""
    from editlab.runs.editors import default_editor_dir, resolve_editor

    ckpt = tmp_path / "run" / "model"
    fallback = {"data": "d", "model": "m", "seed": 0}
    for scope, name, extra in (("request", "serac", ""), ("agent", "serac-agent", " method.hparams.scope=agent")):
        method = registry.get_method("serac", {"scope": scope})
        assert default_editor_dir(ckpt, method.editor_name()) == tmp_path / "run" / "editors" / name
        command = f"python train.py task=editor method=serac{extra} data=d model=m seed=0"
        with pytest.raises(EditlabError, match=f"no trained editor at .*/editors/{name}; train it with: {command} "):
            resolve_editor(None, method, ckpt, "mid", fallback)
