"""The token rows every locate-then-edit kernel feeds: (context prefix x request), with the subject's last token.

A row is exactly what the evaluation feeds for a prompt behind a prefix (:func:`editlab.vocab.subject_span`
= BOS + tokens(with_prefix(prefix, "s r"))), optionally followed by the requested object tokenised
apart with its leading space (:func:`editlab.vocab.object_ids`, the target the loss teacher-forces).
The subject's span is read from the tokenizer's character offsets, so its last token is the same one
the key is read at in every kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditFailed, EditRequest
from editlab.errors import EditlabError
from editlab.vocab import object_ids, subject_span


@dataclass
class Rows:
    """Right-padded rows, row ``r`` being request ``req[r]`` behind prefix ``tpl[r]``.

    Attributes:
        ids, mask: (R, T) token ids (pad id after the end) and attention mask.
        subj: (R,) position of the subject's last token.
        target: (R, T) bool, True at positions whose *next* token is an object token (teacher forcing).
        req, tpl: (R,) request and prefix index of each row.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    subj: torch.Tensor
    target: torch.Tensor
    req: torch.Tensor
    tpl: torch.Tensor

    def to(self, device: torch.device) -> Rows:
        return Rows(*(t.to(device) for t in (self.ids, self.mask, self.subj, self.target, self.req, self.tpl)))

    def select(self, idx: torch.Tensor) -> Rows:
        """The rows ``idx`` (a 1-d index tensor), in that order."""
        return Rows(*(t[idx] for t in (self.ids, self.mask, self.subj, self.target, self.req, self.tpl)))


def subject_ids(tok: PreTrainedTokenizerBase, req: EditRequest, prefix: str, relation: str | None = None
                ) -> tuple[list[int], int]:
    """Ids of ``prefix + prompt`` ("s r", or the request's own text) and the position of the subject's last token
    (EditFailed if there is none)."""
    if not req.subject.strip():
        raise EditFailed(f"edit {req.case_id or req.prompt!r}: empty subject; the request needs a subject")
    rel = req.relation if relation is None else relation
    try:  # a benchmark request's own prompt text, unless an essence prompt replaces the relation
        ids, (_, end) = subject_span(tok, req.subject, rel, prefix, req.text if relation is None else "")
    except EditlabError as exc:
        raise EditFailed(f"edit {req.case_id or req.prompt!r}: {exc}") from None
    return ids, end - 1


FACT_TOKENS = ("subject_last", "last")
"""Where keys and targets are read (ROME's ``fact_token``): the subject's last token (the method), or the
prompt's last token (ROME's own ablation; what a model that has not routed subject information to the
prediction, like the tests' briefly trained fixture, can be edited at)."""


def build_rows(tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest], prefixes: Sequence[str], *,
               with_object: bool = False, relation: str | None = None, fact_token: str = "subject_last") -> Rows:
    """Rows of every (prefix, request), prefix-major; ``with_object`` appends the requested object's tokens.

    ``relation`` replaces each request's relation (ROME's essence prompt ``"{subject} is a"``); ``subj`` is
    the position of ``fact_token`` (:data:`FACT_TOKENS`).
    """
    if fact_token not in FACT_TOKENS:
        raise EditlabError(f"fact_token={fact_token!r} must be one of {', '.join(FACT_TOKENS)}")
    objs = object_ids(tok, [r.target for r in requests]) if with_object else [[] for _ in requests]
    seqs, subj, starts, req, tpl = [], [], [], [], []
    for t, prefix in enumerate(prefixes):
        for i, r in enumerate(requests):
            ids, last = subject_ids(tok, r, prefix, relation)
            starts.append(len(ids))
            seqs.append(ids + objs[i])
            subj.append(last if fact_token == "subject_last" else len(ids) - 1)
            req.append(i)
            tpl.append(t)
    width = max(map(len, seqs))
    n = len(seqs)
    ids_t = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    target = torch.zeros((n, width), dtype=torch.bool)
    for r, (s, a) in enumerate(zip(seqs, starts, strict=True)):
        ids_t[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        target[r, a - 1 : len(s) - 1] = True  # position t predicts token t + 1, an object token
    return Rows(ids_t, mask, torch.tensor(subj), target, torch.tensor(req), torch.tensor(tpl))


def concat(a: Rows, b: Rows, pad_id: int) -> Rows:
    """``a``'s rows then ``b``'s, padded to one width (one forward pass for both)."""
    width = max(a.ids.shape[1], b.ids.shape[1])

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    return Rows(torch.cat([pad(a.ids, pad_id), pad(b.ids, pad_id)]), torch.cat([pad(a.mask, 0), pad(b.mask, 0)]),
                torch.cat([a.subj, b.subj]), torch.cat([pad(a.target, False), pad(b.target, False)]),
                torch.cat([a.req, b.req]), torch.cat([a.tpl, b.tpl]))
