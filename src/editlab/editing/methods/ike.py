"""IKE: in-context knowledge editing with retrieved demonstrations (Zheng et al. 2023, "Can We Edit Factual
Knowledge by In-Context Learning?"; reference code ``Zce1112zslx/IKE``, ``icl.py``).

Like ICE (methods/ice.py) no weight changes: the handle's ``prefix`` goes between BOS and every probe.
IKE's prefix teaches the model, by example, what to do with a new fact: ``k`` demonstrations
retrieved from a pool built from the **meta** split (methods/ike_demos.py: never an evaluation case),
each of one of three kinds (copy / update / retain), then the edit's own copy demonstration, then the
new fact. For one edit ``F = "s r o*"``::

    d_k. ... d_1. F. s r o*. F. <probe>

``d_1`` is the most similar record, nearest to the edit (the reference sorts the retrieved records by
similarity and reverses them). The kinds are a seeded shuffle of ``k`` slots split copy:update:retain
by ``ratio`` (the reference's fixed list of 32 slots: 4 copy, 12 update, 16 retain, ``random.shuffle``d
per edit), so the kind of a record is random, not chosen by similarity.

Context budget: a prompt longer than the model was trained on is out of its distribution (and past
``max_position_embeddings`` it cannot be run at all). The prefix may take ``max_prefix_tokens`` tokens
(``null``: ``max_position_embeddings - reserve_tokens``, room for the longest probe and its
continuation); a longer one loses its least similar demonstrations first, then the copy
demonstrations of its oldest edits; the new facts themselves are never dropped.

Several edits (a batch, or the committed memory of a sequential run plus the new edit) share one
prefix: the demonstrations retrieved for the normalised mean of their query embeddings, each edit's
copy demonstration, then every new fact (ICE's prefix of the same edits). The committed edits and
their prefix are method state, stored as text like ICE's memory.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from editlab.editing.base import EditContext, EditHandle, EditMethod, EditRequest, StepHook
from editlab.editing.meta_data import Target
from editlab.editing.methods.ice import lines_tensor, tensor_lines
from editlab.editing.methods.ike_demos import KINDS, RETRIEVERS, Retriever, demo_pool, demonstration, kind_counts
from editlab.editing.registry import register
from editlab.errors import EditlabError
from editlab.vocab import prompt_ids


@register
@dataclass
class IKE(EditMethod):
    """In-context editing with retrieved copy / update / retain demonstrations (see the module docstring).

    Attributes:
        k: retrieved demonstrations per prefix (the paper: 32).
        ratio: copy : update : retain shares of the ``k`` slots (the paper: 1:3:4).
        retriever: ``tfidf`` (words) or ``hidden`` (the base model's mean-pooled last hidden states); the
            paper's sentence-transformer is not available offline (ike_demos.py, docs/methods.md).
        max_prefix_tokens: token budget of the prefix (``null``: the model's ``max_position_embeddings``
            minus ``reserve_tokens``); a longer prefix drops its least similar demonstrations first.
        reserve_tokens: room kept for the probe and its continuation when ``max_prefix_tokens`` is null.
    """

    name = "ike"
    in_context = True
    k: int = 32
    ratio: list[float] = field(default_factory=lambda: [1.0, 3.0, 4.0])
    retriever: str = "tfidf"
    max_prefix_tokens: int | None = None
    reserve_tokens: int = 64
    memory: list[EditRequest] = field(default_factory=list, init=False, repr=False)
    committed: str = field(default="", init=False, repr=False)
    _retriever: Retriever | None = field(default=None, init=False, repr=False, compare=False)
    _tok: object = field(default=None, init=False, repr=False, compare=False)
    _budget: int = field(default=0, init=False, repr=False, compare=False)
    _seed: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.k < 0 or self.reserve_tokens < 0:
            raise EditlabError(f"method ike: k={self.k} and reserve_tokens={self.reserve_tokens} must be >= 0")
        if len(self.ratio) != len(KINDS) or any(r < 0 for r in self.ratio) or not sum(self.ratio) > 0:
            raise EditlabError(f"method ike: ratio={list(self.ratio)} must be {len(KINDS)} shares "
                               f"({':'.join(KINDS)}), >= 0, not all 0")
        if self.retriever not in RETRIEVERS:
            raise EditlabError(f"method ike: retriever={self.retriever!r} must be one of {', '.join(RETRIEVERS)}")
        if self.max_prefix_tokens is not None and self.max_prefix_tokens < 1:
            raise EditlabError(f"method ike: max_prefix_tokens={self.max_prefix_tokens} must be >= 1 (or null)")

    def prepare(self, model: nn.Module, ctx: EditContext) -> None:
        """Build the demonstration pool from the world's meta split and embed it with the retriever."""
        from editlab.utils.jsonio import read_jsonl

        if ctx.world_dir is None:
            raise EditlabError("method ike needs the world directory (its meta split is the demonstration pool)")
        # the world's meta_cases.jsonl read as a file (the method library does not import the world package)
        meta = read_jsonl(Path(ctx.world_dir) / "meta_cases.jsonl", "rebuild the world: python -m editlab.world",
                          "meta cases")
        pool = demo_pool(meta, ctx.seed)
        if not pool:
            raise EditlabError(f"method ike: the world at {ctx.world_dir} has no meta cases to retrieve "
                               "demonstrations from; build it with data.cases.n_meta_cases > 0")
        self._retriever = Retriever(self.retriever, pool, model, ctx.tokenizer)
        self._tok, self._seed = ctx.tokenizer, ctx.seed
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._budget = self.max_prefix_tokens if self.max_prefix_tokens is not None else limit - self.reserve_tokens
        if self._budget < 1:
            raise EditlabError(f"method ike: no room for a prefix (max_position_embeddings {limit}, reserve_tokens "
                               f"{self.reserve_tokens}); set method.hparams.max_prefix_tokens")

    def demonstrations(self, facts: Sequence[EditRequest]) -> list[str]:
        """The retrieved demonstrations for ``facts``, least similar first (the prefix's order)."""
        if self._retriever is None:
            raise EditlabError("method ike is not prepared (prepare() builds its demonstration pool)")
        ranked = self._retriever.rank(facts, self.k)
        kinds = [kind for kind, n in zip(KINDS, kind_counts(len(ranked), self.ratio), strict=True) for _ in range(n)]
        random.Random(f"{self._seed}:" + "|".join(f.sentence for f in facts)).shuffle(kinds)
        return [self._retriever.pool[i].of(kind) for i, kind in reversed(list(zip(ranked, kinds, strict=True)))]

    def build_prefix(self, facts: Sequence[EditRequest]) -> str:
        """The whole prefix for ``facts`` within the token budget (see the module docstring).

        Pieces are dropped from the front (the least similar demonstrations, then the oldest edits' copies); the
        number dropped is the smallest that fits, found by bisection: dropping a whole sentence never lengthens
        the text, so a few tokenisations replace one per dropped piece.
        """
        pieces = [f"{d}." for d in self.demonstrations(facts)]
        pieces += [f"{demonstration(f, Target(f.prompt, f.target))}." for f in facts]
        tail = [f"{f.sentence}." for f in facts]

        def text(drop: int) -> str:
            return " ".join(pieces[drop:] + tail)

        lo, hi = 0, len(pieces)  # hi: every piece dropped, the edits' own sentences kept whatever their length
        while lo < hi:
            mid = (lo + hi) // 2
            if len(prompt_ids(self._tok, [text(mid)])[0]) - 1 <= self._budget:
                hi = mid
            else:
                lo = mid + 1
        return text(lo)

    def apply(self, model: nn.Module, requests: Sequence[EditRequest], ctx: EditContext,
              on_step: StepHook | None = None) -> EditHandle:
        facts = self.memory + list(requests)
        prefix = self.build_prefix(facts)

        def commit() -> nn.Module:
            self.memory.extend(requests)
            self.committed = prefix
            return model

        n_tokens = len(prompt_ids(self._tok, [prefix])[0]) - 1
        return EditHandle(model, restore_fn=lambda: model, commit_fn=commit, prefix=prefix,
                          info={"steps": 0, "update_norm": 0.0, "context_sentences": prefix.count(". ") + 1,
                                "prefix_tokens": n_tokens})

    def state_dict(self) -> dict[str, torch.Tensor]:
        facts = [f"{r.subject}\t{r.relation}\t{r.target}\t{r.case_id}" for r in self.memory]
        return {"memory": lines_tensor(facts), "prefix": lines_tensor([self.committed] if self.committed else [])}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> nn.Module:
        self.memory = [EditRequest(*line.split("\t")) for line in tensor_lines(state["memory"])]
        self.committed = "\n".join(tensor_lines(state["prefix"]))
        return model

    def context_prefix(self) -> str:
        """The prefix of the committed edits (what an exported IKE model puts before every probe)."""
        return self.committed
