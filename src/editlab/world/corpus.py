"""Corpus sentences and documents (world.md section 3), kept as structured records.

Every sentence is first a record (type, facts, objects, label); its text and its evidence for the
Bayesian agent are both derived from that record, so the agent never parses text and cannot drift
from what the LM reads. Documents are lists of sentence indices; text is produced on demand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from editlab.errors import EditlabError
from editlab.world.config import CorpusConfig
from editlab.world.generative import Generative, false_objects
from editlab.world.kg import KG

ATOMIC, TF, OR, AND, NOT = 0, 1, 2, 3, 4
TYPE_NAMES = ("atomic", "tf", "or", "and", "not")


@dataclass(frozen=True)
class Sentences:
    """Structured sentence records (one row per distinct sentence, before the k resamples).

    ``fact_a``/``obj_a`` is the sentence's (first) operand; ``fact_b``/``obj_b`` the second operand
    of and/or sentences (-1 otherwise). ``label`` is the truth label of TF/and/or/not sentences
    (1 = "is true"). ``owner`` is the subject whose documents carry the sentence.
    """

    kind: np.ndarray
    fact_a: np.ndarray
    obj_a: np.ndarray
    fact_b: np.ndarray
    obj_b: np.ndarray
    label: np.ndarray
    owner: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.shape[0])


def draw_samples(gen: Generative, n_samples: int, min_modal: int, rng: np.random.Generator) -> np.ndarray:
    """(n_facts, n_samples) objects drawn from each fact's distribution; a fact's whole set is redrawn
    until at least ``min_modal`` samples are its modal object (vectorised over facts)."""
    n = len(gen.modal)
    cum = np.cumsum(gen.dist_p)
    base = np.r_[0.0, cum][gen.dist_ptr[:-1]]  # cumulative mass before each fact's row
    total = cum[gen.dist_ptr[1:] - 1] - base
    out = np.empty((n, n_samples), dtype=np.int64)
    todo = np.arange(n)
    while len(todo):
        u = rng.random((len(todo), n_samples)) * total[todo, None] + base[todo, None]
        idx = np.searchsorted(cum, u, side="right")
        idx = np.clip(idx, gen.dist_ptr[todo, None], gen.dist_ptr[todo + 1, None] - 1)
        draw = gen.dist_obj[idx]
        ok = (draw == gen.modal[todo, None]).sum(axis=1) >= min_modal
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def build_sentences(
    kg: KG, gen: Generative, samples: np.ndarray, cfg: CorpusConfig, rng: np.random.Generator
) -> Sentences:
    """All sentence records of the corpus, grouped by type in a fixed order."""
    n, m = samples.shape
    facts = np.arange(n)
    parts: list[tuple] = []
    # atomic: one per sample
    fa = np.repeat(facts, m)
    oa = samples.reshape(-1)
    parts.append((ATOMIC, fa, oa, -1, -1, np.ones(n * m, dtype=np.int8)))
    # TF: one per sample; true w.p. p_modal for the modal object, else w.p. 1 - p_modal
    is_modal = oa == gen.modal[fa]
    p_true = np.where(is_modal, gen.p_modal[fa], 1.0 - gen.p_modal[fa])
    parts.append((TF, fa, oa, -1, -1, (rng.random(n * m) < p_true).astype(np.int8)))

    def operand(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Modal sentence (0.5) or a false version of it (same fact, false object)."""
        false = false_objects(gen, kg, rows, rng)
        use_false = (rng.random(len(rows)) < 0.5) & (false >= 0)
        return np.where(use_false, false, gen.modal[rows]), ~use_false

    for kind, count in ((OR, cfg.n_or), (AND, cfg.n_and)):
        for _ in range(count):
            a_obj, a_true = operand(facts)
            b_fact = _other_subject_facts(kg, facts, rng)
            b_obj, b_true = operand(b_fact)
            truth = (a_true | b_true) if kind == OR else (a_true & b_true)
            swap = rng.random(n) < 0.5
            parts.append((kind, np.where(swap, b_fact, facts), np.where(swap, b_obj, a_obj),
                          np.where(swap, facts, b_fact), np.where(swap, a_obj, b_obj), truth.astype(np.int8),
                          kg.s[facts]))
    for _ in range(cfg.n_not):
        false = false_objects(gen, kg, facts, rng)
        has = false >= 0
        parts.append((NOT, facts[has], false[has], -1, -1, np.ones(int(has.sum()), dtype=np.int8)))
        parts.append((NOT, facts, gen.modal, -1, -1, np.zeros(n, dtype=np.int8)))

    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("kind", "fa", "oa", "fb", "ob", "label", "owner")}
    for part in parts:
        kind, fa_, oa_, fb_, ob_, lab = part[:6]
        k = len(lab)
        cols["kind"].append(np.full(k, kind, dtype=np.int8))
        cols["fa"].append(np.asarray(fa_, dtype=np.int64))
        cols["oa"].append(np.asarray(oa_, dtype=np.int64))
        cols["fb"].append(np.broadcast_to(np.asarray(fb_, dtype=np.int64), (k,)))
        cols["ob"].append(np.broadcast_to(np.asarray(ob_, dtype=np.int64), (k,)))
        cols["label"].append(lab)
        cols["owner"].append(part[6] if len(part) > 6 else kg.s[fa_])
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    return Sentences(cat["kind"], cat["fa"], cat["oa"], cat["fb"], cat["ob"], cat["label"], cat["owner"])


def _other_subject_facts(kg: KG, facts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each fact, a uniformly random fact of a different subject."""
    n = kg.n_facts
    out = rng.integers(0, n, size=len(facts))
    clash = kg.s[out] == kg.s[facts]
    while clash.any():
        if len(np.unique(kg.s)) < 2:
            raise EditlabError("and/or sentences need at least two subjects in the world")
        out[clash] = rng.integers(0, n, size=int(clash.sum()))
        clash = kg.s[out] == kg.s[facts]
    return out


def sentence_text(kg: KG, sents: Sentences) -> list[str]:
    """Surface text of every sentence record (plain words, single spaces)."""
    rel = kg.relations
    subj = kg.subjects
    obj = kg.objects
    fs, fr = kg.s, kg.r

    def fact(f: int, o: int) -> str:
        return f"{subj[fs[f]]} {rel[fr[f]]} {obj[o]}"

    word = ("false", "true")
    out: list[str] = []
    for kind, fa, oa, fb, ob, lab in zip(sents.kind.tolist(), sents.fact_a.tolist(), sents.obj_a.tolist(),
                                         sents.fact_b.tolist(), sents.obj_b.tolist(), sents.label.tolist()):
        if kind == ATOMIC:
            out.append(fact(fa, oa))
        elif kind == TF:
            out.append(f'"{fact(fa, oa)}" is {word[lab]}')
        elif kind == NOT:
            out.append(f'"not {fact(fa, oa)}" is {word[lab]}')
        else:
            op = "or" if kind == OR else "and"
            out.append(f'"{fact(fa, oa)} {op} {fact(fb, ob)}" is {word[lab]}')
    return out


def build_documents(
    sents: Sentences, n_subjects: int, cfg: CorpusConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Documents as (doc_ptr, sentence ids): each subject's sentences shuffled and cut into chunks of
    <= ``doc_sentences``, repeated ``resamples`` times with fresh shuffles (every sentence appears
    exactly ``resamples`` times). Order: resample-major, then subject, then chunk."""
    order = np.argsort(sents.owner, kind="stable")
    counts = np.bincount(sents.owner, minlength=n_subjects)
    starts = np.r_[0, np.cumsum(counts)]
    ids: list[np.ndarray] = []
    ptr = [0]
    for _ in range(cfg.resamples):
        for s in range(n_subjects):
            own = order[starts[s] : starts[s + 1]]
            if not len(own):
                continue
            own = own[rng.permutation(len(own))]
            for a in range(0, len(own), cfg.doc_sentences):
                chunk = own[a : a + cfg.doc_sentences]
                ids.append(chunk)
                ptr.append(ptr[-1] + len(chunk))
    return np.asarray(ptr, dtype=np.int64), np.concatenate(ids).astype(np.int64)


def document_texts(texts: list[str], doc_ptr: np.ndarray, sent_ids: np.ndarray,
                   start: int = 0, stop: int | None = None) -> Iterator[str]:
    """Texts of documents ``start:stop``: their sentences joined by ". " (no final period)."""
    stop = len(doc_ptr) - 1 if stop is None else stop
    base = int(doc_ptr[start])
    ids = sent_ids[base : int(doc_ptr[stop])].tolist()
    for d in range(start, stop):
        a, b = int(doc_ptr[d]) - base, int(doc_ptr[d + 1]) - base
        yield ". ".join([texts[i] for i in ids[a:b]])
