"""``run_analysis``: the library function of ``python evaluate.py analysis=<name>``.

evaluate.py composes conf/analysis/<name>.yaml, opens the world, loads the checkpoint and composes the
hyper-parameters of the methods an analysis edits with (what edit.py gives them for ``model=<preset>``,
:func:`editlab.runs.hparams.method_hparams`); this function takes the model and one :class:`AnalysisRun`.

- ``tracing`` (:mod:`~editlab.analysis.trace_run`): where the model recalls a fact (ROME Sec. 2), which layer to edit;
- ``klob`` (:mod:`~editlab.analysis.klob`): do dependent facts share their traced layers (survey Fig. 8);
- ``delta_w`` (:mod:`~editlab.analysis.delta_w`): how sparse is each method's update, does it write the target
  (survey Fig. 7);
- ``hase`` (:mod:`~editlab.analysis.hase`): does the traced layer predict where an edit works (Hase et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from editlab.errors import EditlabError
from editlab.lm.checkpoint import model_id
from editlab.world.loading import World

ANALYSES: tuple[str, ...] = ("tracing", "klob", "delta_w", "hase")


@dataclass(frozen=True)
class AnalysisRun:
    """One ``python evaluate.py analysis=<name>`` run, built once from its config.

    Attributes:
        name: one of :data:`ANALYSES`.
        settings: the analysis node without ``name``, ``out_dir``, ``checkpoint`` (checked by the analysis's own
            typed settings).
        world: the opened world.
        checkpoint: the analysed model's checkpoint directory.
        out: the report directory.
        hparams: method name -> hyper-parameters (composed by the caller) for the analyses that edit.
        stats_root: ``paths.stats``; a method's statistics cache is ``<stats_root>/<model_id>``.
        progress: show progress bars.
    """

    name: str
    settings: dict
    world: World
    checkpoint: Path
    out: Path
    hparams: dict[str, dict] = field(default_factory=dict)
    stats_root: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.name not in ANALYSES:
            raise EditlabError(f"unknown analysis {self.name!r}; use one of {', '.join(ANALYSES)}")


def run_analysis(model: nn.Module, run: AnalysisRun) -> dict:
    """Run analysis ``run.name`` on ``model`` (the checkpoint at ``run.checkpoint``) and write it to ``run.out``.

    Returns:
        the result (``result.json``'s content) with ``report`` = ``out``, ``n`` and ``unit`` (what was counted).
    """
    from transformers import PreTrainedTokenizerFast

    from editlab.utils.typed import from_dict

    name, settings, world, out, hparams, progress = (run.name, run.settings, run.world, run.out, run.hparams,
                                                     run.progress)
    model = model.eval()
    tok = PreTrainedTokenizerFast.from_pretrained(str(world.dir))
    mid = model_id(run.checkpoint)
    meta = {"checkpoint": str(run.checkpoint), "model_id": mid, "world_hash": world.hash}
    if name == "tracing":
        from editlab.analysis.trace_run import TracingRun, run_tracing

        res = run_tracing(model, tok, world, from_dict(TracingRun, settings, "analysis"), out, meta, progress)
        return {**res, "n": res["n_facts"], "unit": "facts"}
    if name == "klob":
        from editlab.analysis.klob import KlobRun, run_klob

        res = run_klob(model, tok, world, from_dict(KlobRun, settings, "analysis"), out, meta, progress)
        return {**res, "n": res["n_groups"], "unit": "dependency groups"}
    from editlab.editing.base import EditContext

    cache = Path(run.stats_root) / mid if mid and run.stats_root else None
    ctx = EditContext(tokenizer=tok, world_dir=world.dir, cache_dir=cache,
                      model_id=mid, seed=int(settings.get("seed", 0)))
    if name == "delta_w":
        from editlab.analysis.delta_w import DeltaWRun, run_delta_w

        res = run_delta_w(model, world, ctx, from_dict(DeltaWRun, settings, "analysis"), hparams, out, meta, progress)
        return {**res, "n": res["n_edits"], "unit": "edits per method"}
    from editlab.analysis.hase import HaseRun, run_hase

    res = run_hase(model, world, ctx, from_dict(HaseRun, settings, "analysis"), hparams, out, meta, progress)
    return {**res, "n": res["n_facts"], "unit": "facts, each edited at every layer"}
