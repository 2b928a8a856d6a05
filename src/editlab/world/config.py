"""Typed, validated configuration of a world build.

Hydra composes ``conf/data/*.yaml``; :func:`world_config` turns the plain dict into these frozen
dataclasses and rejects impossible values with one-line errors, so library code never sees a
DictConfig. The world's cache key is a hash of :func:`canonical_json` of this config plus
``SCHEMA_VERSION``: bump the version whenever an artifact's format or content rule changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from editlab.errors import EditlabError
from editlab.utils.typed import from_dict
from editlab.world.sources import source_config

SCHEMA_VERSION = 2  # 2: stats.json reports split sizes and case subjects separately


@dataclass(frozen=True)
class GenerativeConfig:
    """world.md section 2. ``mgtp``: minimum ground-truth probability, in (0.5, 1]."""

    mgtp: float = 0.6
    distractors: str = "support"  # "support" (type-consistent) | "any" (the paper's behaviour)

    def __post_init__(self) -> None:
        if not 0.5 < self.mgtp <= 1.0:
            raise EditlabError(f"data.generative.mgtp={self.mgtp} must lie in (0.5, 1]")
        if self.distractors not in ("support", "any"):
            raise EditlabError("data.generative.distractors must be 'support' or 'any'")


@dataclass(frozen=True)
class CorpusConfig:
    """world.md section 3: samples per fact, logical sentences per fact, documents."""

    n_samples: int = 10
    n_or: int = 1
    n_and: int = 1
    n_not: int = 1
    resamples: int = 5
    doc_sentences: int = 10

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise EditlabError(f"data.corpus.n_samples={self.n_samples} must be >= 1")
        for name in ("n_or", "n_and", "n_not"):
            if getattr(self, name) < 0:
                raise EditlabError(f"data.corpus.{name} must be >= 0")
        if self.resamples < 1 or self.doc_sentences < 1:
            raise EditlabError("data.corpus.resamples and data.corpus.doc_sentences must be >= 1")

    @property
    def min_modal(self) -> int:
        """Smallest count of modal samples accepted: more than half of ``n_samples``."""
        return self.n_samples // 2 + 1


@dataclass(frozen=True)
class TokenizerConfig:
    """world.md section 4: byte-level BPE trained on a sample of documents."""

    vocab_size: int = 32000
    train_docs: int = 200_000

    def __post_init__(self) -> None:
        if self.vocab_size < 300:
            raise EditlabError(f"data.tokenizer.vocab_size={self.vocab_size} must be >= 300 (256 bytes + specials)")
        if self.train_docs < 1:
            raise EditlabError("data.tokenizer.train_docs must be >= 1")


@dataclass(frozen=True)
class AgentConfig:
    """world.md section 5: evidence weighting and edit weight rule."""

    upstream_weighting: str = "posterior"  # "posterior" (spec) | "mentions" (the paper's)
    weight: str | int = "n_prime"  # "n_prime" or a fixed integer weight such as 1000
    target: float = 0.95

    def __post_init__(self) -> None:
        if self.upstream_weighting not in ("posterior", "mentions"):
            raise EditlabError("data.agent.upstream_weighting must be 'posterior' or 'mentions'")
        if self.weight != "n_prime" and not (isinstance(self.weight, int) and self.weight >= 0):
            raise EditlabError(f"data.agent.weight={self.weight!r} must be 'n_prime' or a non-negative integer")
        if not 0.5 < self.target < 1.0:
            raise EditlabError(f"data.agent.target={self.target} must lie in (0.5, 1)")


@dataclass(frozen=True)
class CasesConfig:
    """world.md section 6: the edit benchmark and the editor meta-training split."""

    n_cases: int = 5000
    meta_fraction: float = 0.2
    n_meta_cases: int = 2000
    max_candidates: int = 20
    p_downstream_try: float = 0.8
    p_reinforce: float = 0.5

    def __post_init__(self) -> None:
        if self.n_cases < 1 or self.n_meta_cases < 0:
            raise EditlabError("data.cases.n_cases must be >= 1 and data.cases.n_meta_cases >= 0")
        if not 0.0 <= self.meta_fraction < 1.0:
            raise EditlabError(f"data.cases.meta_fraction={self.meta_fraction} must lie in [0, 1)")
        for name in ("p_downstream_try", "p_reinforce"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise EditlabError(f"data.cases.{name} must lie in [0, 1]")
        if self.max_candidates < 1:
            raise EditlabError("data.cases.max_candidates must be >= 1")


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world's artifacts (and so its hash)."""

    name: str
    seed: int
    kg_source: str
    kg: Any  # the chosen source's Config dataclass
    max_facts: int | None = None
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    cases: CasesConfig = field(default_factory=CasesConfig)

    def __post_init__(self) -> None:
        if self.max_facts is not None and self.max_facts < 1:
            raise EditlabError(f"data.max_facts={self.max_facts} must be >= 1 or null")


def world_config(raw: dict) -> WorldConfig:
    """Validate a plain dict (the resolved ``data`` node) into a :class:`WorldConfig`.

    Keys that do not change artifacts (``cache_dir``) are ignored here.
    """
    raw = dict(raw)
    raw.pop("cache_dir", None)
    known = {"name", "seed", "kg", "max_facts", "generative", "corpus", "tokenizer", "agent", "cases"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EditlabError(f"unknown key(s) {unknown} in data; valid keys: {', '.join(sorted(known))}")
    kg = dict(raw.get("kg") or {})
    source = kg.pop("source", "synthetic")
    return WorldConfig(
        name=str(raw.get("name", "world")),
        seed=int(raw.get("seed", 0)),
        kg_source=str(source),
        kg=source_config(str(source), kg),
        max_facts=raw.get("max_facts"),
        generative=from_dict(GenerativeConfig, raw.get("generative"), "data.generative"),
        corpus=from_dict(CorpusConfig, raw.get("corpus"), "data.corpus"),
        tokenizer=from_dict(TokenizerConfig, raw.get("tokenizer"), "data.tokenizer"),
        agent=from_dict(AgentConfig, raw.get("agent"), "data.agent"),
        cases=from_dict(CasesConfig, raw.get("cases"), "data.cases"),
    )


def config_dict(cfg: WorldConfig) -> dict:
    """The config as plain JSON-able data, with the KG source folded back into ``kg``."""
    d = dataclasses.asdict(cfg)
    d["kg"] = {"source": d.pop("kg_source"), **d["kg"]}
    return d


def canonical_json(cfg: WorldConfig) -> str:
    """Sorted-key compact JSON of the config and schema version: the input of the world hash."""
    return json.dumps({"schema": SCHEMA_VERSION, **config_dict(cfg)}, sort_keys=True, separators=(",", ":"))


def world_hash(cfg: WorldConfig) -> str:
    """First 12 hex digits of SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:12]
