"""``python evaluate.py analysis=delta_w``: how sparse is each method's weight change, and does it write the target?

The survey's Figure 7 asks what an edit's update ``Delta W`` looks like. For every method (by registry name,
with the hyper-parameters edit.py gives it for this model) and each of ``n_edits`` counterfactual edit
cases, the edit is applied, committed (an adapter is merged into the weights), and every changed weight
matrix is read in the (d_out, d_in) orientation (:func:`editlab.editing.weights.linear_weight`). A
*column* j of ``Delta W`` is what the update writes when input unit j fires (for an MLP output projection:
one key-value memory slot of Geva et al. 2021).

- **Sparsity**: the share of ``||Delta W||_F^2`` held by the ``k`` columns of largest norm, for each ``k`` of
  ``top_columns`` (1 for a change concentrated in one slot, k/d_in for a uniform one), and the fraction of
  columns holding 90% of it. All changed matrices of one edit are pooled.
- **Embedding-space Hit@k**: for matrices that write into the residual stream (the ``mlp_out`` and
  ``attn_out`` roles), the ``n_columns`` columns of largest change are mapped to token logits through the
  final norm and the unembedding (the logit lens: ``lm_head(final_norm(v))``); an edit *hits* at k when the
  target object's first token is among the top k tokens of at least one of those columns. Reported for the
  columns before the edit (``W0[:, j]``), after it (``W1[:, j]``) and for the change itself (``Delta W[:, j]``),
  as the share of edits that hit.

Each edit starts from the unedited model (its weights are copied back after measuring). A method that changes
no weight (in-context, memory wrappers) is listed with ``weight_change: false``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from editlab.analysis.facts import counterfactual_cases
from editlab.analysis.figures import sparsity_and_hits
from editlab.analysis.outputs import csv_text, write_analysis
from editlab.editing.base import EditContext, EditRequest, unwrap
from editlab.editing.registry import get_method
from editlab.editing.weights import get_module, is_transposed, templates
from editlab.errors import EditlabError
from editlab.lm.arch import adapter_for
from editlab.vocab import object_ids
from editlab.world.loading import World

VERSIONS: tuple[str, ...] = ("before", "after", "delta")


@dataclass(frozen=True)
class DeltaWRun:
    """The ``analysis`` node of conf/analysis/delta_w.yaml (besides name, out_dir, checkpoint, trace).

    Attributes:
        methods: registry names of the methods to measure (hyper-parameters composed by evaluate.py).
        n_edits: counterfactual evaluation cases edited per method (one at a time, from the unedited model).
        known_only: only cases whose true fact the model knows.
        top_columns: the k of "share of ||Delta W||^2 in the top k columns".
        n_columns: columns of largest change mapped through the unembedding.
        hits_at: the k of Hit@k.
        seed: seed of the methods' EditContext.
        trace: unused here (shared analysis settings).
    """

    methods: Sequence[str] = ("rome",)
    n_edits: int = 50
    known_only: bool = True
    top_columns: Sequence[int] = (1, 10, 50)
    n_columns: int = 10
    hits_at: Sequence[int] = (10, 50)
    seed: int = 0
    trace: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise EditlabError("analysis.methods is empty; name at least one registered method")
        if int(self.n_edits) < 1 or int(self.n_columns) < 1:
            raise EditlabError("analysis.n_edits and analysis.n_columns must be >= 1")
        if not self.top_columns or not self.hits_at or min([*self.top_columns, *self.hits_at]) < 1:
            raise EditlabError("analysis.top_columns and analysis.hits_at must be non-empty lists of k >= 1")


def residual_writers(model: nn.Module) -> set[str]:
    """Names of the modules whose output is added to the residual stream (the mlp_out and attn_out roles)."""
    n = adapter_for(model).num_blocks(model)
    return {t.format(i) for t in templates(model, ["mlp_out", "attn_out"]) for i in range(n)}


def changed_matrices(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (W0, W1) in (d_out, d_in) orientation for every Linear/Conv1D weight that changed."""
    out = {}
    params = dict(model.named_parameters())
    for name, w0 in before.items():
        w1 = params[name].detach()
        if torch.equal(w0, w1):
            continue
        mod_name = name.removesuffix(".weight")
        mod = get_module(model, mod_name)
        t = is_transposed(mod)
        out[mod_name] = ((w0.T if t else w0).double(), (w1.T if t else w1).double())
    return out


def column_shares(delta_cols: torch.Tensor, top: Sequence[int]) -> tuple[list[float], float]:
    """Share of sum(column norms^2) in the top-k columns for each k, and the fraction of columns holding 90%."""
    sq = torch.sort(delta_cols, descending=True).values
    total = float(sq.sum())
    if total == 0:
        return [0.0 for _ in top], 0.0
    cum = torch.cumsum(sq, 0) / total
    shares = [float(cum[min(k, len(cum)) - 1]) for k in top]
    return shares, (int(torch.searchsorted(cum, torch.tensor(0.9, dtype=cum.dtype))) + 1) / len(cum)


@torch.no_grad()
def column_hits(model: nn.Module, cols: dict[str, torch.Tensor], target: int, ks: Sequence[int]) -> dict[str, bool]:
    """``{"<version>@k": hit}``: the target token among the top k logit-lens tokens of any column of a version."""
    a = adapter_for(model)
    norm, head = model.get_submodule(a.final_norm), model.get_submodule(a.lm_head)
    p = next(head.parameters())
    out = {}
    for version, v in cols.items():  # v: (n_columns, d_model)
        logits = head(norm(v.to(p.dtype).to(p.device)[:, None, :]))[:, 0]
        rank = (logits > logits[:, target:target + 1]).sum(dim=1)  # tokens strictly above the target
        for k in ks:
            out[f"{version}@{k}"] = bool((rank < k).any())
    return out


def measure_edit(work: nn.Module, before: dict[str, torch.Tensor], writers: set[str], target: int,
                 run: DeltaWRun) -> dict | None:
    """Sparsity and hits of the edit now in ``work`` (None when no weight changed)."""
    mats = changed_matrices(work, before)
    if not mats:
        return None
    col_sq = torch.cat([(w1 - w0).pow(2).sum(dim=0) for w0, w1 in mats.values()])
    shares, frac90 = column_shares(col_sq, run.top_columns)
    res = {"shares": shares, "frac90": frac90, "modules": sorted(mats), "hits": None}
    resid = {n: m for n, m in mats.items() if n in writers}
    if resid:
        w0 = torch.cat([m[0] for m in resid.values()], dim=1)
        w1 = torch.cat([m[1] for m in resid.values()], dim=1)
        idx = torch.topk((w1 - w0).pow(2).sum(dim=0), min(run.n_columns, w0.shape[1])).indices
        cols = {"before": w0[:, idx].T, "after": w1[:, idx].T, "delta": (w1 - w0)[:, idx].T}
        res["hits"] = column_hits(work, cols, target, run.hits_at)
    return res


def run_delta_w(model: nn.Module, world: World, ctx: EditContext, run: DeltaWRun, hparams: dict[str, dict],
                out: Path, meta: dict, progress: bool = True) -> dict:
    """Edit ``run.n_edits`` cases with each method; write delta_w.png, delta_w.csv, edits.csv, result.json."""
    t0 = time.perf_counter()
    tok = ctx.tokenizer
    cases = counterfactual_cases(model, tok, world, run.n_edits, run.known_only)
    per_method, rows = {}, []
    for name in run.methods:
        method = get_method(name, hparams.get(name))
        if method.in_context:  # no weight to measure
            per_method[name] = _summary([], run)
            continue
        work = copy.deepcopy(model)
        method.prepare(work, ctx)
        writers = residual_writers(work)
        before = {n: p.detach().clone() for n, p in work.named_parameters() if p.dim() == 2}
        measured = []
        for case in tqdm(cases, desc=f"delta_w {name}", unit="edit", disable=not progress):
            target = object_ids(tok, [case["requested_object"]])[0][0]
            handle = method.apply(work, [EditRequest.from_case(case)], ctx)
            work = unwrap(handle.commit())  # an adapter is merged into the base weights
            m = measure_edit(work, before, writers, target, run)
            with torch.no_grad():
                for n, p in work.named_parameters():
                    if n in before:
                        p.copy_(before[n])
            if method.state_dict():  # e.g. AlphaEdit's accumulated keys: every edit starts from a fresh method
                method = get_method(name, hparams.get(name))
                method.prepare(work, ctx)
            if m is not None:
                measured.append(m)
                rows.append((name, case["case_id"], *m["shares"], m["frac90"],
                             *([m["hits"][f"{v}@{k}"] for v in VERSIONS for k in run.hits_at] if m["hits"]
                               else [None] * (len(VERSIONS) * len(run.hits_at))), ";".join(m["modules"])))
        per_method[name] = _summary(measured, run)
    shown = [m for m in run.methods if per_method[m]["weight_change"]]
    result = {"analysis": "delta_w", **meta, "settings": asdict(run) | {"hparams": hparams},
              "n_edits": len(cases), "methods": per_method,
              "definitions": {"share_top_k": "sum of the k largest squared column norms of Delta W (d_out x d_in, "
                                             "all changed matrices pooled) / ||Delta W||_F^2",
                              "hit_at_k": "share of edits whose target first token is in the top-k logit-lens tokens "
                                          "(lm_head(final_norm(column))) of at least one of the n_columns most "
                                          "changed residual-writing columns, before / after / of the change"},
              "wall_s": round(time.perf_counter() - t0, 2)}
    hit_keys = [f"{v}@{k}" for v in VERSIONS for k in run.hits_at]
    header = ("method", "case_id", *[f"share_top{k}" for k in run.top_columns], "frac_cols_90", *hit_keys, "modules")
    figures = {}
    if shown:
        figures["delta_w.png"] = lambda: sparsity_and_hits(
            shown, {m: per_method[m]["share_top_k"] for m in shown}, list(run.top_columns),
            {m: per_method[m]["hit_at_k"] or dict.fromkeys(hit_keys, 0.0) for m in shown})
    summary_rows = [(m, s["weight_change"], *(s["share_top_k"] or [None] * len(run.top_columns)), s["frac_cols_90"],
                     *[(s["hit_at_k"] or {}).get(h) for h in hit_keys]) for m, s in per_method.items()]
    return write_analysis(
        out, result,
        {"delta_w.csv": csv_text(("method", "weight_change", *[f"share_top{k}" for k in run.top_columns],
                                  "frac_cols_90", *hit_keys), summary_rows),
         "edits.csv": csv_text(header, rows)},
        figures, str(next(model.parameters()).dtype))


def _summary(measured: list[dict], run: DeltaWRun) -> dict:
    if not measured:
        return {"weight_change": False, "n": 0, "share_top_k": None, "frac_cols_90": None, "hit_at_k": None}
    with_hits = [m["hits"] for m in measured if m["hits"]]
    return {"weight_change": True, "n": len(measured),
            "share_top_k": np.mean([m["shares"] for m in measured], axis=0).tolist(),
            "frac_cols_90": float(np.mean([m["frac90"] for m in measured])),
            "hit_at_k": {k: float(np.mean([h[k] for h in with_hits])) for k in with_hits[0]} if with_hits else None,
            "modules": sorted({n for m in measured for n in m["modules"]})}
