"""GRACE (editing/methods/grace.py): the codebook rules on hand-built keys, the positions a match replaces,
bit-exact behaviour outside every radius, edits also where the model is already right, and a stopped sequential
stream that resumes to the uninterrupted run's results (slow; the contract matrix covers the rest)."""

from __future__ import annotations

import copy
import signal

import pytest
import torch

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest, unwrap
from editlab.editing.methods.grace import EXPAND_MARGIN, Codebook, GraceWrapper
from editlab.errors import EditlabError
from editlab.vocab import PromptEncoder
from tests.editing.fixture_hparams import fixture_hparams


def _book() -> Codebook:
    return Codebook.empty(2, 3)


def test_codebook_adds_expands_and_splits_by_the_papers_rules():
    book, v = _book(), torch.zeros(3)
    # far from everything: a new entry with eps_init
    assert book.update(torch.tensor([0.0, 0.0]), [7], v, eps_init=1.0) == (0, "add")
    assert book.update(torch.tensor([3.0, 0.0]), [7], v, eps_init=1.0) == (1, "add")  # d = 3 > 1 + 1
    assert book.eps.tolist() == [1.0, 1.0]
    # same target, balls touch (d = 1.5 <= eps_init + eps_0 = 2) but outside eps_0: expand eps_0 to cover it
    assert book.update(torch.tensor([1.5, 0.0]), [7], v, eps_init=1.0) == (0, "expand")
    assert len(book) == 2 and book.eps[0].item() == pytest.approx(1.5 * (1 + EXPAND_MARGIN))
    # same target inside the radius: the entry serves it as is (its value is retrained), the radius stays
    assert book.update(torch.tensor([0.0, 0.5]), [7], v, eps_init=1.0) == (0, "expand")
    assert book.eps[0].item() == pytest.approx(1.5 * (1 + EXPAND_MARGIN))
    # another target near entry 1 (d = 1.2): split, both radii d / 2, a new entry at the query
    assert book.update(torch.tensor([3.0, 1.2]), [8], v, eps_init=1.0) == (2, "split")
    assert book.eps[1].item() == pytest.approx(0.6) and book.eps[2].item() == pytest.approx(0.6)
    assert book.targets == [[7], [7], [8]]
    # a split only shrinks: entry 1 (eps 0.6) against a query at d = 1.0 -> 0.5, never back up to d / 2 > eps
    assert book.update(torch.tensor([3.0, -1.0]), [9], v, eps_init=1.0) == (3, "split")
    assert book.eps[1].item() == pytest.approx(0.5) and book.eps[3].item() == pytest.approx(0.5)
    book.update(torch.tensor([3.0, -2.9]), [5], v, eps_init=1.0)  # d = 1.9 to entry 3 (eps 0.5): 1.9 <= 1.5? no
    assert book.targets[-1] == [5] and book.eps[-1].item() == 1.0 and book.eps[3].item() == pytest.approx(0.5)
    # the split radii do not overlap: the two keys are exactly d apart and their radii sum to d
    assert book.eps[1] + book.eps[2] <= (book.keys[1] - book.keys[2]).norm() + 1e-6


def test_lookup_replaces_the_matching_positions_by_the_nearest_entry():
    book = _book()
    book.update(torch.tensor([0.0, 0.0]), [1, 2], torch.full((3,), 5.0), eps_init=1.0)  # a two-token target
    book.update(torch.tensor([4.0, 0.0]), [3], torch.full((3,), 9.0), eps_init=1.0)
    far = [10.0, 10.0]
    x = torch.tensor([[far, [0.3, 0.0], far, far, [3.5, 0.0], far]])  # (1, T=6, 2): entry 0 at t=1, entry 1 at t=4
    expect = {"last": [1, 4], "target": [1, 2, 4], "all": [1, 2, 3, 4, 5]}
    for replacement, positions in expect.items():
        use, values = book.lookup(x, replacement)
        assert use[0, :, 0].nonzero().flatten().tolist() == positions, replacement
        assert values[0, 1].tolist() == [5.0] * 3 and values[0, 4].tolist() == [9.0] * 3
        if replacement == "all":
            assert values[0, 3].tolist() == [5.0] * 3 and values[0, 5].tolist() == [9.0] * 3
    assert book.lookup(torch.tensor([[far, [0.0, 1.01]]]), "target") is None  # outside every radius
    # the nearest key decides, even where a farther key's radius would hold the query
    book.eps[1] = 10.0
    assert book.lookup(torch.tensor([[[1.5, 0.0]]]), "last") is None


def test_state_round_trips_through_tensors():
    book = _book()
    book.update(torch.tensor([0.0, 0.0]), [1, 2], torch.ones(3), eps_init=1.0)
    book.update(torch.tensor([0.5, 0.0]), [4], torch.ones(3) * 2, eps_init=1.0)
    again = Codebook.from_state(book.to_state())
    assert again.targets == book.targets
    assert all(torch.equal(getattr(again, k), getattr(book, k)) for k in ("keys", "values", "eps"))
    with pytest.raises(EditlabError, match="GRACE state lacks"):
        Codebook.from_state({"keys": book.keys})


@pytest.mark.parametrize("bad", [{"eps_init": 0.0}, {"steps": 0}, {"value_init": "hot"}, {"replacement": "first"}])
def test_bad_hyper_parameters_are_one_clear_error(bad):
    with pytest.raises(EditlabError, match="method grace"):
        registry.get_method("grace", bad)


def _prompt_batch(tok, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = PromptEncoder(tok).prompts([("", p) for p in prompts])
    width = max(map(len, ids))
    return (torch.tensor([p + [tok.pad_token_id] * (width - len(p)) for p in ids]),
            torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in ids]))


def test_outside_every_radius_the_logits_are_bit_exact_and_right_answers_are_edited_too(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    ctx = EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_lm.world.dir, model_id="test")
    method = registry.get_method("grace", fixture_hparams("grace"))
    enc = PromptEncoder(tiny_lm.tok)
    cases = tiny_lm.world.cases[:40]
    # a request the model already answers is edited all the same (the gate is the run's: edits.skip_correct)
    from tests.editing.test_contract import Subject, hits
    sub = Subject("mistral", model, tiny_lm.tok, tiny_lm.world, tiny_lm.max_new_tokens, "test")
    reqs = [EditRequest.from_case(c) for c in cases]
    ok = hits(sub, model, reqs, "")
    right = next(r for r, h in zip(reqs, ok, strict=True) if h)
    wrong = next(r for r, h in zip(reqs, ok, strict=True) if not h)
    handle = method.apply(model, [right], ctx)
    assert "skipped" not in handle.info and handle.info["actions"] == ["add"] and handle.info["codebook"] == 1
    assert isinstance(handle.model, GraceWrapper) and unwrap(handle.model) is model
    assert hits(sub, handle.model, [right], "") == [True]  # still the answer, now served by the codebook
    assert handle.restore() is model and method.state_dict() == {}

    wrapped = method.apply(model, [wrong], ctx).commit()
    assert isinstance(wrapped, GraceWrapper) and unwrap(wrapped) is model and len(method.codebook) == 1
    # prompts of other cases whose every position lies outside the radius: bit-exact base logits
    name = method.layer_name(model)
    seen = {}
    hook = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0]))
    others = [c["probes"][0]["prompt"] for c in cases if c["subject"] != wrong.subject]
    ids, mask = _prompt_batch(tiny_lm.tok, others)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
    hook.remove()
    outside = [i for i in range(len(others)) if method.codebook.lookup(seen["x"][i : i + 1], "all") is None]
    assert len(outside) >= len(others) // 2
    with torch.no_grad():
        edited = wrapped(input_ids=ids[outside], attention_mask=mask[outside]).logits
    assert torch.equal(edited, base[outside])
    # while the edited prompt itself changes (its last token is the key)
    ids, mask = _prompt_batch(tiny_lm.tok, [wrong.prompt])
    with torch.no_grad():
        assert not torch.equal(wrapped(input_ids=ids, attention_mask=mask).logits,
                               model(input_ids=ids, attention_mask=mask).logits)
    assert enc.objects([wrong.target])[0] == method.codebook.targets[0]


@pytest.mark.slow
def test_grace_sequential_stream_stops_and_resumes_to_the_same_results(tiny_world, ckpt, tmp_path):
    """edit_run (sequential) in a subprocess: uninterrupted, stopped by SIGTERM, resumed; same results."""
    from safetensors.torch import load_file

    from editlab.runs.export import METHOD_STATE
    from tests.editing.test_edit_run import _records, _weights
    from tests.editing.test_edit_stop import _lines, _strip, _summary, _wait
    from tests.editing.test_toy_protocols import _run, _start, _trainer

    n = 8
    args = {"world": str(tiny_world.dir), "checkpoint": str(ckpt), "method": "grace",
            "hparams": {**fixture_hparams("grace"), "steps": 5}, "editor_path": None, "trainer": _trainer(),
            "edits": {"mode": "sequential", "n": n, "batch_size": 1, "eval_every": 2, "ckpt_every": 100},
            "metrics": {"n_locality": 5, "n_samples": 0}}
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    _run(args, full, tmp_path / "full.log")
    proc = _start(args, stopped, tmp_path / "stopped.log")
    _wait(proc, lambda: _lines(stopped / "results.jsonl.partial") >= 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143
    saved = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    done = len(saved["editlab"]["applied"])
    assert 2 <= done < n
    state = saved["editlab"]["method_state"]
    assert set(state) == {"keys", "values", "eps", "target_ids", "target_len"} and len(state["eps"]) >= 1
    assert all(k.startswith("model.base.") for k in saved["state_dict"])  # the wrapper was in place
    _run(args, stopped, tmp_path / "resume.log")
    assert _strip(_records(stopped)) == _strip(_records(full))
    assert _summary(stopped) == _summary(full)
    assert (stopped / "curve.jsonl").read_text() == (full / "curve.jsonl").read_text()
    assert torch.equal(_weights(stopped / "model"), _weights(ckpt))  # GRACE never changes a base weight
    a, b = (load_file(str(d / "model" / METHOD_STATE)) for d in (full, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
