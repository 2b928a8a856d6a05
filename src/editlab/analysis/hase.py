"""``python evaluate.py analysis=hase``: does the causal-tracing effect at a layer predict edit success there?

Hase et al. 2023 ("Does Localization Inform Editing?") edit every fact at every layer and ask whether the
layer where tracing localises the fact is where the edit works best. Here, over ``n_facts``
counterfactual edit cases (the true fact ``s1 r1 o_true`` known to the model, the request ``o*``):

- **tracing effect** of layer l: the fact's indirect effect at the last subject token when restoring at l
  (``kind``: a block output, or ROME's window of MLP / attention outputs), :mod:`editlab.analysis.tracing`;
- **edit success** at layer l: the method (by registry name, with the hyper-parameters edit.py gives it,
  and its layer hyper-parameter ``layer_key`` set to l) applied to the unedited model, scored by Hase et
  al.'s *rewrite score* ``(p_post(o*) - p_pre(o*)) / (1 - p_pre(o*))`` with p the probability of the whole
  object (teacher-forced, the evaluation's tokenisation), then restored.

Reported: Pearson and Spearman correlation over all (fact, layer) pairs; per-layer means; and Hase et al.'s
regression: R^2 of rewrite score on layer indicators alone vs. with the tracing effect added (how much
variance tracing explains beyond the choice of layer). The scatter plot colours points by layer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from editlab.analysis.facts import case_fact, counterfactual_cases
from editlab.analysis.figures import effect_vs_success
from editlab.analysis.outputs import csv_text, write_analysis
from editlab.analysis.tracing import TraceSettings, check_traced_settings, embedding_std, fact_inputs, trace_fact
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.registry import get_method
from editlab.errors import EditlabError
from editlab.eval.scoring import encode_pairs, object_logprobs
from editlab.lm.arch import adapter_for
from editlab.vocab import case_prompt
from editlab.world.loading import World


@dataclass(frozen=True)
class HaseRun:
    """The ``analysis`` node of conf/analysis/hase.yaml (besides name, out_dir, checkpoint).

    Attributes:
        method: registry name of the editor (default ROME).
        layer_key: the method's hyper-parameter that holds its edited layer (an int, or a list: set to [l]).
        layers: layers to edit at (``None``: every layer of the model).
        n_facts: counterfactual edit cases (the world's order) whose true fact the model knows.
        known_only: only cases whose true fact the model knows.
        kind: the restoration whose per-layer effect is the tracing effect (hidden, mlp, attn).
        seed: seed of the methods' EditContext.
        trace: :class:`~editlab.analysis.tracing.TraceSettings`.
    """

    method: str = "rome"
    layer_key: str = "layers"
    layers: list[int] | None = None
    n_facts: int = 50
    known_only: bool = True
    kind: str = "hidden"
    seed: int = 0
    trace: TraceSettings = field(default_factory=TraceSettings)

    def __post_init__(self) -> None:
        check_traced_settings(self, "kind")
        if int(self.n_facts) < 2:
            raise EditlabError(f"analysis.n_facts={self.n_facts} must be >= 2 (a correlation needs two points)")


def at_layer(hparams: dict, key: str, layer: int, method: str) -> dict:
    """``hparams`` with the layer hyper-parameter ``key`` set to ``layer`` (``[layer]`` when it holds a list)."""
    if key not in hparams:
        raise EditlabError(f"method {method} has no hyper-parameter {key!r} in its composed hparams "
                           f"({', '.join(sorted(hparams)) or 'none'}); set analysis.layer_key to its layer key")
    return {**hparams, key: [layer] if isinstance(hparams[key], list | tuple) else layer}


def rewrite_score(p_pre: np.ndarray, p_post: np.ndarray) -> np.ndarray:
    """Hase et al.'s rewrite score: the share of the missing probability of o* that the edit supplied."""
    return (p_post - p_pre) / np.maximum(1.0 - p_pre, 1e-12)


def _r2(y: np.ndarray, x: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    res = y - x @ coef
    tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float((res ** 2).sum()) / tot if tot > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):  # average ranks of ties
        m = x == v
        r[m] = r[m].mean()
    return r


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def run_hase(model: nn.Module, world: World, ctx: EditContext, run: HaseRun, hparams: dict[str, dict], out: Path,
             meta: dict, progress: bool = True) -> dict:
    """Trace and edit ``run.n_facts`` cases at every layer; write hase.png, hase.csv, layers.csv, result.json."""
    t0 = time.perf_counter()
    tok = ctx.tokenizer
    n_layers = adapter_for(model).num_blocks(model)
    layers = list(range(n_layers)) if run.layers is None else [int(x) for x in run.layers]
    if any(not 0 <= x < n_layers for x in layers):
        raise EditlabError(f"analysis.layers={run.layers} must lie in 0..{n_layers - 1}")
    base_hp = hparams.get(run.method) or {}
    methods = {layer: get_method(run.method, at_layer(base_hp, run.layer_key, layer, run.method)) for layer in layers}
    cases = counterfactual_cases(model, tok, world, run.n_facts, run.known_only)
    facts = [case_fact(c) for c in cases]
    std = run.trace.noise * embedding_std(model, tok, facts)
    effect = np.zeros((len(cases), len(layers)))
    for i, f in enumerate(tqdm(facts, desc="hase trace", unit="fact", disable=not progress)):
        last = fact_inputs(tok, f)[1][1] - 1
        effect[i] = trace_fact(model, tok, f, std, run.trace, [run.kind], [last]).ie[run.kind][layers, last]
    prompts, objects = encode_pairs(tok, [case_prompt(c) for c in cases],
                                    [c["requested_object"] for c in cases])
    p_pre = object_logprobs(model, prompts, objects, tok.pad_token_id).exp().numpy()
    p_post = np.zeros((len(cases), len(layers)))
    for j, layer in enumerate(layers):
        method = methods[layer]
        method.prepare(model, ctx)
        for i, case in enumerate(tqdm(cases, desc=f"hase edit layer {layer}", unit="edit", disable=not progress)):
            handle = method.apply(model, [EditRequest.from_case(case)], ctx)
            if handle.prefix:
                raise EditlabError(f"method {run.method} edits in context; analysis=hase needs a method with a layer")
            with torch.no_grad():
                p_post[i, j] = float(object_logprobs(handle.model, prompts[i:i + 1], objects[i:i + 1],
                                                     tok.pad_token_id).exp()[0])
            model = handle.restore()
    score = rewrite_score(p_pre[:, None], p_post)
    e, s = effect.reshape(-1), score.reshape(-1)
    lay = np.tile(np.array(layers), len(cases))
    dummies = (lay[:, None] == np.array(layers)[None]).astype(float)
    r2_layer = _r2(s, dummies)
    r2_both = _r2(s, np.concatenate([dummies, e[:, None]], axis=1))
    per_layer = [{"layer": layer, "mean_rewrite_score": float(score[:, j].mean()),
                  "mean_tracing_effect": float(effect[:, j].mean()),
                  "success_rate": float((p_post[:, j] > 0.5).mean()),
                  "pearson_within_layer": _pearson(effect[:, j], score[:, j])} for j, layer in enumerate(layers)]
    result = {
        "analysis": "hase", **meta, "settings": asdict(run) | {"hparams": base_hp},
        "n_facts": len(cases), "layers": layers, "noise_std": std,
        "pearson": _pearson(e, s), "spearman": _pearson(_ranks(e), _ranks(s)),
        "r2_layer": r2_layer, "r2_layer_and_tracing": r2_both, "r2_gain_from_tracing": r2_both - r2_layer,
        "best_edit_layer": layers[int(np.argmax([p["mean_rewrite_score"] for p in per_layer]))],
        "best_traced_layer": layers[int(np.argmax([p["mean_tracing_effect"] for p in per_layer]))],
        "per_layer": per_layer,
        "definitions": {"tracing_effect": f"indirect effect at the last subject token, {run.kind} restoration",
                        "rewrite_score": "(p_post(o*) - p_pre(o*)) / (1 - p_pre(o*)), p of the whole object",
                        "success_rate": "share of edits with p_post(o*) > 0.5"},
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    rows = [(c["case_id"], c["subject"], c["relation"], c["o_true"], c["requested_object"], layer,
             float(effect[i, j]), float(p_pre[i]), float(p_post[i, j]), float(score[i, j]))
            for i, c in enumerate(cases) for j, layer in enumerate(layers)]
    title = (f"{run.method}: rewrite score vs tracing effect ({len(cases)} facts)\n"
             f"Pearson {result['pearson']:.2f}, R^2 layer {r2_layer:.2f} -> +tracing {r2_both:.2f}")
    return write_analysis(
        out, result,
        {"hase.csv": csv_text(("case_id", "subject", "relation", "o_true", "requested_object", "layer",
                               "tracing_effect", "p_pre", "p_post", "rewrite_score"), rows),
         "layers.csv": csv_text(tuple(per_layer[0]), [tuple(p.values()) for p in per_layer])},
        {"hase.png": lambda: effect_vs_success(e, s, lay, layers, title)},
        str(next(model.parameters()).dtype))
