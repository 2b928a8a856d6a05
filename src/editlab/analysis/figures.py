"""Figures of the analyses (Matplotlib, Agg backend via :mod:`editlab.eval.plots`; each returns its Figure).

- :func:`trace_heatmaps`: ROME's three panels (Figure 2 of Meng et al. 2022): mean indirect effect of
  restoring a block output, an MLP window, an attention window, per token category x layer;
- :func:`similarity_curves`: the survey's Figure 8 (KLoB): similarity of top-k traced layers against k;
- :func:`sparsity_and_hits`: the survey's Figure 7: Delta W's norm share in its top columns, and the
  embedding-space Hit@k of the target in the changed columns before / after the edit;
- :func:`effect_vs_success`: Hase et al. 2023, Figure 1: edit success against the tracing effect.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

import editlab.eval.plots  # noqa: F401  (selects the Agg backend before pyplot draws)

_CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
_TITLES = {"hidden": "restore one block output (hidden state)", "mlp": "restore MLP outputs (window {w})",
           "attn": "restore attention outputs (window {w})"}


def trace_heatmaps(means: dict[str, np.ndarray], categories: Sequence[str], best: dict[str, int], window: int,
                   n_facts: int, p_clean: float, p_corrupted: float) -> Figure:
    """One panel per restoration kind: rows = token categories, columns = layers, colour = mean IE."""
    kinds = list(means)
    n_layers = next(iter(means.values())).shape[0]
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(4.0, 1.0 + 0.45 * n_layers) * len(kinds), 3.4),
                             squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        grid = means[kind].T  # (categories, layers)
        im = ax.imshow(grid, cmap=_CMAPS.get(kind, "viridis"), aspect="auto", vmin=min(0.0, float(np.nanmin(grid))))
        ax.set_yticks(range(len(categories)), list(categories), fontsize=8)
        ax.set_xticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=8)
        ax.set_xlabel("layer")
        ax.set_title(_TITLES.get(kind, kind).format(w=window) + f"\nbest layer {best[kind]}", fontsize=9)
        cb = fig.colorbar(im, ax=ax, fraction=0.05)
        cb.set_label("mean indirect effect", fontsize=8)
    fig.suptitle(f"causal tracing over {n_facts} facts: p(o) clean {p_clean:.3f}, corrupted {p_corrupted:.3f}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def similarity_curves(ks: Sequence[int], curves: dict[str, Sequence[float]], chance: Sequence[float],
                      title: str) -> Figure:
    """Mean similarity of the top-k traced layer sets against k, one line per comparison, with chance."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, (label, ys) in enumerate(curves.items()):
        ax.plot(ks, ys, marker="o", color=f"C{i}", label=label)
    ax.plot(ks, chance, ls="--", color="grey", label="chance (random layer sets)")
    ax.set_xlabel("k (top-k traced layers)")
    ax.set_ylabel("Jaccard similarity")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(list(ks))
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def sparsity_and_hits(methods: Sequence[str], top_shares: dict[str, Sequence[float]], top_ks: Sequence[int],
                      hits: dict[str, dict[str, float]]) -> Figure:
    """Left: share of ||Delta W||_F^2 in the top-k columns per method; right: Hit@k before / after / of Delta W."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(top_ks))
    x = np.arange(len(methods))
    for j, k in enumerate(top_ks):
        a.bar(x + j * width, [top_shares[m][j] for m in methods], width, label=f"top {k} columns")
    a.set_xticks(x + width * (len(top_ks) - 1) / 2, list(methods))
    a.set_ylabel("share of ||Delta W||^2")
    a.set_ylim(0, 1.02)
    a.legend(fontsize=7)
    a.set_title("sparsity of the update", fontsize=9)
    keys = list(next(iter(hits.values())).keys()) if hits else []
    width = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        b.bar(x + j * width, [hits[m][key] for m in methods], width, label=key)
    b.set_xticks(x + width * (len(keys) - 1) / 2, list(methods))
    b.set_ylabel("share of edits")
    b.set_ylim(0, 1.02)
    b.legend(fontsize=7)
    b.set_title("target in the changed columns' top tokens (unembedding)", fontsize=9)
    fig.tight_layout()
    return fig


def effect_vs_success(effect: Sequence[float], success: Sequence[float], layers: Sequence[int],
                      layer_list: Sequence[int], title: str) -> Figure:
    """Scatter of edit success against the tracing effect, one colour per edited layer, and per-layer means."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    effect, success, layers = np.asarray(effect), np.asarray(success), np.asarray(layers)
    for i, layer in enumerate(layer_list):
        m = layers == layer
        a.scatter(effect[m], success[m], s=10, alpha=0.6, color=f"C{i % 10}", label=f"layer {layer}")
    a.set_xlabel("tracing effect at the layer (last subject token)")
    a.set_ylabel("edit success (rewrite score)")
    a.legend(fontsize=7)
    a.set_title(title, fontsize=9)
    xs = list(layer_list)
    b.plot(xs, [float(np.mean(success[layers == x])) for x in xs], marker="o", label="edit success (rewrite score)")
    b.plot(xs, [float(np.mean(effect[layers == x])) for x in xs], marker="s", label="tracing effect")
    b.set_xlabel("layer")
    b.set_xticks(xs)
    b.legend(fontsize=7)
    b.set_title("means per layer", fontsize=9)
    fig.tight_layout()
    return fig
