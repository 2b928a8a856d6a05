"""Typed, validated settings of an edit run: the ``edits`` and ``metrics`` nodes of conf/edit.yaml, and
:class:`EditRun`, everything ``edit.py`` hands to :func:`editlab.runs.edit.edit_run` in one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from editlab.errors import EditlabError

if TYPE_CHECKING:
    from editlab.editing.base import EditMethod
    from editlab.world.loading import World

MODES = ("single", "batch", "sequential")
TARGETS = ("certain", "credence")

@dataclass(frozen=True)
class EditsConfig:
    """Which cases, in which protocol.

    Attributes:
        n: number of edit cases (the first ``n`` of the split, in the world's seeded order).
        mode: ``single`` (apply, score, restore), ``batch`` (``batch_size`` at once, restore) or
            ``sequential`` (commit one batch after another).
        batch_size: requests per application (``single`` needs 1).
        eval_every: sequential: re-score every earlier edit every this many edits (retention curve).
        ckpt_every: sequential: Lightning checkpoint every this many edits (resume).
        weight: the agent's evidence weight per edit: ``n_prime`` (computed on the agent as it is when
            the edit arrives), ``case`` (the case record's n', computed on the fitted agent), or a number.
        trace: score the probes of the first ``trace`` cases after every optimizer step of the method
            (Figure 4 panels; each traced case costs one scoring pass per step).
        split: ``eval`` cases (``meta`` cases are for training editors).
        skip_correct: the run's one gate (evaluation.md). ``False``: every case is edited (the papers).
            ``True``: a case whose pre-edit greedy ``s1r1`` continuation already is o* (exact rule) is not
            given to the method and is recorded with ``edited: false``, the same for every method.
        target: what each request asks of the model: ``certain`` (p(o*) -> 1, every paper's target) or
            ``credence`` (p(o*) -> the agent's posterior p* for the request as evidence of weight n', the case's
            s1r1 gold; editing/loss.py "Credence targets"), for methods that ``supports_credence``.
    """

    n: int = 200
    mode: str = "single"
    batch_size: int = 1
    eval_every: int = 100
    ckpt_every: int = 50
    weight: str | float = "n_prime"
    trace: int = 0
    split: str = "eval"
    skip_correct: bool = False
    target: str = "certain"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EditlabError(f"edits.mode={self.mode} is not one of {', '.join(MODES)}")
        if int(self.trace) < 0:
            raise EditlabError(f"edits.trace={self.trace} must be >= 0 (number of cases to trace)")
        for key in ("n", "batch_size", "eval_every", "ckpt_every"):
            if int(getattr(self, key)) < 1:
                raise EditlabError(f"edits.{key}={getattr(self, key)} must be >= 1")
        if self.mode == "single" and self.batch_size != 1:
            raise EditlabError("edits.mode=single edits one case at a time; use edits.mode=batch with "
                               f"edits.batch_size={self.batch_size}")
        if not isinstance(self.skip_correct, bool):
            raise EditlabError(f"edits.skip_correct={self.skip_correct} must be true or false")
        if self.target not in TARGETS:
            raise EditlabError(f"edits.target={self.target} must be one of {', '.join(TARGETS)}")
        if self.split not in ("eval", "meta"):
            raise EditlabError(f"edits.split={self.split} must be eval or meta")
        if isinstance(self.weight, str) and self.weight not in ("n_prime", "case"):
            raise EditlabError(f"edits.weight={self.weight} must be n_prime, case or a number")
        if not isinstance(self.weight, str) and float(self.weight) < 0:
            raise EditlabError(f"edits.weight={self.weight} must be >= 0")


@dataclass(frozen=True)
class MetricsConfig:
    """How edits are scored (evaluation.md).

    Attributes:
        protocol: generative-accuracy hit rule of the paper tables: ``paper`` (substring) or ``exact``.
            Edit success always uses ``exact``.
        n_locality: size of the fixed, seeded locality fact set.
        n_samples: documents sampled per case for fluency/consistency (0 turns them off).
        sample_tokens: length of each sampled document in tokens.
    """

    protocol: str = "paper"
    n_locality: int = 100
    n_samples: int = 5
    sample_tokens: int = 64

    def __post_init__(self) -> None:
        if self.protocol not in ("paper", "exact"):
            raise EditlabError(f"metrics.protocol={self.protocol} must be paper or exact")
        if self.n_locality < 1 or self.n_samples < 0 or self.sample_tokens < 1:
            raise EditlabError("metrics.n_locality and metrics.sample_tokens must be >= 1, metrics.n_samples >= 0")


@dataclass(frozen=True)
class EditRun:
    """One edit run, built once by ``edit.py`` from the composed config (paths absolute, settings validated).

    Attributes:
        world: the opened world.
        checkpoint: the pretrained model's checkpoint directory.
        method: the method, built with its hyper-parameters.
        edits, metrics: the ``edits`` and ``metrics`` nodes.
        run_dir: where the run writes (predictable from the config, so a killed run finds itself again).
        seed: the edit run's seed (method randomness, locality set).
        run_config: the resolved config, written to ``run_config.yaml`` and compared on reuse.
        loggers: Lightning loggers the summary (and the sequential curve) go to.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        progress: show progress bars.
        overwrite: redo a finished run, or one with another config, in ``run_dir``.
        editor_path: a trained editor (``None``: where ``train.py task=editor`` writes it for ``checkpoint``).
        trainer: Lightning Trainer settings of the sequential protocol (``conf/trainer/sequential_edit.yaml``).
        cache_root: where method statistics are cached, one folder per model id (``paths.stats``; ``None``:
            ``<run_dir>/../.cache``).
        stats_dataset: a local text dataset the covariance statistics read instead of the world's corpus
            (``stats.dataset``; ``None``: the corpus).
    """

    world: World
    checkpoint: Path
    method: EditMethod
    edits: EditsConfig
    metrics: MetricsConfig
    run_dir: Path
    seed: int
    run_config: dict
    loggers: list = field(default_factory=list)
    device: str = "auto"
    progress: bool = True
    overwrite: bool = False
    editor_path: Path | None = None
    trainer: dict = field(default_factory=dict)
    cache_root: Path | None = None
    stats_dataset: Path | None = None
