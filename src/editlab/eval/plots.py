"""Figures: per-edit probability panels (Hase et al. Fig. 4), sequential-editing curves, the training curve
(Fig. 3). Matplotlib with the Agg backend (files only, no display); each function returns the Figure so
tests can inspect axes and lines, and :func:`save` writes and closes it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from editlab.errors import EditlabError
from editlab.vocab import case_prompt, stage_gold, target_index

# Fig. 4 panels: the atomic probe types, each on the probe scored after the edit (editlab.vocab.target: o*
# for s1 r1, else the agent's new argmax), then the four logical sentences
PANELS: tuple[tuple[str, str], ...] = (
    ("s1r1", "same s, same r (o*)"),
    ("s1r2", "same s, diff r"),
    ("s2r1", "diff s, same r"),
    ("s2r2", "diff s, diff r"),
    ("tf_A", '"A" is true'),
    ("not_A", '"not A" is true'),
    ("and_AB", '"A and B" is true'),
    ("or_BA", '"B or A" is true'),
)


def edit_panels(record: dict, case: dict) -> Figure:
    """Fig. 4: the LM's probability of each probe over the optimizer steps of one edit.

    Each panel draws the traced p_LM (step 0 = before the first step) with two horizontal lines: the
    agent's prior ``p_pre`` and its posterior after the edit (``gold_post`` of the record for sequential
    runs, where the gold accumulates earlier edits; else the case's ``p_post``). A coherent editor ends on
    the posterior line; the paper's ROME runs overshoot it for s1 r1 and leave the others at the prior.

    Args:
        record: a results record with ``trace`` ({"step", "p"}; records.py).
        case: the case record (cases.jsonl) the record is about.
    """
    trace = record.get("trace")
    if not trace or not trace.get("p"):
        raise EditlabError(f"record {record.get('case_id')} has no trace; re-run edit.py with edits.trace=true")
    steps = trace.get("step") or list(range(len(trace["p"])))
    gold_post = stage_gold("post", record, case["probes"])
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharex=True, squeeze=False)
    for ax, (kind, title) in zip(axes.flat, PANELS, strict=True):
        i = target_index(case, kind, "post")
        if i is None:
            ax.set_title(f"{title}\n(no probe)", fontsize=9)
            ax.set_axis_off()
            continue
        probe = case["probes"][i]
        ax.plot(steps, [p[i] for p in trace["p"]], color="C0", marker=".", label="LM")
        ax.axhline(probe["p_pre"], color="C2", ls="--", label="agent prior")
        ax.axhline(gold_post[i], color="C3", ls=":", label="agent posterior")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
    for ax in axes[1]:
        ax.set_xlabel("edit step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:, 0]:
        ax.set_ylabel("probability")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{case['case_id']}: {case_prompt(case)} -> {case['requested_object']} "
                 f"({case['request_type']})", fontsize=10)
    fig.tight_layout()
    return fig


def _numeric_keys(points: Sequence[dict], x: str) -> list[str]:
    keys: list[str] = []
    for p in points:
        for k, v in p.items():
            if k != x and k not in keys and isinstance(v, int | float) and not isinstance(v, bool):
                keys.append(k)
    return keys


def _grid(n: int, ncols: int = 3) -> tuple[Figure, list]:
    rows = max(1, math.ceil(n / ncols))
    cols = min(ncols, max(1, n))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def sequential_curves(points: Sequence[dict], x: str = "edits") -> Figure:
    """Every numeric metric of ``curve.jsonl`` against the number of edits applied so far, one panel each."""
    if not points:
        raise EditlabError("curve.jsonl is empty; the sequential run wrote no evaluation points")
    return curves(points, x, "number of edits")


def curves(points: Sequence[dict], x: str, xlabel: str, keys: Sequence[str] | None = None) -> Figure:
    """One panel per metric (``keys``, default every numeric one) against ``x``; points missing a metric are
    skipped (a log row holds the metrics logged at its step: sequential curves, meta-training curves)."""
    keys = list(keys) if keys is not None else _numeric_keys(points, x)
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        pts = [(p[x], p[key]) for p in points if isinstance(p.get(key), int | float)]
        ax.plot([a for a, _ in pts], [b for _, b in pts], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel)
    fig.tight_layout()
    return fig


def training_curve(curve: Sequence[dict], loss: Sequence[tuple[float, float]] = ()) -> Figure:
    """Fig. 3: generative accuracy and probabilistic coherence of the fact probe over training tokens.

    Args:
        curve: ``metrics.json["curve"]`` of a pretraining run ({"step", "tokens", "gen_acc", "prob_coherence"}).
        loss: optional (tokens, train loss) pairs (the CSV log) for a third panel.
    """
    if not curve:
        raise EditlabError("the pretraining metrics.json has an empty curve; train with probe.every_n_steps > 0")
    x = "tokens" if all("tokens" in p for p in curve) else "step"
    xs = [p[x] / 1e6 if x == "tokens" else p[x] for p in curve]
    panels = [("gen_acc", "generative accuracy"), ("prob_coherence", "probabilistic coherence |p_LM - p_gold|")]
    fig, axes = _grid(len(panels) + (1 if loss else 0))
    for ax, (key, title) in zip(axes, panels, strict=False):
        ax.plot(xs, [p[key] for p in curve], marker=".")
        ax.set_title(title, fontsize=9)
    if loss:
        axes[-1].plot([t / 1e6 for t, _ in loss], [v for _, v in loss])
        axes[-1].set_title("train loss", fontsize=9)
    for ax in axes:
        ax.set_xlabel("tokens (M)" if x == "tokens" else "step")
    fig.tight_layout()
    return fig


def success_locality(points: Sequence[tuple[str, float, float, float | None, float | None]]) -> Figure:
    """Edit success against locality agreement, one point per setup (with 95% interval bars where known).

    Args:
        points: (label, success, locality, success half-width, locality half-width), rates in [0, 1].
    """
    if not points:
        raise EditlabError("no setup has both edit success and locality agreement to plot")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, x, y, dx, dy in points:
        ax.errorbar(100 * x, 100 * y, xerr=None if dx is None else 100 * dx, yerr=None if dy is None else 100 * dy,
                    fmt="o", capsize=3, label=label)
    ax.set_xlabel("edit success (%)")
    ax.set_ylabel("locality agreement (%)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def propagation_scatter(rows: Sequence[dict]) -> Figure:
    """Downstream s1 r2 accuracy against locality agreement, one numbered point per setup (rows of
    :func:`editlab.eval.propagation.propagation_rows`, with 95% interval bars; the legend names each number), the
    paper's LoRA marked with a star."""
    fig, ax = plt.subplots(figsize=(11.0, 5.0))
    for i, row in enumerate(rows, 1):
        (y, dy), (x, dx) = row["downstream s1r2 acc"], row["locality agree"]
        if x is None or y is None:
            continue
        paper = row["paper_lora"]
        style = dict(fmt="*", markersize=14, color="crimson") if paper else dict(fmt="o", markersize=5)
        ax.errorbar(100 * x, 100 * y, xerr=None if dx is None else 100 * dx, yerr=None if dy is None else 100 * dy,
                    capsize=2, label=f"{i}: {row['setup']}" + (" (the paper's LoRA)" if paper else ""), **style)
        ax.annotate(str(i), (100 * x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("locality agreement (%)")
    ax.set_ylabel("downstream s1r2 accuracy after the edit (%)")
    ax.set_title("Does the consequence follow the edit? (downstream-changes cases)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def metric_bars(labels: Sequence[str], columns: Sequence[str],
                values: Sequence[Sequence[tuple[float | None, float | None]]], title: str) -> Figure:
    """Grouped bars: one group per metric column, one bar per setup (mean with its 95% interval).

    Args:
        labels: setup names (legend).
        columns: metric names (x groups).
        values: ``values[i][j]`` = (mean, half-width) of setup ``i`` on column ``j``; None is drawn as no bar.
    """
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(columns) * max(1, len(labels)) / 2), 4.2))
    width = 0.8 / max(1, len(labels))
    for i, (label, row) in enumerate(zip(labels, values, strict=True)):
        xs = [j + i * width for j in range(len(columns))]
        means = [m if m is not None else math.nan for m, _ in row]
        errs = [h if h is not None else 0.0 for _, h in row]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(columns))], columns, rotation=20, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncols=max(1, len(labels) // 6))
    with warnings.catch_warnings():  # many setups: matplotlib warns that the legend cannot fit; the figure is fine
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG and free it (figures are not garbage-collected while pyplot tracks them)."""
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
