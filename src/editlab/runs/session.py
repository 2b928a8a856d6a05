"""What every edit of a run shares, and the one per-edit step: apply, score, measure, build the records.

Used by both protocols of :mod:`editlab.runs.protocols` (evaluation.md, "Protocols for many edits"),
which own the model and decide what happens to an edit afterwards (restore or commit). The session
holds no model: every call takes the model it scores, so there is exactly one owner of the model
state per run (the protocol) and nothing to keep in sync. Everything the record of an edit needs
(records.py) is produced here, once, for both protocols.

The one gate of a run (``edits.skip_correct``, evaluation.md): with it on, a case the model already
answers exactly before the edit (its pre-edit greedy ``s1r1`` continuation passes
:func:`~editlab.vocab.hit_exact` against o*) is not given to the method and is recorded with
``"edited": false``; every method sees the same requests. No method gates on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest
from editlab.eval.locality import LocalityState
from editlab.eval.probes import CaseScores, score_cases
from editlab.eval.scoring import sample_continuations
from editlab.metrics.consistency import case_consistency
from editlab.metrics.fluency import case_fluency
from editlab.utils.hardware import peak_memory_mb
from editlab.vocab import PromptEncoder, case_prompt, hit_exact


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def request_credence(case: dict) -> float:
    """The agent's posterior of o* once it holds the request (the case's s1r1 gold of the requested object, p* < 1 by
    the n' that reaches ``data.agent.target``): the ``edits.target=credence`` target. A batch or stream is scored
    against the agent holding all its edits, whose p(o*) can differ where edits share a fact; the target stays the
    request's own."""
    return next(float(p["p_post"]) for p in case["probes"] if p["kind"] == "s1r1" and p["target"] == "requested")


def timed_apply(method: EditMethod, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext, seed: int,
                on_step: Callable[[int, nn.Module], None] | None = None) -> tuple[EditHandle, dict]:
    """``method.apply`` under its own seed (the global generator is restored afterwards), with its cost per request:
    ``{"time_s", "peak_mem_mb", "info"}`` (GPU work synchronised before the clock stops)."""
    device = device_of(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        handle = method.apply(model, requests, ctx, on_step=on_step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    return handle, {"time_s": wall / len(requests), "peak_mem_mb": peak_memory_mb(device), "info": handle.info}


def fluency_scores(texts: Sequence[str], case: dict) -> dict[str, float]:
    """ROME's fluency and consistency of one case's sampled documents (metrics/fluency.py, metrics/consistency.py)."""
    return {"fluency": case_fluency(texts), "consistency": case_consistency(texts, case_prompt(case),
                                                                            case["requested_object"])}


@dataclass
class Session:
    """What every edit of a run shares: the method, its context, the probes and the base-model references."""

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
    skip_correct: bool = False  # edits.skip_correct: cases answered exactly before the edit are not edited
    implications: Callable[[dict], tuple[EditRequest, ...]] | None = None  # a case's implied facts (uses_implied)
    credence: bool = False  # edits.target=credence: each request asks for its agent posterior (request_credence)

    def apply(self, model: nn.Module, cases: Sequence[dict], index: int,
              on_step: Callable[[int, nn.Module], None] | None = None) -> tuple[EditHandle, dict]:
        """Apply the requests of ``cases`` at once; seeded by ``index`` so any edit can be replayed exactly."""
        requests = [EditRequest.from_case(c) for c in cases]
        if self.credence:
            requests = [replace(r, credence=request_credence(c)) for r, c in zip(requests, cases, strict=True)]
        if self.implications is not None:
            requests = [replace(r, implied=self.implications(c)) for r, c in zip(requests, cases, strict=True)]
        return timed_apply(self.method, model, requests, self.ctx, self.seed * 1_000_003 + index, on_step)

    def unchanged(self, model: nn.Module) -> EditHandle:
        """The handle of an edit that changes nothing: scores ``model`` as it is (with the prefix the method's
        committed edits imply); ``restore`` gives back its base (``unwrap(model)``, the model the restoring
        protocols pass), ``commit`` keeps ``model`` as it is (a wrapper with the committed edits included)."""
        return EditHandle(model, prefix=self.method.context_prefix())

    def to_edit(self, cases: Sequence[dict], pre: Sequence[CaseScores]) -> list[bool]:
        """Per case, whether it is given to the method: always, unless ``skip_correct`` and the pre-edit greedy
        ``s1r1`` continuation already is the requested object (exact rule)."""
        if not self.skip_correct:
            return [True] * len(cases)
        return [not hit_exact(p.gen["s1r1"], c["requested_object"]) for c, p in zip(cases, pre, strict=True)]

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

    def step(self, model: nn.Module, cases: Sequence[dict], index: int, pre: Sequence[CaseScores],
             pre_fluency: Sequence[dict], mode: str, batch: int, locality: bool = True
             ) -> tuple[EditHandle, list[CaseScores], list[dict]]:
        """Apply the edits of ``cases`` (stream positions ``index``...) to ``model``, score them, build their records.

        Returns the handle (the calling protocol restores or commits it), the post-edit scores and the
        records (records.py) without protocol-specific fields. ``pre`` / ``pre_fluency`` are these cases'
        entries. Cases at stream positions below ``trace`` are traced: their probes are scored before the
        first and after every optimizer step of the method (a hook passed to ``apply``, Figure 4).

        With ``skip_correct``, only the cases :meth:`to_edit` keeps are applied (none: no ``apply`` at all,
        the handle is :meth:`unchanged`); every case is scored on the resulting model, and every record
        says ``edited``. A case not edited has ``time_s`` 0 and empty ``info``.
        """
        trace: list[tuple[int, list[CaseScores]]] | None = [] if index < self.trace else None
        hook = None
        if trace is not None:
            hook = lambda step, m: trace.append((step, score_cases(m, self.enc, cases, self.max_new_tokens,  # noqa: E731
                                                                   decode=False)))
            hook(0, model)
        edit = self.to_edit(cases, pre)
        chosen = [c for c, e in zip(cases, edit, strict=True) if e]
        if chosen:
            handle, cost = self.apply(model, chosen, index, on_step=hook)
        else:
            handle = self.unchanged(model)
            cost = {"time_s": 0.0, "peak_mem_mb": peak_memory_mb(device_of(model)), "info": {}}
        post = self.score(handle.model, cases, handle.prefix)
        loc = self.locality(handle.model, handle.prefix) if locality else None
        flu = self.fluency(handle.model, cases, handle.prefix, salt=index)
        records = []
        for j, case in enumerate(cases):
            rec = {"case_id": case["case_id"], "index": index + j, "method": self.method.name, "mode": mode,
                   "batch": batch, "edited": edit[j], "pre": pre[j].to_json(), "post": post[j].to_json(),
                   **(cost if edit[j] else {**cost, "time_s": 0.0, "info": {}})}
            if loc is not None:
                rec["locality"] = loc
            if flu[j]:
                rec["fluency"] = {"pre": pre_fluency[j]["fluency"], "post": flu[j]["fluency"],
                                  "consistency_pre": pre_fluency[j]["consistency"],
                                  "consistency_post": flu[j]["consistency"]}
            if trace is not None:
                rec["trace"] = {"step": [s for s, _ in trace], "p": [rows[j].p for _, rows in trace],
                                "p_false": [rows[j].p_false for _, rows in trace]}
            records.append(rec)
        return handle, post, records
