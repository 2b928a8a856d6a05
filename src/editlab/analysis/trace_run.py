"""``python evaluate.py analysis=tracing``: causal tracing averaged over many facts, its heatmaps and best layer.

Facts are drawn from the world with a seed (known facts only by default, as ROME traces its "known" set;
:mod:`editlab.analysis.facts`). The noise is ``trace.noise`` (3) times the standard deviation of the drawn
subjects' token embeddings (ROME's rule). Token positions differ between prompts, so they are averaged
in ROME's six categories (Figure 2 of the paper): first / middle / last subject token, first subsequent
token, further tokens, last token. A category a prompt does not have (no middle token in a two-token
subject) is left out of that fact's average, and ``n`` per category says how many facts it holds.

**Best layer** (the rule written to ``result.json``): the layer with the largest mean indirect effect at
the *last subject token* for ``best_kind`` (default ``mlp``: the MLP-window restoration, where ROME reads
off its edit layer); ties go to the lowest layer. When the window covers every layer at every centre
(``window >= 2 L - 1``, e.g. the default 10 on a 4-layer model) the MLP curve is flat and the rule can
only return layer 0: ``window_covers_all`` says so and the analysis warns; use a smaller ``trace.window``.

Method configs take the layer with ``${editlab.traced_layer:<out_dir>/result.json}``
(:func:`editlab.utils.rundir.traced_layer`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from editlab.analysis.facts import draw_facts, world_facts
from editlab.analysis.figures import trace_heatmaps
from editlab.analysis.outputs import csv_text, write_analysis
from editlab.analysis.patching import KINDS
from editlab.analysis.tracing import (
    Fact,
    FactTrace,
    TraceSettings,
    check_traced_settings,
    embedding_std,
    trace_fact,
    window,
)
from editlab.errors import EditlabError
from editlab.lm.arch import adapter_for
from editlab.world.loading import World

CATEGORIES: tuple[str, ...] = ("first subject token", "middle subject tokens", "last subject token",
                               "first subsequent token", "further tokens", "last token")
"""ROME's token categories (Figure 2), in prompt order."""
LAST_SUBJECT = CATEGORIES.index("last subject token")


@dataclass(frozen=True)
class TracingRun:
    """The ``analysis`` node of conf/analysis/tracing.yaml (besides name, out_dir, checkpoint).

    Attributes:
        n_facts: facts traced (drawn with ``seed``).
        seed: seed of the draw (the noise has its own, ``trace.seed``).
        known_only: trace only facts the clean model answers (ROME's known set).
        best_kind: the restoration whose last-subject-token curve picks the best layer (hidden, mlp, attn).
        trace: :class:`~editlab.analysis.tracing.TraceSettings`.
    """

    n_facts: int = 200
    seed: int = 0
    known_only: bool = True
    best_kind: str = "mlp"
    trace: TraceSettings = field(default_factory=TraceSettings)

    def __post_init__(self) -> None:
        check_traced_settings(self, "best_kind")
        if int(self.n_facts) < 1:
            raise EditlabError(f"analysis.n_facts={self.n_facts} must be >= 1")


def category_positions(span: tuple[int, int], n_tokens: int) -> list[list[int]]:
    """Token positions of each of :data:`CATEGORIES` in a prompt of ``n_tokens`` with subject ``span``."""
    a, b = span
    last = n_tokens - 1
    return [[a], list(range(a + 1, b - 1)), [b - 1], [b] if b < last else [], list(range(b + 1, last)), [last]]


def by_category(grid: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """(layers, tokens) -> (layers, categories): the mean over each category's positions (NaN if it has none)."""
    cols = [grid[:, pos].mean(axis=1) if pos else np.full(grid.shape[0], np.nan)
            for pos in category_positions(span, grid.shape[1])]
    return np.stack(cols, axis=1)


def trace_many(model: nn.Module, tok: PreTrainedTokenizerBase, facts: Sequence[Fact], settings: TraceSettings,
               kinds: Sequence[str] = KINDS, positions: Callable[[Fact], Sequence[int] | None] | None = None,
               progress: bool = True, desc: str = "trace") -> tuple[list[FactTrace], float]:
    """Trace every fact (noise std = ``settings.noise`` x the subjects' embedding std); returns the traces and
    the absolute noise std. ``positions(fact)`` restricts the traced positions (default: all from the subject)."""
    std = settings.noise * embedding_std(model, tok, facts)
    out = []
    for f in tqdm(facts, desc=desc, unit="fact", disable=not progress):
        out.append(trace_fact(model, tok, f, std, settings, kinds, positions(f) if positions else None))
    return out, std


def mean_by_category(traces: Sequence[FactTrace], kinds: Sequence[str]) -> tuple[dict[str, np.ndarray], list[int]]:
    """kind -> (layers, categories) mean indirect effect over facts, and the number of facts per category."""
    means = {k: np.nanmean(np.stack([by_category(t.ie[k], t.span) for t in traces]), axis=0) for k in kinds}
    first = np.stack([by_category(t.ie[kinds[0]], t.span) for t in traces])
    counts = [int(np.sum(~np.isnan(first[:, 0, c]))) for c in range(len(CATEGORIES))]
    return means, counts


def best_layer(mean: np.ndarray) -> int:
    """The layer of the largest mean IE at the last subject token (lowest layer on ties)."""
    return int(np.argmax(mean[:, LAST_SUBJECT]))


def run_tracing(model: nn.Module, tok: PreTrainedTokenizerBase, world: World, run: TracingRun, out: Path,
                meta: dict, progress: bool = True) -> dict:
    """Trace ``run.n_facts`` facts, write heatmap.png, tracing.csv, facts.csv and result.json to ``out``."""
    t0 = time.perf_counter()
    n_layers = adapter_for(model).num_blocks(model)
    facts, skipped = draw_facts(model, tok, world_facts(world), run.n_facts, run.seed, run.known_only)
    traces, std = trace_many(model, tok, facts, run.trace, KINDS, progress=progress)
    means, counts = mean_by_category(traces, KINDS)
    best = {k: best_layer(means[k]) for k in KINDS}
    covers_all = all(window(layer, run.trace.window, n_layers) == range(n_layers) for layer in range(n_layers))
    if covers_all:
        warnings.warn(f"trace.window={run.trace.window} covers all {n_layers} layers at every centre: the MLP and "
                      "attention curves are flat and the best layer is 0 by the tie rule; set a smaller "
                      "analysis.trace.window", stacklevel=1)
    result = {
        "analysis": "tracing", **meta, "settings": asdict(run),
        "best_layer": best[run.best_kind],
        "rule": f"argmax over layers of the mean indirect effect at the last subject token, {run.best_kind} "
                f"restoration (window {run.trace.window} for mlp/attn), lowest layer on ties",
        "best_layer_by_kind": best, "window_covers_all": covers_all, "n_layers": n_layers,
        "n_facts": len(traces), "skipped_unknown": skipped, "noise_std": std,
        "mean_p_clean": float(np.mean([t.p_clean for t in traces])),
        "mean_p_corrupted": float(np.mean([t.p_corrupted for t in traces])),
        "categories": list(CATEGORIES), "facts_per_category": counts,
        "mean_ie": {k: means[k].tolist() for k in KINDS},
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    rows = [(k, c, layer, float(means[k][layer, ci]), counts[ci]) for k in KINDS
            for ci, c in enumerate(CATEGORIES) for layer in range(n_layers)]
    per_fact = [(t.fact.subject, t.fact.relation, t.fact.object, t.span[1] - t.span[0], t.p_clean, t.p_corrupted,
                 k, layer, float(by_category(t.ie[k], t.span)[layer, LAST_SUBJECT]))
                for t in traces for k in KINDS for layer in range(n_layers)]
    return write_analysis(
        out, result,
        {"tracing.csv": csv_text(("kind", "category", "layer", "mean_ie", "n_facts"), rows),
         "facts.csv": csv_text(("subject", "relation", "object", "subject_tokens", "p_clean", "p_corrupted", "kind",
                                "layer", "ie_last_subject_token"), per_fact)},
        {"heatmap.png": lambda: trace_heatmaps(means, CATEGORIES, best, run.trace.window, len(traces),
                                               result["mean_p_clean"], result["mean_p_corrupted"])},
        str(next(model.parameters()).dtype))

