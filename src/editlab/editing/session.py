"""One editing run's shared state and its per-edit step: apply, score, measure, (restore or commit).

Used by both protocols (evaluation.md, "Protocols for many edits"): :mod:`editlab.editing.runner`
(single / batch: every edit starts from the base model and is restored bit-exactly afterwards) and
:mod:`editlab.editing.sequential` (continual: edits are committed one after another). Everything the
record of an edit needs (records.py) is produced here, once, for both.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest
from editlab.eval.locality import LocalityState
from editlab.eval.probes import CaseScores, PromptEncoder, score_cases
from editlab.eval.scoring import sample_continuations
from editlab.metrics.consistency import stated_objects
from editlab.metrics.fluency import ngram_entropy


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak RSS so far (Linux KiB -> MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fluency_scores(texts: Sequence[str], case: dict) -> dict[str, float]:
    """ROME's fluency (mean weighted n-gram entropy) and consistency (share of "s1 r1 x" with x = o*)."""
    prompt = f"{case['subject']} {case['relation']}"
    stated = [x for t in texts for x in stated_objects(t, prompt)]
    consistency = sum(x == case["requested_object"] for x in stated) / len(stated) if stated else float("nan")
    return {"fluency": sum(ngram_entropy(t) for t in texts) / len(texts), "consistency": consistency}


@dataclass
class Session:
    """What every edit of a run shares: the model, the method, the probes and the base-model references."""

    model: nn.Module
    method: EditMethod
    ctx: EditContext
    enc: PromptEncoder
    max_new_tokens: int
    loc_facts: list[dict]
    base_loc: LocalityState
    seed: int = 0
    n_samples: int = 5
    sample_tokens: int = 64
    trace: int = 0  # trace the first ``trace`` cases of the stream (Figure 4 panels)
    _trace_rows: list = field(default_factory=list, repr=False)
    _tracing: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def apply(self, cases: Sequence[dict], index: int) -> tuple[EditHandle, dict]:
        """Apply the requests of ``cases`` at once; seeded by ``index`` so any edit can be replayed exactly."""
        requests = [EditRequest.from_case(c) for c in cases]
        self._trace_rows = []
        self._tracing = index < self.trace
        on_step = None
        if self._tracing:
            on_step = lambda step, model: self._trace_rows.append(  # noqa: E731
                (step, score_cases(model, self.enc, cases, self.max_new_tokens, decode=False)))
            self._trace_rows.append((0, score_cases(self.model, self.enc, cases, self.max_new_tokens, decode=False)))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1_000_003 + index)
            t0 = time.perf_counter()
            handle = self.method.apply(self.model, requests, self.ctx, on_step)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            wall = time.perf_counter() - t0
        return handle, {"time_s": wall / len(cases), "peak_mem_mb": peak_memory_mb(self.device),
                        "info": handle.info}

    def score(self, model: nn.Module, cases: Sequence[dict], prefix: str = "") -> list[CaseScores]:
        return score_cases(model, self.enc, cases, self.max_new_tokens, prefixes=[prefix] * len(cases))

    def locality(self, model: nn.Module, prefix: str = "") -> dict[str, float]:
        state = LocalityState.score(model, self.enc, self.loc_facts, self.max_new_tokens, prefix)
        return state.compare(self.base_loc, self.loc_facts)

    def fluency(self, model: nn.Module, cases: Sequence[dict], prefix: str = "", salt: int = 0) -> list[dict]:
        """Per case: ``n_samples`` documents sampled from BOS + the subject's name, scored by :func:`fluency_scores`."""
        if self.n_samples <= 0:
            return [{} for _ in cases]
        prompts = self.enc.prompts([(prefix, c["subject"]) for c in cases for _ in range(self.n_samples)])
        texts = sample_continuations(model, self.enc.tok, prompts, self.sample_tokens, seed=self.seed + salt)
        k = self.n_samples
        return [fluency_scores([c["subject"] + t for t in texts[i * k : (i + 1) * k]], c)
                for i, c in enumerate(cases)]

    def step(self, cases: Sequence[dict], index: int, pre: Sequence[CaseScores], pre_fluency: Sequence[dict],
             mode: str, batch: int, locality: bool = True) -> tuple[EditHandle, list[CaseScores], list[dict]]:
        """Apply the edits of ``cases`` (stream positions ``index``...), score them, and build their records.

        Returns the handle (the caller restores or commits it), the post-edit scores and the records
        (records.py) without protocol-specific fields. ``pre`` / ``pre_fluency`` are these cases' entries.
        """
        handle, cost = self.apply(cases, index)
        post = self.score(handle.model, cases, handle.prefix)
        loc = self.locality(handle.model, handle.prefix) if locality else None
        flu = self.fluency(handle.model, cases, handle.prefix, salt=index)
        records = []
        for j, case in enumerate(cases):
            rec = {"case_id": case["case_id"], "index": index + j, "method": self.method.name, "mode": mode,
                   "batch": batch, "pre": pre[j].to_json(), "post": post[j].to_json(), **cost}
            if loc is not None:
                rec["locality"] = loc
            if flu[j]:
                rec["fluency"] = {"pre": pre_fluency[j]["fluency"], "post": flu[j]["fluency"],
                                  "consistency_pre": pre_fluency[j]["consistency"],
                                  "consistency_post": flu[j]["consistency"]}
            if (tr := self.trace_json(j)) is not None:
                rec["trace"] = tr
            records.append(rec)
        return handle, post, records

    def trace_json(self, j: int) -> dict | None:
        """The trace of the ``j``-th case of the last apply (records.py ``trace``), if tracing."""
        if not self._tracing:
            return None
        return {"step": [s for s, _ in self._trace_rows], "p": [rows[j].p for _, rows in self._trace_rows],
                "p_false": [rows[j].p_false for _, rows in self._trace_rows]}
