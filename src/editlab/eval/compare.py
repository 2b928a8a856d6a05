"""One comparison table from many edit runs: a Hydra multirun, or any directory of runs (evaluate.py ``sweep=``).

A researcher sweeps methods, modes, hyper-parameters and seeds with ``python edit.py -m ...``; every job writes its
own run directory (``metrics.json`` + ``run_config.yaml``). This module collects those runs and answers "which
setup is better, and by how much": one row per *setup* (the config keys that differ between the runs, minus the
seed and the locations), each metric as the mean over seeds with a 95% Student-t interval.

Which runs: a multirun's record directory (``<outputs>/multirun/edit/<date>_<time>``) lists its jobs in
``jobs/<n>.json`` (written by edit.py at the start of each job: :func:`editlab.utils.rundir.record_multirun_job`),
so the table holds exactly that sweep; any other directory is searched for finished runs (``metrics.json`` next to
``run_config.yaml``). A job that has no ``metrics.json`` (failed or still running) is listed as missing, never
silently dropped.

Which metrics (``METRICS``): the editing metrics of evaluation.md (edit success, locality, portability, fluency and
consistency), the Table 4 columns of Hase et al. 2024 (generative accuracy and probabilistic coherence against the
Bayesian agent for s1r1..s2r2, logical coherence), and the cost (ms/edit, peak memory, wall time) — all read from
the ``all`` subset of each run's summary, post-edit (``final`` for sequential runs where it exists).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from editlab.errors import EditlabError
from editlab.eval.summary import headline_stage
from editlab.utils.jsonio import read_json
from editlab.utils.rundir import LOCATION_KEYS, NON_RESULT_KEYS, flatten, read_yaml

# (column, source, group, higher is better): source = summary key after "<stage>/" (of the ``all`` subset, or of
# ``<subset>:`` where named: the requests whose agent answer for s1r2 moves, Hase et al.'s downstream changes), or a
# top-level metrics.json key ("@")
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("edit success", "edit_exact", "editing", True),
    ("s1r1 acc", "s1r1_acc", "table4", True),
    ("s1r2 acc", "s1r2_acc", "table4", True),
    ("s2r1 acc", "s2r1_acc", "table4", True),
    ("s2r2 acc", "s2r2_acc", "table4", True),
    ("s1r1 coh", "s1r1_prob_coh", "coherence", False),
    ("s1r2 coh", "s1r2_prob_coh", "coherence", False),
    ("s2r1 coh", "s2r1_prob_coh", "coherence", False),
    ("s2r2 coh", "s2r2_prob_coh", "coherence", False),
    ("logic TF", "logic_tf", "coherence", False),
    ("logic not", "logic_not", "coherence", False),
    ("logic and", "logic_and", "coherence", False),
    ("logic or", "logic_or", "coherence", False),
    ("downstream s1r2 acc", "downstream_changes:s1r2_acc", "table4", True),
    ("downstream s1r2 coh", "downstream_changes:s1r2_prob_coh", "coherence", False),
    ("locality agree", "locality_agree", "editing", True),
    ("locality agree (answer)", "locality_agree_answer", "editing", True),
    ("locality acc", "locality_acc", "editing", True),
    ("locality KL", "locality_kl", "editing", False),
    ("portability s1r2", "portability_s1r2", "editing", True),
    ("portability TF", "portability_tf", "editing", True),
    ("fluency", "fluency", "editing", True),
    ("consistency", "consistency", "editing", True),
    ("edited", "@edited_share", "editing", True),
    ("ms/edit", "@median_edit_s", "cost", False),
    ("peak MB", "@peak_mem_mb", "cost", False),
    ("wall s", "@wall_s", "cost", False),
)
SEED_KEYS = ("seed",)  # aggregated over (mean and interval); every other differing key names a setup


@dataclass
class Run:
    """One finished edit run: its directory, flat config, the metric values of ``METRICS``, the agent its
    records were scored against (``gold_agent`` of its summary: single, batch or stream) and the summary itself."""

    path: Path
    config: dict[str, object]
    values: dict[str, float | None]
    gold_agent: str = "single"
    summary: dict = field(default_factory=dict, repr=False)  # metrics.json's summary, for reports beyond METRICS


@dataclass
class Comparison:
    """The comparison of a set of runs: the keys that distinguish setups, one row per setup, missing jobs."""

    keys: list[str]
    rows: list[dict[str, object]]
    missing: list[str] = field(default_factory=list)


def read_run(path: Path) -> Run:
    """The :class:`Run` of a finished run directory (clear error for a directory that is not one)."""
    path = Path(path)
    if not (path / "metrics.json").is_file() or not (path / "run_config.yaml").is_file():
        raise EditlabError(f"{path} is not a finished edit run (needs metrics.json and run_config.yaml)")
    metrics = read_json(path / "metrics.json", "re-run the edit", "edit run metrics")
    summary = metrics.get("summary") or {}
    allsub = summary.get("subsets", {}).get("all", {})
    stage = headline_stage(summary)
    values: dict[str, float | None] = {}
    for column, source, _group, _better in METRICS:
        if source.startswith("@"):
            v = metrics.get(source[1:])
            v = v * 1000.0 if source == "@median_edit_s" and v is not None else v
        else:
            subset, _, key = source.rpartition(":")
            sub = summary.get("subsets", {}).get(subset, {}) if subset else allsub
            v = sub.get(f"{stage}/{key}", sub.get(f"post/{key}"))
        values[column] = float(v) if isinstance(v, int | float) and math.isfinite(v) else None
    ignore = set(LOCATION_KEYS) | set(NON_RESULT_KEYS) | {"checkpoint", "editor_path"}
    config = flatten({k: v for k, v in read_yaml(path / "run_config.yaml").items() if k not in ignore})
    config.pop("preset.tag", None)  # a directory suffix derived from preset.name, which names the setup
    config.pop("data.cache_dir", None)  # where the world is cached (a location, like paths), not which world
    # a key a later version added with a null default says what its absence said: runs of both versions are one setup
    config = {k: v for k, v in config.items() if v is not None}
    return Run(path, config, values, str(summary.get("gold_agent", "single")), summary)


def find_runs(directory: Path) -> tuple[list[Run], list[str]]:
    """(finished runs, missing job directories) of a multirun record or any directory holding runs."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EditlabError(f"{directory} is not a directory; pass sweep=<a multirun directory or a folder of runs>")
    jobs = sorted((directory / "jobs").glob("*.json"), key=lambda p: (len(p.stem), p.stem))
    if jobs:
        dirs = [Path(read_json(j, "delete it or re-run the multirun", "multirun job record")["run_dir"]) for j in jobs]
    else:
        dirs = sorted(p.parent for p in directory.rglob("metrics.json") if (p.parent / "run_config.yaml").is_file())
    runs, missing = [], []
    for d in dirs:
        if (d / "metrics.json").is_file():
            runs.append(read_run(d))
        else:
            missing.append(str(d))
    if not runs:
        raise EditlabError(f"no finished edit runs under {directory} (metrics.json + run_config.yaml); run "
                           "python edit.py -m ... first, or wait for its jobs to finish")
    return runs, missing


def interval95(xs: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% Student-t interval); the half-width is None for fewer than two values."""
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, None
    from scipy.stats import t

    return mean, float(t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)))


def compare(runs: list[Run], missing: list[str] | None = None) -> Comparison:
    """Group ``runs`` by the config keys that differ between them (seed excepted); mean and 95% interval per metric.

    The method name is always a key (a one-method table still says which method it is), then the preset where
    runs differ in it; ``method.*`` keys count only where runs of the same method under the same preset differ in
    them, so a table of many methods (or of a method's paper and tuned values) is not a list of every default.
    """
    all_keys = sorted({k for r in runs for k in r.config})
    by_method: dict[tuple[str, str], list[Run]] = {}  # one method under one preset (a preset sets many values)
    for r in runs:
        by_method.setdefault((str(r.config.get("method.name")), str(r.config.get("preset.name"))), []).append(r)

    def differs(k: str, group: list[Run]) -> bool:
        return len({repr(r.config.get(k, "<unset>")) for r in group}) > 1

    # a method's own hyper-parameters name a setup only where runs OF THAT METHOD differ in them (the defaults of
    # two methods differ by nature); every other key wherever two runs differ
    differing = [k for k in all_keys if k not in SEED_KEYS and k not in ("method.name", "preset.name")
                 and (any(differs(k, g) for g in by_method.values()) if k.startswith("method.")
                      else differs(k, runs))]
    keys = ["method.name", *(["preset.name"] if differs("preset.name", runs) else []), *differing]
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(repr(r.config.get(k, "<unset>")) for k in keys), []).append(r)
    rows = []
    for members in groups.values():
        row: dict[str, object] = {k: members[0].config.get(k, "<unset>") for k in keys}
        row["seeds"] = len(members)
        row["golds"] = ", ".join(sorted({m.gold_agent for m in members}))
        for column, *_ in METRICS:
            xs = [v for r in members if (v := r.values[column]) is not None]
            row[column] = interval95(xs) if xs else (None, None)
        rows.append(row)
    rows.sort(key=lambda row: tuple(str(row[k]) for k in keys))
    return Comparison(keys, rows, list(missing or []))


def _cell(value: tuple[float | None, float | None], column: str) -> str:
    mean, half = value
    if mean is None:
        return "–"
    scale, digits = (100.0, 1) if not column.startswith(("ms/", "peak", "wall", "fluency", "locality KL")) else (1.0, 3)
    digits = 0 if column.startswith(("ms/", "peak", "wall")) else digits
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {half * scale:.{digits}f}" if half is not None else "")


def comparison_markdown(comp: Comparison) -> str:
    """The table as Markdown: setup keys, number of seeds, the agent the golds came from, each metric as
    ``mean ± 95% half-width``."""
    head = comp.keys + ["seeds", "golds"] + [c for c, *_ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in comp.rows:
        cells = [str(row[k]) for k in comp.keys] + [str(row["seeds"]), str(row["golds"])]
        cells += [_cell(row[c], c) for c, *_ in METRICS]  # type: ignore[arg-type]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "Rates in %, post-edit (sequential runs: after the whole stream), mean ± 95% Student-t half-width "
             "over seeds. Coherence columns: mean |p_LM - p_agent| x 100 (lower is better); locality KL in nats; "
             "fluency: n-gram entropy in bits; – : not measured (e.g. metrics.n_samples=0). golds: the agent the "
             "records were scored against (single: each case's own edit; batch: the whole batch; stream: every "
             "edit so far; docs/evaluation.md)."]
    if comp.missing:
        notes.append(f"Missing (no metrics.json: failed or unfinished): {', '.join(comp.missing)}")
    return "\n".join(lines + notes) + "\n"


def comparison_csv(comp: Comparison) -> str:
    """Tidy CSV: one line per setup x metric with mean, 95% half-width and number of seeds."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*comp.keys, "metric", "group", "higher_is_better", "mean", "ci95", "seeds", "golds"])
    for row in comp.rows:
        for column, _source, group, better in METRICS:
            mean, half = row[column]  # type: ignore[misc]
            w.writerow([*(row[k] for k in comp.keys), column, group, better,
                        "" if mean is None else mean, "" if half is None else half, row["seeds"], row["golds"]])
    return buf.getvalue()


def setup_label(row: dict, keys: list[str]) -> str:
    """A short name for a setup: the method, then ``key=value`` of the other distinguishing keys."""
    short = lambda k: k.split(".")[0] if k.endswith(".name") else k.rsplit(".", 1)[-1]  # noqa: E731  preset.name -> preset
    rest = ",".join(f"{short(k)}={row[k]}" for k in keys[1:])
    return f"{row[keys[0]]}" + (f" ({rest})" if rest else "")
