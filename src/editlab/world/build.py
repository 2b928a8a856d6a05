"""Build (or reuse) a world directory: the one pipeline behind every world artifact.

Stages: KG -> used facts -> generative model -> samples and sentences -> documents and
``corpus.jsonl`` -> tokenizer -> tokenized corpus -> agent -> edit cases -> statistics. Each stage
draws from its own seeded random stream, so changing one stage's code never shifts another's draws.
The directory is ``<cache_dir>/<name>-<hash>`` and is written atomically (see
:mod:`editlab.utils.atomic`); same config + seed gives byte-identical files.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from editlab.utils.atomic import atomic_directory, is_complete
from editlab.world import corpus as C
from editlab.world.agent import fit_agent
from editlab.world.cases import build_cases, split_slots
from editlab.world.config import SCHEMA_VERSION, WorldConfig, canonical_json, config_dict, world_hash
from editlab.world.evidence import evidence_counts, evidence_items
from editlab.world.generative import build_generative
from editlab.world.kg import KG
from editlab.world.sources import source_module
from editlab.world.stats import world_stats
from editlab.world.tokenizer import save_tokenizer, tokenize_documents, train_tokenizer, verify_sample

# One random stream per stage: np.random.default_rng([seed, STREAM]).
STREAM = {"select": 1, "generative": 2, "samples": 3, "sentences": 4, "documents": 5, "tokenizer": 6, "cases": 7,
          "verify": 8}


@dataclass
class BuildReport:
    """Where the world is, whether it was built now, and how long each stage took (seconds)."""

    directory: Path
    built: bool
    timings: dict[str, float] = field(default_factory=dict)


def world_dir(cfg: WorldConfig, cache_dir: Path) -> Path:
    """The directory a config's world lives in."""
    return Path(cache_dir) / f"{cfg.name}-{world_hash(cfg)}"


def select_facts(kg: KG, max_facts: int | None, rng: np.random.Generator) -> KG:
    """Keep whole subjects in a seeded order while the fact count stays <= ``max_facts``."""
    if max_facts is None or kg.n_facts <= max_facts:
        return kg
    per_subject = np.bincount(kg.s, minlength=len(kg.subjects))
    order = rng.permutation(len(kg.subjects))
    keep_subj = np.zeros(len(kg.subjects), dtype=bool)
    keep_subj[order[np.cumsum(per_subject[order]) <= max_facts]] = True
    return kg.subset(keep_subj[kg.s], meta={**kg.meta, "used_facts": int(per_subject[keep_subj].sum())})


def _dump_jsonl(path: Path, records: Iterator[dict] | list[dict]) -> None:
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")


def build_world(cfg: WorldConfig, cache_dir: Path, progress: bool = True) -> BuildReport:
    """Build the world for ``cfg`` under ``cache_dir`` unless a complete one exists."""
    key = world_hash(cfg)
    final = world_dir(cfg, cache_dir)
    if is_complete(final, key):
        return BuildReport(final, built=False)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def rng(stage: str) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, STREAM[stage]])

    def stage(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - stage.t, 3)
        stage.t = now
        if progress:
            print(f"[world] {name}: {timings[name]:.2f}s", file=sys.stderr)

    stage.t = t_all
    with atomic_directory(final, key) as out:
        kg = source_module(cfg.kg_source).load(cfg.kg, cfg.seed)
        stage("kg")
        kg = select_facts(kg, cfg.max_facts, rng("select"))
        case_rng = rng("cases")
        splits = split_slots(kg, cfg.cases, case_rng)  # fail fast on an impossible n_cases
        gen = build_generative(kg, cfg.generative, rng("generative"))
        stage("generative")
        samples = C.draw_samples(gen, cfg.corpus.n_samples, cfg.corpus.min_modal, rng("samples"))
        sents = C.build_sentences(kg, gen, samples, cfg.corpus, rng("sentences"))
        texts = C.sentence_text(kg, sents)
        stage("sentences")
        doc_ptr, sent_ids = C.build_documents(sents, len(kg.subjects), cfg.corpus, rng("documents"))
        n_docs = len(doc_ptr) - 1

        def docs(a: int, b: int) -> Iterator[str]:
            return C.document_texts(texts, doc_ptr, sent_ids, a, b)

        with open(out / "corpus.jsonl", "w") as f:
            for a in range(0, n_docs, 20000):
                f.writelines(json.dumps({"text": t}) + "\n" for t in docs(a, min(n_docs, a + 20000)))
        stage("corpus")
        n_train = min(cfg.tokenizer.train_docs, n_docs)
        pick = np.sort(rng("tokenizer").choice(n_docs, size=n_train, replace=False))
        sample = (next(docs(int(d), int(d) + 1)) for d in pick)
        tok = train_tokenizer(sample, n_train, cfg.tokenizer.vocab_size)
        save_tokenizer(tok, out)
        stage("tokenizer")
        # one unit per sentence form encoded (standalone, continuation), then per document assembled: the
        # sentence encoding is most of the time, so a bar over documents alone sat at 0% for minutes
        with tqdm(total=2 * len(texts) + n_docs, desc="tokenize (sentences, documents)", unit="item",
                  disable=not progress, file=sys.stderr) as bar:
            tok_meta = tokenize_documents(tok, texts, doc_ptr, sent_ids, out, progress=bar.update)
        verify_sample(tok, docs, out, 200, rng("verify"))
        stage("tokenize")
        rows, objs, pos, spr = evidence_items(sents)
        U, D = evidence_counts(rows, objs, pos, spr, kg.r, gen.support, cfg.corpus.resamples)
        agent = fit_agent(kg.s, kg.r, gen.support, U, D, kg.upstream, cfg.agent.upstream_weighting)
        agent.save(str(out / "agent.npz"))
        stage("agent")
        total = cfg.cases.n_cases + cfg.cases.n_meta_cases
        with tqdm(total=total, desc="cases", unit="case", disable=not progress, file=sys.stderr) as bar:
            eval_cases, meta_cases = build_cases(kg, gen, agent, cfg.cases, cfg.agent, splits, case_rng,
                                                 bar.update)
        _dump_jsonl(out / "cases.jsonl", eval_cases)
        _dump_jsonl(out / "meta_cases.jsonl", meta_cases)
        stage("cases")
        _write_world_json(out, cfg, kg, gen)
        _dump_jsonl(out / "facts.jsonl", _fact_records(kg, gen))
        np.savez(out / "sentences.npz", kind=sents.kind, fact_a=sents.fact_a, obj_a=sents.obj_a,
                 fact_b=sents.fact_b, obj_b=sents.obj_b, label=sents.label, owner=sents.owner)
        stats = world_stats(kg, gen, samples, sents, cfg, n_docs, tok_meta["n_tokens"], eval_cases, meta_cases,
                            {k: len(v) for k, v in splits.subjects.items()})
        (out / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
        stage("write")
    timings["total"] = round(time.perf_counter() - t_all, 3)
    return BuildReport(final, built=True, timings=timings)


def _write_world_json(out: Path, cfg: WorldConfig, kg: KG, gen) -> None:
    down = kg.downstream
    world = {
        "schema": SCHEMA_VERSION,
        "hash": world_hash(cfg),
        "config": config_dict(cfg),
        "config_canonical": canonical_json(cfg),
        "relations": [
            {"id": r, "name": name,
             "upstream": kg.relations[kg.upstream[r]] if r in kg.upstream else None,
             "downstream": kg.relations[down[r]] if r in down else None,
             "support": [kg.objects[o] for o in gen.support[r].tolist()]}
            for r, name in enumerate(kg.relations)
        ],
        "subjects": list(kg.subjects),
        "objects": list(kg.objects),
        "kg_meta": kg.meta,
    }
    (out / "world.json").write_text(json.dumps(world, sort_keys=True) + "\n")


def _fact_records(kg: KG, gen) -> Iterator[dict]:
    for i in range(kg.n_facts):
        objs, p = gen.distribution(i)
        up = int(gen.upstream_object[i])
        dis = int(gen.distractor[i])
        yield {
            "fact": i,
            "subject": kg.subjects[kg.s[i]],
            "relation": kg.relations[kg.r[i]],
            "kg_object": kg.objects[kg.o[i]],
            "modal": kg.objects[gen.modal[i]],
            "p_modal": float(gen.p_modal[i]),
            "distractor": kg.objects[dis] if dis >= 0 else None,
            "upstream_object": kg.objects[up] if up >= 0 else None,
            "distribution": [[kg.objects[o], float(q)] for o, q in zip(objs.tolist(), p.tolist())],
        }
