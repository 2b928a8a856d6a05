"""The protocols for many edits (evaluation.md): each owns the model it edits, from the first edit to the last.

- ``single`` / ``batch`` (:class:`RestoringProtocol`): each edit (or batch of k edits: MEMIT, MALMEN,
  batched LoRA) is applied to the base model, scored, and restored bit-exactly (tested per method),
  so every case sees the same base model. A batch is scored against the agent that holds the whole
  batch (:class:`~editlab.world.stream.AgentStream`), a single edit against the case's own golds.
- ``sequential`` (:class:`SequentialProtocol`, a LightningModule): edits are applied one after another
  to one model and committed (LoRA merges each adapter into the weights before the next edit). Each
  step records the edit's *immediate* scores, with gold values from the agent that has accumulated the
  same edits (:class:`~editlab.world.stream.AgentStream`). Every ``eval_every`` edits, validation
  re-scores all edits so far on the current model: retention (how many earlier edits still hold, also
  per block of earlier edits: the retention matrix), locality drift against the base model, and
  coherence against the accumulated agent.

Who holds the model: the protocol, alone. The shared per-edit step (:class:`~editlab.runs.session.Session`)
takes the model as an argument and returns the method's handle; the protocol replaces its model with
``handle.restore()`` (the unwrapped base) or ``handle.commit()`` (the module to edit next, possibly a
wrapper). On resume, the method's state is loaded *with* the model before Lightning loads the weights,
so a memory/wrapper method can re-insert its modules first.

Why one Lightning epoch per sequential edit: the stream position is then ``current_epoch``, which a
checkpoint restores exactly, so a killed 1000-edit stream resumes at the next edit (no dataloader state
to rebuild), and Lightning's logging, checkpointing, progress and clean stops come for free. There is
no optimizer: each method runs its own update inside :meth:`SequentialProtocol.training_step`. The
Trainer's settings come from ``conf/trainer/sequential_edit.yaml``; only what the stream itself
determines (number of epochs, validation cadence, device) is derived here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from editlab.editing.base import EditFailed, EditHandle, EditMethod, unwrap
from editlab.errors import EditlabError
from editlab.eval.probes import CaseScores
from editlab.metrics import GenerativeAccuracy, ProbabilisticCoherence
from editlab.runs.results import ResultsWriter, write_jsonl
from editlab.runs.session import Session
from editlab.utils.jsonio import dumps, read_jsonl
from editlab.utils.progress import RunProgressBar
from editlab.utils.signals import StopOnSignal, save_atomically
from editlab.vocab import ATOMIC, has_object, hit_exact, is_target_probe
from editlab.world.stream import AgentStream


class RestoringProtocol:
    """``single`` / ``batch``: every edit starts from the base model, which each handle hands back restored.

    ``stream`` (batch mode): the agent the batch is scored against; it is reset to the fitted agent and takes
    every request of the batch, in order, before any gold is read. ``None`` (single mode): each case's own
    single-edit golds (the case records), ``gold_agent: single``.
    """

    def __init__(self, session: Session, model: nn.Module, mode: str, batch_size: int,
                 stream: AgentStream | None = None) -> None:
        self.session, self.model, self.mode, self.batch_size, self.stream = session, model, mode, batch_size, stream

    def run(self, cases: Sequence[dict], pre: list[CaseScores], pre_fluency: list[dict], writer: ResultsWriter,
            progress: bool = True) -> None:
        """Edit ``cases`` in batches of ``batch_size``; records go to ``writer``.

        Cases already in ``writer`` (a resumed run) are skipped: they are a prefix of ``cases``.
        """
        start, k = len(writer.records), self.batch_size
        bar = tqdm(total=len(cases), initial=start, disable=not progress, desc=f"edit ({self.mode})", unit="edit")
        for b in range(start, len(cases), k):
            batch = list(cases[b : b + k])
            handle, _, records = self.session.step(self.model, batch, b, pre[b : b + k], pre_fluency[b : b + k],
                                                   self.mode, b // k)
            self.model = handle.restore()
            for rec, fields in zip(records, self.golds(batch), strict=True):
                rec.update(fields)
            writer.append(records)
            bar.update(len(batch))
        bar.close()

    def golds(self, cases: Sequence[dict]) -> list[dict]:
        """The gold fields of the records of ``cases``, edited together (eval/records.py)."""
        if self.stream is None:
            return [{"gold_agent": "single"} for _ in cases]
        self.stream.replay([])
        for case in cases:
            self.stream.add(case)
        return [{"gold_agent": "batch", **self.stream.scored(case, "post")} for case in cases]


class SequentialProtocol(L.LightningModule):
    """``sequential``: apply ``cases`` in order, ``batch_size`` per step, as described in the module docstring."""

    def __init__(self, session: Session, model: nn.Module, cases: list[dict], pre: list[CaseScores],
                 pre_fluency: list[dict], batch_size: int, eval_every: int, stream: AgentStream,
                 writer: ResultsWriter, curve_path: Path) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.session, self.cases, self.pre, self.pre_fluency = session, cases, pre, pre_fluency
        self.batch_size, self.eval_every = batch_size, eval_every
        self.stream, self.writer, self.curve_path = stream, writer, Path(curve_path)
        self.model = model
        self.prefix = ""
        # the base snapshot for drift (not a registered buffer: a resumed run rebuilds it from the base checkpoint)
        self.base_weights = {n: p.detach().clone() for n, p in unwrap(model).named_parameters()}

    @property
    def n_steps(self) -> int:
        return -(-len(self.cases) // self.batch_size)

    @property
    def n_done(self) -> int:
        return len(self.stream.applied)

    def train_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)  # one step per epoch; the epoch number is the stream position

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        b = self.current_epoch * self.batch_size
        cases = self.cases[b : b + self.batch_size]
        # no per-edit locality here: locality drift is measured at every evaluation point instead
        args = (cases, b, self.pre[b : b + self.batch_size], self.pre_fluency[b : b + self.batch_size], "sequential",
                self.current_epoch)
        try:
            handle, post, records = self.session.step(self.model, *args, locality=False)
        except EditFailed as exc:  # the method wrote nothing: record the edit as failed and go on with the stream
            failed = replace(self.session, method=_Unchanged(reason=str(exc)))
            handle, post, records = failed.step(self.model, *args, locality=False)
            for rec in records:
                rec["method"] = self.session.method.name
        self.model = handle.commit()
        self.prefix = handle.prefix
        for case in cases:  # the model holds the whole batch now, so the agent takes all of it before any gold
            self.stream.add(case)
        for rec, case in zip(records, cases, strict=True):
            rec.update(gold_agent="stream", **self.stream.scored(case, "post"))
        self.writer.append(records)
        exact = np.mean([hit_exact(p.gen["s1r1"], c["requested_object"]) for p, c in zip(post, cases, strict=True)])
        self.log_dict({"seq/immediate_exact": float(exact), "seq/edit_time_s": records[0]["time_s"],
                       "seq/peak_mem_mb": records[0]["peak_mem_mb"], "seq/edits": float(self.n_done)},
                      on_step=True, on_epoch=False, batch_size=len(cases))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        point = self.evaluate()
        self.log_dict({f"seq/{k}": float(v) for k, v in point.items() if not isinstance(v, list)}, batch_size=1)
        with self.curve_path.open("a") as f:
            f.write(dumps(point) + "\n")

    def evaluate(self) -> dict:
        """Score every edit so far on the current model: one point of the sequential curves."""
        done = self.cases[: self.n_done]
        now = self.session.score(self.model, done, self.prefix)
        hold = np.array([hit_exact(sc.gen["s1r1"], c["requested_object"]) for sc, c in zip(now, done, strict=True)])
        blocks = [float(hold[a : a + self.eval_every].mean()) for a in range(0, len(hold), self.eval_every)]
        immediate = [hit_exact(r["post"]["gen"]["s1r1"], c["requested_object"])
                     for r, c in zip(self.writer.records, done, strict=True)]
        loc = self.session.locality(self.model, self.prefix)
        return {"edits": self.n_done, "retention": float(hold.mean()), "retention_by_block": blocks,
                "weight_drift": self.weight_drift(),
                "immediate_exact": float(np.mean(immediate)), "locality_agree": loc["agree"],
                "locality_agree_answer": loc["agree_answer"], "locality_acc": loc["acc"], "locality_kl": loc["kl"],
                **_accuracy_now(done, now, [self.stream.targets(c) for c in done]),
                **_coherence(done, now, [self.stream.gold(c) for c in done])}

    @torch.no_grad()
    def weight_drift(self) -> float:
        """||W - W0|| / ||W0|| over all base parameters (Frobenius): how far the stream moved the model."""
        diff = base = 0.0
        for n, p in unwrap(self.model).named_parameters():
            w0 = self.base_weights[n]
            diff += float((p.detach().double() - w0.double()).pow(2).sum())
            base += float(w0.double().pow(2).sum())
        return (diff / base) ** 0.5

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["editlab"] = {"applied": self.stream.applied, "prefix": self.prefix,
                                 "method_state": self.session.method.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before it loads the weights: a wrapper/memory method re-inserts its modules here
        state = checkpoint["editlab"]
        self.model = self.session.method.load_state_dict(state["method_state"], self.model)
        self.stream.replay(state["applied"])
        self.prefix = state["prefix"]
        self.writer.keep(self.n_done)
        if self.curve_path.exists():
            rows = read_jsonl(self.curve_path, "delete it and the run's checkpoints/ to restart the stream")
            write_jsonl(self.curve_path, [r for r in rows if r["edits"] <= self.n_done], dumps)


@dataclass
class _Unchanged(EditMethod):
    """Stands in for a method whose edit failed (:class:`~editlab.editing.base.EditFailed`): changes nothing and
    puts the reason in the record's ``info.failed``, so the failure is scored (the model kept its answer)."""

    reason: str = ""

    def apply(self, model: nn.Module, requests: Sequence, ctx: Any, on_step: Any = None) -> EditHandle:
        return EditHandle(model, info={"failed": self.reason})


def _accuracy_now(cases: list[dict], scores: list[CaseScores], targets: list[dict[str, str]]) -> dict[str, float]:
    """Exact generative accuracy of every atomic probe on the answer of the agent holding the edits so far
    (``targets``: per case, :meth:`~editlab.world.stream.AgentStream.targets`), ``<kind>_acc_now``."""
    acc = GenerativeAccuracy()
    hits, kinds = [], []
    for case, sc, tg in zip(cases, scores, targets, strict=True):
        for pr in case["probes"]:
            if is_target_probe(pr, "post"):
                hits.append(hit_exact(sc.gen[pr["kind"]], tg[pr["kind"]]))
                kinds.append(ATOMIC.index(pr["kind"]))
    acc.update(torch.tensor(hits, dtype=torch.bool), torch.tensor(kinds, dtype=torch.long))
    return {f"{k.removesuffix('_acc')}_acc_now": float(v) for k, v in acc.compute().items()}


def _coherence(cases: list[dict], scores: list[CaseScores], golds: list[list[float]]) -> dict[str, float]:
    """Coherence against ``golds`` (the metric class): atomic probes ``gold_prob_coh``, sentences ``gold_logic_err``."""
    coh = ProbabilisticCoherence(kinds=("gold_prob_coh", "gold_logic_err"), suffix="")
    p, g, group = [], [], []
    for case, sc, gold in zip(cases, scores, golds, strict=True):
        for pr, pi, gi in zip(case["probes"], sc.p, gold, strict=True):
            p.append(pi)
            g.append(gi)
            group.append(0 if has_object(pr) else 1)
    coh.update(torch.tensor(p, dtype=torch.float64), torch.tensor(g, dtype=torch.float64), torch.tensor(group))
    return {k: float(v) for k, v in coh.compute().items()}


class EditCheckpoint(Callback):
    """``last.ckpt`` every ``every`` steps of the stream, written atomically (temp file + rename).

    Lightning's ModelCheckpoint keys its cadence on optimizer steps, and this module takes none (each
    method runs its own update), so it would never save mid-stream.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = Path(path), every

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            save_atomically(trainer, self.path)


DERIVED = ("max_epochs", "check_val_every_n_epoch", "accelerator", "devices", "logger", "callbacks",
           "enable_progress_bar", "default_root_dir")


def sequential_trainer(settings: dict, protocol: SequentialProtocol, last: Path, ckpt_every: int,
                       device: torch.device, run_dir: Path, loggers: list, progress: bool) -> L.Trainer:
    """The stream's Trainer: ``settings`` (conf/trainer/sequential_edit.yaml) plus what the stream determines.

    One epoch per step of the stream, validation (a curve point) every ``eval_every`` edits, the model's
    device, ``last.ckpt`` every ``ckpt_every`` edits and on SIGTERM/SIGINT after the current edit
    (:class:`~editlab.utils.signals.StopOnSignal`, so a stopped stream resumes like a killed one).
    """
    clash = sorted(k for k in settings if k in DERIVED)
    if clash:
        raise EditlabError(f"trainer.{clash[0]} is set by the sequential protocol (edits.*, device, progress); "
                           "remove it from the trainer config")
    k = protocol.batch_size
    callbacks: list[Callback] = [EditCheckpoint(last, max(1, ckpt_every // k)), StopOnSignal(last, at="epoch")]
    if progress:
        callbacks.append(RunProgressBar(refresh_rate=1))
    try:
        return L.Trainer(max_epochs=protocol.n_steps, check_val_every_n_epoch=max(1, protocol.eval_every // k),
                         accelerator=device.type, devices=[device.index] if device.index is not None else 1,
                         logger=loggers, callbacks=callbacks, enable_progress_bar=progress,
                         default_root_dir=str(run_dir), **settings)
    except (TypeError, ValueError) as exc:
        raise EditlabError(f"bad trainer settings ({str(exc).splitlines()[0]}); see "
                           "conf/trainer/sequential_edit.yaml") from None


def fit_sequential(trainer: L.Trainer, protocol: SequentialProtocol, ckpt_path: str | None) -> None:
    """``trainer.fit`` the stream, quiet about what is by design (no optimizer, few workers, eval-mode scoring)."""
    with warnings.catch_warnings():
        for msg in (".*does not have many workers.*", ".*returned `None`, this fit will run with no optimizer.*",
                    ".*module\\(s\\) in eval mode.*"):
            warnings.filterwarnings("ignore", message=msg)
        trainer.fit(protocol, ckpt_path=ckpt_path)
    curve = protocol.curve_path
    if not curve.exists() or json.loads(curve.read_text().splitlines()[-1])["edits"] != protocol.n_done:
        with curve.open("a") as f:  # the final point when n is not a multiple of eval_every
            f.write(dumps(protocol.evaluate()) + "\n")
