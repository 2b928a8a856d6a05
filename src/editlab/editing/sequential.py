"""Sequential (continual) editing as a LightningModule: one training "epoch" = the next edit (or batch).

evaluation.md, "Protocols for many edits", ``sequential``: edits are applied one after another to one
model and committed (LoRA merges each adapter into the weights before the next edit). Each step
records the edit's *immediate* scores, with gold values from a Bayesian agent that has accumulated
the same edits (its n' weight computed on the accumulated agent, like the model sees the edits in
order). Every ``eval_every`` edits, validation re-scores all edits so far on the current model:
retention (how many earlier edits still hold, also per block of earlier edits: the retention
matrix), locality drift against the base model, and coherence against the accumulated agent.

Why one epoch per edit: the stream position is then Lightning's ``current_epoch``, which a checkpoint
restores exactly, so a killed 1000-edit stream resumes at the next edit (no dataloader state to
rebuild), and Lightning's logging, checkpointing and progress come for free. There is no optimizer:
each method runs its own update inside :meth:`training_step`.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from editlab.editing.results import ResultsWriter
from editlab.editing.session import Session
from editlab.eval.probes import ATOMIC, CaseScores
from editlab.eval.scoring import hit_exact
from editlab.world.agent import Agent
from editlab.world.gold import Ids, case_gold


class AgentStream:
    """The agent that accumulates the stream's edits, replayable from the list of edits (resume)."""

    def __init__(self, base: Agent, ids: Ids, weight_rule: str | float, target: float = 0.95) -> None:
        self.base, self.ids, self.weight_rule, self.target = base, ids, weight_rule, target
        self.agent = base
        self.applied: list[tuple[int, int, int, float]] = []
        self.edited: set[tuple[int, int]] = set()

    def weight(self, case: dict) -> float:
        i = case["ids"]
        if self.weight_rule == "n_prime":  # n' on the agent as it is now, like the LM sees edits in order
            return float(self.agent.n_prime(i["subject"], i["relation"], i["requested_object"], self.target)[0])
        if self.weight_rule == "case":
            return float(case["edit_weight"])
        return float(self.weight_rule)

    def add(self, case: dict) -> None:
        i = case["ids"]
        self.push(i["subject"], i["relation"], i["requested_object"], self.weight(case))

    def push(self, s: int, r: int, o: int, w: float) -> None:
        # drop the parent: a 1000-edit stream never reverts, and each parent would stay alive otherwise
        self.agent = replace(self.agent.edit(s, r, o, w), parent=None)
        self.applied.append((s, r, o, w))
        self.edited.add((s, r))

    def replay(self, applied: list) -> None:
        self.agent, self.applied, self.edited = self.base, [], set()
        for s, r, o, w in applied:
            self.push(int(s), int(r), int(o), float(w))

    def gold(self, case: dict) -> list[float]:
        return case_gold(self.agent, self.ids, case, self.edited)


def _coherence(cases: list[dict], scores: list[CaseScores], golds: list[list[float]]) -> dict[str, float]:
    """Mean |p_LM - gold| over atomic probes and over logical sentences (p(true)), against ``golds``."""
    atom, logic = [], []
    for case, sc, gold in zip(cases, scores, golds, strict=True):
        for pr, p, g in zip(case["probes"], sc.p, gold, strict=True):
            (atom if "object" in pr else logic).append(abs(p - g))
    return {"gold_prob_coh": float(np.mean(atom)), "gold_logic_err": float(np.mean(logic))}


class SequentialEditing(L.LightningModule):
    """Apply ``cases`` in order, ``batch_size`` per step, scoring as described in the module docstring."""

    def __init__(self, session: Session, cases: list[dict], pre: list[CaseScores], pre_fluency: list[dict],
                 batch_size: int, eval_every: int, stream: AgentStream, writer: ResultsWriter,
                 curve_path: Path) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.session, self.cases, self.pre, self.pre_fluency = session, cases, pre, pre_fluency
        self.batch_size, self.eval_every = batch_size, eval_every
        self.stream, self.writer, self.curve_path = stream, writer, Path(curve_path)
        self.model = session.model
        self.prefix = ""
        # the base snapshot for drift (not a registered buffer: a resumed run rebuilds it from the base checkpoint)
        self.base_weights = {n: p.detach().clone() for n, p in session.model.named_parameters()}

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
        s = self.session
        s.model = self.model
        # no per-edit locality here: locality drift is measured at every evaluation point instead
        handle, post, records = s.step(cases, b, self.pre[b : b + self.batch_size],
                                       self.pre_fluency[b : b + self.batch_size], "sequential", self.current_epoch,
                                       locality=False)
        self.model = s.model = handle.commit()
        self.prefix = handle.prefix
        for case in cases:  # the model holds the whole batch now, so the agent takes all of it before any gold
            self.stream.add(case)
        for rec, case in zip(records, cases, strict=True):
            rec["gold_post"] = self.stream.gold(case)
        self.writer.append(records)
        exact = np.mean([hit_exact(p.gen["s1r1"], c["requested_object"]) for p, c in zip(post, cases, strict=True)])
        self.log_dict({"seq/immediate_exact": float(exact), "seq/edit_time_s": records[0]["time_s"],
                       "seq/peak_mem_mb": records[0]["peak_mem_mb"], "seq/edits": float(self.n_done)},
                      on_step=True, on_epoch=False, batch_size=len(cases))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        point = self.evaluate()
        self.log_dict({f"seq/{k}": float(v) for k, v in point.items() if not isinstance(v, list)}, batch_size=1)
        with self.curve_path.open("a") as f:
            f.write(json.dumps(point) + "\n")

    def evaluate(self) -> dict:
        """Score every edit so far on the current model: one point of the sequential curves."""
        done = self.cases[: self.n_done]
        now = self.session.score(self.model, done, self.prefix)
        hold = np.array([hit_exact(sc.gen["s1r1"], c["requested_object"]) for sc, c in zip(now, done, strict=True)])
        blocks = [float(hold[a : a + self.eval_every].mean()) for a in range(0, len(hold), self.eval_every)]
        immediate = [hit_exact(r["post"]["gen"]["s1r1"], c["requested_object"])
                     for r, c in zip(self.writer.records, done, strict=True)]
        loc = self.session.locality(self.model, self.prefix)
        acc = {k: float(np.mean([_hit_target(c, sc, k) for sc, c in zip(now, done, strict=True)])) for k in ATOMIC}
        return {"edits": self.n_done, "retention": float(hold.mean()), "retention_by_block": blocks,
                "weight_drift": self.weight_drift(),
                "immediate_exact": float(np.mean(immediate)), "locality_agree": loc["agree"],
                "locality_acc": loc["acc"], "locality_kl": loc["kl"],
                **{f"{k}_acc_now": v for k, v in acc.items()},
                **_coherence(done, now, [self.stream.gold(c) for c in done])}

    @torch.no_grad()
    def weight_drift(self) -> float:
        """||W - W0|| / ||W0|| over all parameters (Frobenius): how far the stream moved the model."""
        diff = base = 0.0
        for n, p in self.model.named_parameters():
            w0 = self.base_weights[n]
            diff += float((p.detach().double() - w0.double()).pow(2).sum())
            base += float(w0.double().pow(2).sum())
        return (diff / base) ** 0.5

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["editlab"] = {"applied": self.stream.applied, "prefix": self.prefix,
                                 "method_state": self.session.method.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["editlab"]
        self.stream.replay(state["applied"])
        self.prefix = state["prefix"]
        self.model = self.session.model = self.session.method.load_state_dict(state["method_state"], self.model)
        self.writer.keep(self.n_done)
        if self.curve_path.exists():
            rows = [json.loads(x) for x in self.curve_path.read_text().splitlines() if x.strip()]
            self.curve_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["edits"] <= self.n_done))


class EditCheckpoint(Callback):
    """``last.ckpt`` every ``every`` steps of the stream, written atomically (temp file + rename).

    Lightning's ModelCheckpoint keys its cadence on optimizer steps, and this module takes none (each
    method runs its own update), so it would never save mid-stream.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = Path(path), every

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            trainer.save_checkpoint(tmp)
            os.replace(tmp, self.path)


def _hit_target(case: dict, sc: CaseScores, kind: str) -> bool:
    """Exact hit of the probe's post-edit target (s1r1: the request; others: the single-edit new argmax)."""
    want = "requested" if kind == "s1r1" else "new_argmax"
    obj = next(p["object"] for p in case["probes"] if p["kind"] == kind and p["target"] == want)
    return hit_exact(sc.gen[kind], obj)
