"""IKE (methods/ike.py, ike_demos.py): retrieval from the meta split, the prompt's order and kinds, the budget.

Each core check is a function run on the real code and on a deliberately broken variant kept here, which it
must reject: a retriever that ranks least similar first, a pool built from the evaluation split, and a prefix
whose demonstrations are in the wrong order or of the wrong kinds.
"""

from __future__ import annotations

import pytest
import torch

from editlab.editing.base import EditContext, EditRequest
from editlab.editing.methods.ike import IKE
from editlab.editing.methods.ike_demos import Demo, Retriever, TfIdf, demo_pool, kind_counts
from editlab.errors import EditlabError
from editlab.vocab import prompt_ids


def check_ranks_meta_by_similarity(retriever: Retriever, meta_cases: list[dict], eval_cases: list[dict]) -> None:
    """A meta case's own fact retrieves that case first; every retrieved record is a meta case, ranked by
    descending similarity to the query."""
    for c in meta_cases[:10]:
        assert retriever.pool[retriever.rank([EditRequest.from_case(c)], 1)[0]].case_id == c["case_id"]
    meta_ids = {c["case_id"] for c in meta_cases}
    for c in eval_cases[:10]:
        req = EditRequest.from_case(c)
        ranked = retriever.rank([req], 8)
        assert all(retriever.pool[i].case_id in meta_ids and retriever.pool[i].case_id.startswith("meta-")
                   for i in ranked)
        keys = retriever.keys.to_dense() if retriever.keys.is_sparse else retriever.keys
        q = retriever.embed([f"{req.sentence}. {req.prompt}"])
        scores = (keys @ (q.to_dense() if q.is_sparse else q)[0]).tolist()
        assert [scores[i] for i in ranked] == sorted(scores, reverse=True)[:8]


class LeastSimilarFirst(Retriever):
    """Broken: ranks the pool in ascending similarity."""

    def rank(self, facts, k):
        return list(reversed(super().rank(facts, len(self.pool))))[:k]


def test_retrieval_takes_the_most_similar_meta_demonstrations(tiny_world, tiny_lm):
    meta, cases = tiny_world.meta_cases, tiny_world.cases
    for kind in ("tfidf", "hidden"):
        check_ranks_meta_by_similarity(Retriever(kind, demo_pool(meta, 0), tiny_lm.model, tiny_lm.tok), meta, cases)
    with pytest.raises(AssertionError):
        check_ranks_meta_by_similarity(LeastSimilarFirst("tfidf", demo_pool(meta, 0), None, tiny_lm.tok), meta, cases)
    with pytest.raises(AssertionError):  # a pool of evaluation cases
        check_ranks_meta_by_similarity(Retriever("tfidf", demo_pool(cases, 0), None, tiny_lm.tok), cases, cases)


def test_pool_demonstrations_are_the_three_kinds(tiny_world):
    d = demo_pool(tiny_world.meta_cases, 0)[0]
    f = d.fact
    assert d.copy == f"{f.sentence}. {f.prompt} {f.target}"
    assert d.update == f'{f.sentence}. "{f.sentence}" is true'
    neighbour = d.retain.removeprefix(f"{f.sentence}. ")
    assert not neighbour.startswith(f.subject) and f" {f.relation} " in f" {neighbour} "
    assert kind_counts(32, [1, 3, 4]) == [4, 12, 16] and kind_counts(8, [1, 3, 4]) == [1, 3, 4]
    assert sum(kind_counts(5, [1, 3, 4])) == 5


def check_prefix(method: IKE, req: EditRequest) -> None:
    """The prefix is: the retrieved records least similar first, kinds in the configured counts, then the
    edit's copy demonstration and the edit."""
    prefix = method.build_prefix([req])
    ranked = method._retriever.rank([req], method.k)
    records: list[Demo] = [method._retriever.pool[i] for i in reversed(ranked)]
    demos = method.demonstrations([req])
    assert [d.split(". ")[0] for d in demos] == [r.fact.sentence for r in records]
    kinds = [next(kind for kind in ("copy", "update", "retain") if r.of(kind) == d) for r, d in zip(records, demos)]
    assert [kinds.count(k) for k in ("copy", "update", "retain")] == kind_counts(method.k, method.ratio)
    assert prefix == " ".join(f"{d}." for d in demos) + f" {req.sentence}. {req.prompt} {req.target}. {req.sentence}."


class MostSimilarFirst(IKE):
    """Broken: the most similar demonstration first, far from the edit."""

    def demonstrations(self, facts):
        return list(reversed(super().demonstrations(facts)))


class CopiesOnly(IKE):
    """Broken: every retrieved record as a copy demonstration."""

    def demonstrations(self, facts):
        return [self._retriever.pool[i].copy for i in reversed(self._retriever.rank(facts, self.k))]


def test_prefix_order_and_kinds(tiny_world, tiny_lm):
    ctx = EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_world.dir)
    req = EditRequest.from_case(tiny_world.cases[0])
    for cls, ok in ((IKE, True), (MostSimilarFirst, False), (CopiesOnly, False)):
        method = cls(k=8, retriever="tfidf", max_prefix_tokens=2000)
        method.prepare(tiny_lm.model, ctx)
        if ok:
            check_prefix(method, req)
        else:
            with pytest.raises(AssertionError):
                check_prefix(method, req)


def test_budget_drops_least_similar_demonstrations_first(tiny_world, tiny_lm):
    ctx = EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_world.dir)
    req = EditRequest.from_case(tiny_world.cases[0])
    full = IKE(k=8, retriever="tfidf", max_prefix_tokens=2000)
    full.prepare(tiny_lm.model, ctx)
    demos = full.demonstrations([req])
    cut = IKE(k=8, retriever="tfidf", max_prefix_tokens=100)
    cut.prepare(tiny_lm.model, ctx)
    prefix = cut.build_prefix([req])
    assert len(prompt_ids(tiny_lm.tok, [prefix])[0]) - 1 <= 100
    kept = [d for d in demos if d in prefix]
    assert 0 < len(kept) < len(demos) and kept == demos[len(demos) - len(kept):]  # the most similar stay
    assert prefix.endswith(f"{req.sentence}.")
    one_more = f"{demos[len(demos) - len(kept) - 1]}. {prefix}"  # the prefix keeps every demonstration that fits
    assert len(prompt_ids(tiny_lm.tok, [one_more])[0]) - 1 > 100
    default = IKE(retriever="tfidf")  # null budget: max_position_embeddings (256 here) minus reserve_tokens (64)
    default.prepare(tiny_lm.model, ctx)
    assert len(prompt_ids(tiny_lm.tok, [default.build_prefix([req])])[0]) - 1 <= 192


def test_sequential_memory_round_trips_as_text(tiny_world, tiny_lm):
    ctx = EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_world.dir)
    method = IKE(k=4, retriever="tfidf")
    method.prepare(tiny_lm.model, ctx)
    reqs = [EditRequest.from_case(c) for c in tiny_world.cases[:2]]
    for r in reqs:
        handle = method.apply(tiny_lm.model, [r], ctx)
        prefix = handle.prefix
        assert handle.commit() is tiny_lm.model
    assert method.context_prefix() == prefix and all(f"{r.sentence}." in prefix for r in reqs)
    clone = IKE(k=4, retriever="tfidf")
    assert clone.load_state_dict(method.state_dict(), tiny_lm.model) is tiny_lm.model
    assert clone.memory == method.memory and clone.context_prefix() == prefix
    assert isinstance(method.state_dict()["memory"], torch.Tensor)


def test_bad_input_is_one_clear_error(tiny_lm):
    for bad in ({"k": -1}, {"ratio": [1, 3]}, {"ratio": [0, 0, 0]}, {"retriever": "bm25"}, {"max_prefix_tokens": 0}):
        with pytest.raises(EditlabError, match="method ike"):
            IKE(**bad)
    with pytest.raises(EditlabError, match="world directory"):
        IKE().prepare(tiny_lm.model, EditContext(tokenizer=tiny_lm.tok))
    assert TfIdf(["a b", "b c"]).embed(["b"]).to_dense()[0].norm() == pytest.approx(1.0)
