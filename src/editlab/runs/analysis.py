"""``run_analysis``: the library function of ``python evaluate.py analysis=<name>``.

evaluate.py composes conf/analysis/<name>.yaml, opens the world, loads the checkpoint and composes the
hyper-parameters of the methods an analysis edits with (what edit.py gives them for ``model=<preset>``,
:func:`editlab.runs.hparams.method_hparams`); this function takes plain typed arguments only.

- ``tracing`` (:mod:`~editlab.analysis.trace_run`): where the model recalls a fact (ROME Sec. 2), which layer to edit;
- ``klob`` (:mod:`~editlab.analysis.klob`): do dependent facts share their traced layers (survey Fig. 8);
- ``delta_w`` (:mod:`~editlab.analysis.delta_w`): how sparse is each method's update, does it write the target
  (survey Fig. 7);
- ``hase`` (:mod:`~editlab.analysis.hase`): does the traced layer predict where an edit works (Hase et al. 2023).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from editlab.errors import EditlabError
from editlab.lm.checkpoint import model_id
from editlab.world.loading import World

ANALYSES: tuple[str, ...] = ("tracing", "klob", "delta_w", "hase")


def run_analysis(name: str, settings: dict, model: nn.Module, world: World, checkpoint: Path, out: Path,
                 hparams: dict[str, dict], stats_root: Path, progress: bool = True) -> dict:
    """Run analysis ``name`` on ``model`` (the checkpoint at ``checkpoint``) and write it to ``out``.

    Args:
        settings: the analysis node without ``name``, ``out_dir``, ``checkpoint``.
        hparams: method name -> hyper-parameters (composed by the caller) for the analyses that edit.
        stats_root: ``paths.stats``; a method's statistics cache is ``<stats_root>/<model_id>``.

    Returns:
        the result (``result.json``'s content) with ``report`` = ``out``, ``n`` and ``unit`` (what was counted).
    """
    from transformers import PreTrainedTokenizerFast

    from editlab.utils.typed import from_dict

    if name not in ANALYSES:
        raise EditlabError(f"unknown analysis {name!r}; use one of {', '.join(ANALYSES)}")
    model = model.eval()
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    mid = model_id(checkpoint)
    meta = {"checkpoint": str(checkpoint), "model_id": mid, "world_hash": world.hash}
    if name == "tracing":
        from editlab.analysis.trace_run import TracingRun, run_tracing

        res = run_tracing(model, tok, world, from_dict(TracingRun, settings, "analysis"), out, meta, progress)
        return {**res, "n": res["n_facts"], "unit": "facts"}
    if name == "klob":
        from editlab.analysis.klob import KlobRun, run_klob

        res = run_klob(model, tok, world, from_dict(KlobRun, settings, "analysis"), out, meta, progress)
        return {**res, "n": res["n_groups"], "unit": "dependency groups"}
    from editlab.editing.base import EditContext

    ctx = EditContext(tokenizer=tok, world_dir=world.dir, cache_dir=Path(stats_root) / mid if mid else None,
                      model_id=mid, seed=int(settings.get("seed", 0)))
    if name == "delta_w":
        from editlab.analysis.delta_w import DeltaWRun, run_delta_w

        res = run_delta_w(model, world, ctx, from_dict(DeltaWRun, settings, "analysis"), hparams, out, meta, progress)
        return {**res, "n": res["n_edits"], "unit": "edits per method"}
    from editlab.analysis.hase import HaseRun, run_hase

    res = run_hase(model, world, ctx, from_dict(HaseRun, settings, "analysis"), hparams, out, meta, progress)
    return {**res, "n": res["n_facts"], "unit": "facts, each edited at every layer"}
