"""Method-specific checks: the target loss by hand, the shared early-stopping rule of fit, LoRA's unload/merge
and decay groups, FT-L's clamp."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.loss import TargetBatch, fit, reduce_nll, request_nll, stop_nll, target_batch, target_nll
from editlab.editing.methods.lora import adapter_param_groups
from editlab.editing.weights import linear_weight, module_names, relative_layers, resolve_layers
from editlab.errors import EditlabError
from editlab.eval.scoring import encode_pairs
from editlab.vocab import PromptEncoder


class Bigram(nn.Module):
    """Toy LM: the logits at position t depend only on token t (a V x V table)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


def _toy() -> tuple[Bigram, TargetBatch]:
    torch.manual_seed(0)
    model = Bigram(torch.randn(6, 6))
    # row 0: BOS=1, prompt [3], object [4, 5]; row 1: BOS=1, prompt [2, 3], object [5], padded with 0
    ids = torch.tensor([[1, 3, 4, 5], [1, 2, 3, 5]])
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
    return model, TargetBatch(ids, torch.ones_like(ids), target, torch.tensor([1, 2]))


def _logp(table: torch.Tensor, prev: int, nxt: int) -> float:
    row = table[prev].tolist()
    return row[nxt] - math.log(sum(math.exp(x) for x in row))


def test_teacher_forced_loss_matches_hand_computation():
    model, batch = _toy()
    t = model.table.detach()
    row0 = -(_logp(t, 3, 4) + _logp(t, 4, 5))  # -log p(4 | .. 3) - log p(5 | .. 3 4)
    row1 = -_logp(t, 3, 5)
    assert target_nll(model, batch).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_last_position_objective_reads_every_target_from_the_prompt_end():
    model, batch = _toy()
    t = model.table.detach()
    row0 = -(_logp(t, 3, 4) + _logp(t, 3, 5))  # both object tokens predicted after the prompt's last token
    row1 = -_logp(t, 3, 5)
    last = target_nll(model, batch, "last_position").item()
    assert last == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert last != pytest.approx(target_nll(model, batch).item(), rel=1e-3)
    with pytest.raises(EditlabError):
        target_nll(model, batch, "last_token")


def _peaked(logit: dict[tuple[int, int], float]) -> Bigram:
    """A bigram table of zeros with the given (prev, next) logits: -log p(next | prev) = log(1 + 5 exp(-logit))."""
    table = torch.zeros(6, 6)
    for (a, b), v in logit.items():
        table[a, b] = v
    return Bigram(table)


def _nll(logit: float) -> float:
    return math.log1p(5 * math.exp(-logit))


# row 0: BOS=1, prompt [3], a two-token object [4, 5]; row 1: BOS=1, prompt [0], object [2]
_IDS, _TGT = torch.tensor([[1, 3, 4, 5], [1, 0, 2, 0]]), torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)


def _rows(*rows: int) -> TargetBatch:
    ids, tgt = _IDS[list(rows)], _TGT[list(rows)]
    return TargetBatch(ids, torch.ones_like(ids), tgt, torch.tensor([1] * len(rows)))


def _fit(model: Bigram, batch: TargetBatch, stop_loss: float) -> dict:
    return fit(model, batch, [model.table], torch.optim.SGD([model.table], lr=1e-3), 3, stop_loss=stop_loss)


def test_stop_quantity_is_each_requests_nll_per_object_token():
    model, batch = _toy()
    per_request = request_nll(model, batch)
    assert stop_nll(per_request, batch).tolist() == pytest.approx([per_request[0].item() / 2, per_request[1].item()])
    assert per_request.mean().item() == pytest.approx(target_nll(model, batch).item())


def test_loss_reductions_scale_each_request_by_its_own_token_count():
    """sum: -log p(o*|s r); mean: per object token; mean_with_prompt: over the prompt and object tokens, BOS not
    counted (Hase et al.'s LoRA code). Row 0: prompt [3], object [4, 5]; row 1: prompt [2, 3], object [5]."""
    model, batch = _toy()
    per_request = request_nll(model, batch)
    r0, r1 = per_request.tolist()
    assert torch.equal(reduce_nll(per_request, batch, "sum"), per_request)
    assert reduce_nll(per_request, batch, "mean").tolist() == pytest.approx([r0 / 2, r1])
    assert reduce_nll(per_request, batch, "mean_with_prompt").tolist() == pytest.approx([r0 / 3, r1 / 3])
    assert target_nll(model, batch, reduction="mean").item() == pytest.approx((r0 / 2 + r1) / 2, rel=1e-6)
    with pytest.raises(EditlabError, match="reduction"):
        reduce_nll(per_request, batch, "avg")
    # fit minimises and reports the reduced loss; its stop rule stays the NLL per object token
    model = _peaked({(3, 4): 4.4, (4, 5): 4.4})
    done = fit(model, _rows(0), [model.table], torch.optim.SGD([model.table], lr=1e-3), 3, stop_loss=0.1,
               reduction="mean_with_prompt")
    assert done["steps"] == 0 and done["loss_initial"] == pytest.approx(2 * _nll(4.4) / 3, rel=1e-5)


def test_each_fine_tuner_defaults_to_its_reference_codes_loss_reduction():
    assert registry.get_method("lora").loss_reduction == "mean_with_prompt"  # Hase et al.'s main.py
    assert all(registry.get_method(m).loss_reduction == "mean" for m in ("adalora", "ft_l", "ft_m"))
    for m in ("lora", "ft_m"):
        with pytest.raises(EditlabError, match="loss_reduction"):
            registry.get_method(m, {"loss_reduction": "avg"})


def test_fit_stops_on_the_per_token_nll_of_every_request():
    # a two-token object at 0.0596 per token: its summed NLL (0.119) is above stop_loss 0.1, it is done
    model = _peaked({(3, 4): 4.4, (4, 5): 4.4, (0, 2): 3.67})
    done = _fit(model, _rows(0), 0.1)
    assert done["steps"] == 0 and done["loss_initial"] == pytest.approx(2 * _nll(4.4), rel=1e-5)
    assert done["loss_initial"] > 0.1
    # a request at 0.12 per token is not done, so a batch holding both keeps going, although the mean of the
    # two per-token NLLs (0.09) is below the threshold: the edit stops only when every request is done
    assert _nll(3.67) > 0.1 > (_nll(4.4) + _nll(3.67)) / 2
    assert _fit(model, _rows(1), 0.1)["steps"] == 3
    assert _fit(_peaked({(3, 4): 4.4, (4, 5): 4.4, (0, 2): 3.67}), _rows(0, 1), 0.1)["steps"] == 3
    # below the threshold for both: stops before the first step; 0 never stops
    assert _fit(_peaked({(3, 4): 4.4, (4, 5): 4.4, (0, 2): 4.4}), _rows(0, 1), 0.1)["steps"] == 0
    assert _fit(_peaked({(3, 4): 20.0, (4, 5): 20.0}), _rows(0), 0.0)["steps"] == 3


def test_target_batch_uses_the_evaluation_tokenisation(tiny_lm):
    reqs = [EditRequest.from_case(c) for c in tiny_lm.world.cases[:5]]
    batch = target_batch(PromptEncoder(tiny_lm.tok), reqs)
    prompts, objects = encode_pairs(tiny_lm.tok, [r.prompt for r in reqs], [r.target for r in reqs])
    for i, (p, o) in enumerate(zip(prompts, objects, strict=True)):
        n = len(p) + len(o)
        assert batch.ids[i, :n].tolist() == p + o and batch.mask[i].sum() == n
        assert batch.target[i].nonzero().flatten().tolist() == list(range(len(p), n))
        assert int(batch.last_prompt[i]) == len(p) - 1
        assert (batch.ids[i, n:] == tiny_lm.tok.pad_token_id).all()


def test_linear_weight_is_d_out_by_d_in_for_both_module_types():
    x = torch.randn(3, 5)
    lin, conv = nn.Linear(5, 7, bias=False), Conv1D(7, 5)  # transformers' GPT-2 Conv1D: weight (d_in, d_out)
    nn.init.normal_(conv.weight)
    for m in (lin, conv):
        w = linear_weight(m)
        assert w.shape == (7, 5)
        torch.testing.assert_close(m(x), x @ w.T + (conv.bias if m is conv else 0))
    with torch.no_grad():
        linear_weight(conv)[0, 0] = 42.0  # a view: writes reach the module
    assert conv.weight[0, 0] == 42.0
    with pytest.raises(EditlabError):
        linear_weight(nn.Embedding(3, 3))


def test_module_names_and_layers(tiny_lm):
    m = tiny_lm.model
    assert resolve_layers(m, None) == [0, 1, 2, 3] and resolve_layers(m, [-1, 0]) == [0, 3]
    assert module_names(m, ["model.layers.{}.mlp.down_proj"], [1]) == ["model.layers.1.mlp.down_proj"]
    with pytest.raises(EditlabError):
        resolve_layers(m, [4])
    # a paper's layer at its relative depth: ROME's 17 of 48 and MEMIT's GPT-J band 3..8 of 28 on 4 blocks
    assert resolve_layers(m, ["17/48"]) == [1] and resolve_layers(m, ["3..8/28", -1]) == [0, 1, 3]
    for bad in ["17", "48/48", "8..3/28", "a/b"]:
        with pytest.raises(EditlabError, match="17/48"):
            resolve_layers(m, [bad])
    with pytest.raises(EditlabError, match=r"transformer\.h"):
        module_names(m, ["transformer.h.{}.mlp.c_proj"], None)


@pytest.mark.parametrize(("spec", "n", "want"), [
    ("17/48", 48, [17]), ("17/48", 12, [4]), ("0/48", 4, [0]), ("47/48", 4, [3]),  # same model; first, last kept
    ("3..8/28", 12, [1, 2, 3]), ("3..8/28", 28, [3, 4, 5, 6, 7, 8]), ("13..17/48", 28, [7, 8, 9, 10])])
def test_relative_layers_keep_the_papers_depth(spec, n, want):
    assert relative_layers(spec, n) == want


def _ctx(lm) -> EditContext:
    return EditContext(tokenizer=lm.tok)


def test_lora_restores_the_base_modules_and_merges_on_commit(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    names = module_names(model, ["model.layers.{}.mlp.down_proj"], None)
    before = {n: model.get_submodule(n) for n in names}
    weights = {n: before[n].weight.clone() for n in names}
    req = EditRequest.from_case(tiny_lm.world.cases[0])
    method = registry.get_method("lora", {"lr": 1e-2, "steps": 5})
    handle = method.apply(model, [req], _ctx(tiny_lm))
    assert all(type(model.get_submodule(n)) is not nn.Linear for n in names)  # adapters injected
    assert all(torch.equal(before[n].weight, weights[n]) for n in names)  # base weights frozen
    assert handle.info["steps"] == 5 and handle.info["update_norm"] > 0
    restored = handle.restore()
    assert restored is model and not hasattr(model, "peft_config")
    assert all(model.get_submodule(n) is before[n] for n in names)  # the very same base modules
    assert not any("lora" in k for k in model.state_dict())
    # commit: W <- W + (alpha / r) B A, computed from the trained adapter before merging
    handle = method.apply(model, [req], _ctx(tiny_lm))
    expected = {}
    for n in names:
        layer = model.get_submodule(n)
        delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
        expected[n] = weights[n] + delta.detach()
    merged = handle.commit()
    for n in names:
        assert type(merged.get_submodule(n)) is nn.Linear
        torch.testing.assert_close(merged.get_submodule(n).weight, expected[n])


def test_only_adapter_matrices_get_weight_decay(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=8, target_modules=["model.layers.0.mlp.down_proj"]))
    peft_model.base_model.model.lm_head.weight.requires_grad_(True)  # another trainable parameter
    groups = adapter_param_groups(peft_model, 1e-4)
    names = {id(p): n for n, p in peft_model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed and all(".lora_A." in n or ".lora_B." in n for n in decayed)
    assert plain == {"base_model.model.lm_head.weight"}
    assert len(decayed) == 2


def test_ft_l_clamp_holds_and_only_the_chosen_layer_changes(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    eps = 1e-3
    method = registry.get_method("ft_l", {"layer": 2, "lr": 1e-2, "steps": 5, "norm_constraint": eps})
    handle = method.apply(model, [EditRequest.from_case(tiny_lm.world.cases[0])], _ctx(tiny_lm))
    name = "model.layers.2.mlp.down_proj.weight"
    diff = (model.state_dict()[name] - base[name]).abs()
    assert diff.max() <= eps + 1e-7 and diff.max() >= 0.99 * eps  # the clamp is active and holds
    assert handle.info["update_max_abs"] == pytest.approx(float(diff.max()))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert changed == {name}
    assert all(p.grad is None for p in model.parameters())
    # without the clamp the same run moves the weight further
    free = copy.deepcopy(tiny_lm.model)
    registry.get_method("ft_m", {"layer": 2, "lr": 1e-2, "steps": 5}).apply(
        free, [EditRequest.from_case(tiny_lm.world.cases[0])], _ctx(tiny_lm))
    assert (free.state_dict()[name] - base[name]).abs().max() > 2 * eps


def test_ice_prefix_accumulates_committed_edits_only(tiny_lm):
    a, b = (EditRequest.from_case(c) for c in tiny_lm.world.cases[:2])
    ice = registry.get_method("ice", {})
    h = ice.apply(tiny_lm.model, [a], _ctx(tiny_lm))
    assert h.prefix == f"{a.sentence}."
    h.restore()
    assert ice.apply(tiny_lm.model, [b], _ctx(tiny_lm)).prefix == f"{b.sentence}."  # restored edit is gone
    ice.apply(tiny_lm.model, [a], _ctx(tiny_lm)).commit()
    assert ice.apply(tiny_lm.model, [b], _ctx(tiny_lm)).prefix == f"{a.sentence}. {b.sentence}."
    tf = registry.get_method("ice", {"template": "tf"})
    assert tf.apply(tiny_lm.model, [a], _ctx(tiny_lm)).prefix == f'"{a.sentence}" is true.'
