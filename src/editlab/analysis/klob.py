"""``python evaluate.py analysis=klob``: do facts that depend on each other share their traced layers?

KLoB (Ju & Zhang 2023; the survey's Figure 8) asks whether knowledge localisation is *consistent* (one fact
keeps its location) and *relevant* (related facts share locations). The world makes "related" exact:
for a dependency group (:mod:`editlab.analysis.facts`) — a fact ``s1 r1``, the fact ``s1 r2`` whose object
depends on it (r1 is r2's upstream relation), an unrelated fact ``s1 r3`` of the same subject and the fact
``s2 r1`` of another subject — each fact is traced at its last subject token (indirect effect per layer,
``kind`` restoration), and its **top-k layers** (largest IE, lowest layer on ties) are compared with
``s1 r1``'s by the **Jaccard similarity** |A n B| / |A u B|, for k = 1..L. Consistency is the same fact
traced again with other noise draws (``trace.seed + 1``).

If tracing localises the *fact*, s1 r2 (which the model computes from s1 r1's object) should be closer to
s1 r1 than the unrelated s1 r3; if it only localises the *subject*, s1 r2 and s1 r3 look alike and both
differ from s2 r1. The chance line is the exact expected Jaccard of two independent random k-subsets of L
layers (hypergeometric overlap); at k = L every similarity is 1.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from math import comb
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from editlab.analysis.facts import ROLES, Group, draw_groups
from editlab.analysis.figures import similarity_curves
from editlab.analysis.outputs import csv_text, write_analysis
from editlab.analysis.tracing import TraceSettings, check_traced_settings, embedding_std, fact_inputs, trace_fact
from editlab.errors import EditlabError
from editlab.lm.arch import adapter_for
from editlab.world.loading import World

COMPARISONS: tuple[str, ...] = ("consistency", *ROLES)
"""What s1 r1's top-k layers are compared with: itself under other noise, then the group's three facts."""
LABELS = {"consistency": "same fact, other noise (consistency)", "dependent": "s1 r2: depends on s1 r1",
          "same_subject": "s1 r3: same subject, unrelated", "other_subject": "s2 r1: other subject, same relation"}


@dataclass(frozen=True)
class KlobRun:
    """The ``analysis`` node of conf/analysis/klob.yaml (besides name, out_dir, checkpoint).

    Attributes:
        n_groups: dependency groups traced (drawn with ``seed``).
        seed: seed of the draw.
        known_only: only groups whose four facts the clean model answers.
        kind: the restoration whose per-layer effect ranks the layers (hidden, mlp, attn).
        trace: :class:`~editlab.analysis.tracing.TraceSettings`.
    """

    n_groups: int = 50
    seed: int = 0
    known_only: bool = True
    kind: str = "hidden"
    trace: TraceSettings = field(default_factory=TraceSettings)

    def __post_init__(self) -> None:
        check_traced_settings(self, "kind")
        if int(self.n_groups) < 1:
            raise EditlabError(f"analysis.n_groups={self.n_groups} must be >= 1")


def top_layers(effect: np.ndarray, k: int) -> frozenset[int]:
    """The ``k`` layers of largest effect (lowest layer first among equals)."""
    return frozenset(np.argsort(-np.asarray(effect), kind="stable")[:k].tolist())


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    """|a n b| / |a u b| (1 for two empty sets)."""
    return len(a & b) / len(a | b) if a | b else 1.0


def chance_jaccard(n_layers: int, k: int) -> float:
    """Expected Jaccard of two independent uniformly random k-subsets of ``n_layers`` (hypergeometric overlap)."""
    total = comb(n_layers, k)
    return sum(comb(k, i) * comb(n_layers - k, k - i) / total * i / (2 * k - i)
               for i in range(max(0, 2 * k - n_layers), k + 1) if 2 * k - i > 0)


def last_subject_effects(model: nn.Module, tok: PreTrainedTokenizerBase, groups: list[Group], run: KlobRun,
                         progress: bool) -> tuple[np.ndarray, float]:
    """(groups, 5, layers): the per-layer IE at the last subject token of s1 r1 (noise seed ``trace.seed``),
    s1 r1 again (``trace.seed + 1``), s1 r2, s1 r3 and s2 r1; and the absolute noise std."""
    std = run.trace.noise * embedding_std(model, tok, [f for g in groups for f in g.members()])
    other_noise = replace(run.trace, seed=run.trace.seed + 1)
    out = np.zeros((len(groups), 5, adapter_for(model).num_blocks(model)))
    for gi, g in enumerate(tqdm(groups, desc="klob", unit="group", disable=not progress)):
        jobs = [(g.fact, run.trace), (g.fact, other_noise), (g.dependent, run.trace), (g.same_subject, run.trace),
                (g.other_subject, run.trace)]
        for j, (f, settings) in enumerate(jobs):
            last = fact_inputs(tok, f)[1][1] - 1
            out[gi, j] = trace_fact(model, tok, f, std, settings, [run.kind], [last]).ie[run.kind][:, last]
    return out, std


def run_klob(model: nn.Module, tok: PreTrainedTokenizerBase, world: World, run: KlobRun, out: Path, meta: dict,
             progress: bool = True) -> dict:
    """Trace ``run.n_groups`` dependency groups; write klob.png, klob.csv, groups.csv and result.json."""
    t0 = time.perf_counter()
    groups, skipped = draw_groups(model, tok, world, run.n_groups, run.seed, run.known_only)
    effects, std = last_subject_effects(model, tok, groups, run, progress)
    n_layers = effects.shape[2]
    ks = list(range(1, n_layers + 1))
    sims = {c: np.array([[jaccard(top_layers(e[0], k), top_layers(e[1 + j], k)) for k in ks] for e in effects])
            for j, c in enumerate(COMPARISONS)}  # (groups, ks) per comparison
    mean = {c: sims[c].mean(axis=0) for c in COMPARISONS}
    sem = {c: sims[c].std(axis=0, ddof=1) / np.sqrt(len(groups)) if len(groups) > 1 else np.zeros(len(ks))
           for c in COMPARISONS}
    chance = [chance_jaccard(n_layers, k) for k in ks]
    below_l = slice(0, max(1, n_layers - 1))  # k = L is 1 for everything
    result = {
        "analysis": "klob", **meta, "settings": asdict(run), "n_groups": len(groups), "skipped_unknown": skipped,
        "similarity": "Jaccard |A n B| / |A u B| of the top-k layer sets by indirect effect at the last subject "
                      f"token ({run.kind} restoration), ties to the lower layer",
        "noise_std": std, "n_layers": n_layers, "k": ks, "chance": chance,
        "mean_jaccard": {c: mean[c].tolist() for c in COMPARISONS},
        "sem_jaccard": {c: sem[c].tolist() for c in COMPARISONS},
        "mean_over_k_below_L": {c: float(mean[c][below_l].mean()) for c in COMPARISONS},
        "chance_over_k_below_L": float(np.mean(chance[below_l])),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    rows = [(k, c, float(mean[c][i]), float(sem[c][i]), chance[i]) for c in COMPARISONS for i, k in enumerate(ks)]
    names = ("fact", "fact_other_noise", *ROLES)
    per_group = [(gi, names[j], f.subject, f.relation, f.object, layer, float(effects[gi, j, layer]))
                 for gi, g in enumerate(groups)
                 for j, f in enumerate((g.fact, g.fact, g.dependent, g.same_subject, g.other_subject))
                 for layer in range(n_layers)]
    title = f"top-k traced layers vs s1 r1 ({len(groups)} groups, {run.kind} restoration)"
    return write_analysis(
        out, result,
        {"klob.csv": csv_text(("k", "comparison", "mean_jaccard", "sem", "chance"), rows),
         "groups.csv": csv_text(("group", "member", "subject", "relation", "object", "layer", "ie_last_subject_token"),
                                per_group)},
        {"klob.png": lambda: similarity_curves(ks, {LABELS[c]: mean[c].tolist() for c in COMPARISONS}, chance, title)},
        str(next(model.parameters()).dtype))
