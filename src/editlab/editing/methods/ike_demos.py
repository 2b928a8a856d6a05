"""IKE's demonstration pool and retrievers (methods/ike.py): what is retrieved, and by which similarity.

The pool has one record per case of the world's **meta** split (the training pool of Zheng et al. 2023;
the meta subjects are disjoint from every evaluation subject, world.md section 6, so a retrieved
demonstration never tells the model an evaluation fact). Each record is a new fact ``F = "s r o*"`` and
its three demonstrations, written in the world's own language (a "New Fact: F / Prompt: P" pair of
the paper is two sentences of one document here, ``"F. P"``):

- ``copy``: the fact itself answered with the new object, ``"F. s r o*"``;
- ``update``: another prompt of the fact answered with the new object. The formal language has no
  paraphrases; the other prompts that the edit must set are its equivalents
  (editing/meta_data.py: the TF sentence), so ``'F. "s r o*" is true'``;
- ``retain``: a neighbour query answered as the world answers it before the edit, ``"F. s' r o'"``:
  a fact of another meta subject with the same relation (CounterFact's neighbourhood prompts share
  the relation; any other subject's fact when the relation has no other), with its modal object.

Retrievers embed text as unit vectors; similarity is their dot product (the paper:
``all-MiniLM-L6-v2`` mean-pooled, normalised, ``dot_score``). No sentence-embedding model is available
offline, so:

- ``hidden``: the base model's own last hidden states, mean-pooled over the text's tokens (BOS
  excluded) and normalised: the sentence-transformer recipe with the edited model as the encoder;
- ``tfidf``: TF-IDF over the text's words (smoothed idf, l2-normalised), a lexical retriever.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditRequest
from editlab.editing.meta_data import Target, equivalents, subject_facts
from editlab.errors import EditlabError
from editlab.vocab import prompt_ids, with_prefix

KINDS = ("copy", "update", "retain")
RETRIEVERS = ("hidden", "tfidf")


def demonstration(fact: EditRequest, answered: Target) -> str:
    """``"F. P o"``: the new fact ``F`` as a sentence, then a prompt answered (one "New Fact / Prompt" pair)."""
    return with_prefix(f"{fact.sentence}.", f"{answered.prompt} {answered.target}")


def query_text(fact: EditRequest) -> str:
    """What a new fact is retrieved by: ``"F. s r"`` (the paper's query, "New Fact: F / Prompt: s r")."""
    return with_prefix(f"{fact.sentence}.", fact.prompt)


@dataclass(frozen=True)
class Demo:
    """One pool record: a meta case's new fact and its demonstration of each kind."""

    case_id: str
    fact: EditRequest
    copy: str
    update: str
    retain: str

    def of(self, kind: str) -> str:
        return getattr(self, kind)


def demo_pool(cases: Sequence[dict], seed: int) -> list[Demo]:
    """The pool of ``cases`` (the meta split); the retain neighbour of each is drawn with a seed per case."""
    facts: dict[Target, str] = {}
    for c in cases:
        for subj, fact in subject_facts(c):
            facts.setdefault(fact, subj)
    ordered = sorted(facts.items(), key=lambda kv: (kv[1], kv[0].prompt, kv[0].target))
    out = []
    for c in cases:
        request = EditRequest.from_case(c)
        others = [f for f, s in ordered if s != c["subject"]]
        if not others:
            raise EditlabError("method ike: the meta split needs cases of at least 2 subjects for retain "
                               "demonstrations; build a world with more meta cases (data.cases.n_meta_cases)")
        same = [f for f in others if f.prompt == f"{facts[f]} {c['relation']}"]
        neighbour = random.Random(f"{seed}:{c['case_id']}").choice(same or others)
        update = next(t for t in equivalents(request) if t.prompt != request.prompt)
        out.append(Demo(c["case_id"], request, demonstration(request, Target(request.prompt, request.target)),
                        demonstration(request, update), demonstration(request, neighbour)))
    return out


def kind_counts(k: int, ratio: Sequence[float]) -> list[int]:
    """How many of ``k`` demonstrations are copy / update / retain: ``ratio`` by largest remainders
    (1:3:4 of 32 is 4, 12, 16, the paper's fixed order list)."""
    total = float(sum(ratio))
    exact = [k * r / total for r in ratio]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(ratio)), key=lambda i: counts[i] - exact[i])[: k - sum(counts)]:
        counts[i] += 1
    return counts


class TfIdf:
    """TF-IDF vectors over lower-cased words (``.`` and ``"`` stripped) of a fixed pool of texts."""

    def __init__(self, texts: Sequence[str]) -> None:
        docs = [self.words(t) for t in texts]
        df = Counter(w for d in docs for w in set(d))
        self.vocab = {w: i for i, w in enumerate(sorted(df))}
        self.idf = {w: math.log((1 + len(docs)) / (1 + n)) + 1.0 for w, n in df.items()}

    @staticmethod
    def words(text: str) -> list[str]:
        return text.lower().replace(".", " ").replace('"', " ").split()

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, V) sparse unit rows; words outside the pool's vocabulary are left out."""
        rows, cols, vals = [], [], []
        for i, t in enumerate(texts):
            tf = Counter(w for w in self.words(t) if w in self.vocab)
            norm = math.sqrt(sum((n * self.idf[w]) ** 2 for w, n in tf.items())) or 1.0
            for w, n in tf.items():
                rows.append(i)
                cols.append(self.vocab[w])
                vals.append(n * self.idf[w] / norm)
        return torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
                                       torch.tensor(vals, dtype=torch.float32), (len(texts), len(self.vocab)),
                                       check_invariants=True)


@torch.no_grad()
def mean_hidden(model: nn.Module, tok: PreTrainedTokenizerBase, texts: Sequence[str], batch: int = 64) -> torch.Tensor:
    """(N, H) unit vectors: the model's last hidden states mean-pooled over each text's tokens (BOS excluded)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch):
        rows = prompt_ids(tok, texts[i: i + batch])
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)], mask[j, : len(r)] = torch.tensor(r), 1
        h = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                  use_cache=False).hidden_states[-1].float()
        keep = mask.to(device).float()
        keep[:, 0] = 0.0  # BOS carries no text
        mean = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        out.append(nn.functional.normalize(mean, dim=-1))
    return torch.cat(out).cpu()


class Retriever:
    """Ranks the pool by similarity to new facts, with one of :data:`RETRIEVERS`."""

    def __init__(self, kind: str, pool: Sequence[Demo], model: nn.Module, tok: PreTrainedTokenizerBase) -> None:
        if kind not in RETRIEVERS:
            raise EditlabError(f"method ike: retriever={kind!r} must be one of {', '.join(RETRIEVERS)}")
        self.kind, self.pool, self.model, self.tok = kind, list(pool), model, tok
        texts = [d.copy for d in self.pool]  # the paper's pool text: "New Fact: F / Prompt: F" per record
        self.tfidf = TfIdf(texts) if kind == "tfidf" else None
        self.keys = self.embed(texts)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tfidf is not None:
            return self.tfidf.embed(texts)
        return mean_hidden(self.model, self.tok, texts)

    def rank(self, facts: Sequence[EditRequest], k: int) -> list[int]:
        """Indices of the ``k`` pool records most similar to ``facts`` (most similar first; the query of
        several facts is the normalised mean of their embeddings; ties by pool order)."""
        q = self.embed([query_text(f) for f in facts])
        q = q.to_dense() if q.is_sparse else q
        q = nn.functional.normalize(q.mean(0), dim=0)
        scores = (torch.sparse.mm(self.keys, q[:, None]) if self.keys.is_sparse else self.keys @ q[:, None])[:, 0]
        order = sorted(range(len(self.pool)), key=lambda i: (-float(scores[i]), i))
        return order[: min(k, len(order))]
