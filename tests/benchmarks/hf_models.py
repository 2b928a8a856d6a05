"""Hugging Face model directories the benchmark tests make (nothing can be downloaded): a config-built GPT-2 or Llama
with random weights and a BPE of the test records in its style (:mod:`editlab.lm.random_hf`), a small text dataset
for covariance statistics, and benchmark files of the test records."""

from __future__ import annotations

import json
from pathlib import Path

from editlab.lm.random_hf import random_causal_lm
from tests.benchmarks.test_formats import COUNTERFACT, KNOWEDIT, ZSRE

SENTENCES = [
    "The mother tongue of Danielle Darrieux is French.", "Léon Blum, a native speaker of French.",
    "What university did Watts Humphrey attend? Trinity College.", "The place of death of Leo Arons is Berlin.",
    "J. R. R. Tolkien is a native speaker of English.", "Montesquieu spoke the language of France.",
    "The University of Michigan and the Illinois Institute of Technology are universities.",
    "nq question: who played desmond doss father in hacksaw ridge? Hugo Weaving played him.",
]


def _texts() -> list[str]:
    """Every string of the test records, so the tokenizer knows their characters."""
    out = list(SENTENCES)

    def walk(x):
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk([COUNTERFACT, ZSRE, KNOWEDIT])
    return out


def make_model(out: Path, kind: str, vocab_size: int, width: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A config-built GPT-2 or Llama with random weights and a BPE of the test records in its style, in ``out``."""
    return random_causal_lm(out, kind, _texts() * 4, vocab_size, width, layers, seed)


def write_text(path: Path, n_rows: int = 40) -> Path:
    """A JSON Lines text dataset (a ``text`` column) for covariance statistics and context prefixes."""
    rows = [{"text": " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(3))} for i in range(n_rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_records(path: Path, records: list, copies: int = 1) -> Path:
    """A benchmark file of ``records`` repeated ``copies`` times (case ids renumbered where the format has them)."""
    out = []
    for _ in range(copies):
        for r in records:
            rec = json.loads(json.dumps(r))
            if "case_id" in rec:
                rec["case_id"] = len(out)
            out.append(rec)
    path.write_text(json.dumps(out))
    return path


def write_zsre_train(path: Path, n: int = 12) -> Path:
    """A zsRE train file of ``n`` records about ``n`` distinct subjects (meta-training splits by subject)."""
    out = []
    for i in range(n):
        rec = json.loads(json.dumps(ZSRE[0]))
        name = f"Watts Humphrey{i}"
        rec.update(subject=name, src=rec["src"].replace("Watts Humphrey", name),
                   rephrase=rec["rephrase"].replace("Watts Humphrey", name))
        out.append(rec)
    path.write_text(json.dumps(out))
    return path
