"""Pack token sequences into prefix-tree rows: every shared prefix is computed once (tree attention).

Why: the probes of an edit case share most of their tokens. The candidates of one prompt share the
prompt (" true" / " false", the original and the requested object), prompts of one subject share
"BOS s", logical sentences share whole facts ('"s r o" is', '"s r o and ...'), and in-context
prefixes are shared by every probe of a case. On the tiny world's 100 benchmark cases the distinct
prefixes hold 9k tokens where the separate rows hold 17k.

Layout: sequences are sorted lexicographically and laid out in that order as a pre-order walk of
their trie, cut into rows of at most ``capacity`` tokens; a sequence never straddles two rows (a new
row repeats the shared prefix). Each token's position id is its depth (its position in its own
sequence, so rotary and learned position embeddings see exactly what they see unpacked) and it
attends to its ancestors and itself only. In a pre-order layout node ``j`` is an ancestor-or-self of
node ``i`` iff ``j <= i < end[j]``, where ``end[j]`` is the end of ``j``'s subtree, which gives the
(rows, 1, L, L) mask without materialising the tree. Padding tokens attend only to themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedRows:
    """Prefix-tree rows of a list of sequences.

    Attributes:
        tokens: per row, the token of each node.
        depth: per row, each node's position id (its index in every sequence that passes through it).
        end: per row, one past the last node of each node's subtree.
        where: per input sequence, the (row, column) of each of its tokens.
    """

    tokens: list[list[int]]
    depth: list[list[int]]
    end: list[list[int]]
    where: list[list[tuple[int, int]]]


def pack(seqs: list[list[int]], capacity: int) -> PackedRows:
    """Lay ``seqs`` out as prefix-tree rows of at most ``max(capacity, longest sequence)`` tokens."""
    capacity = max([capacity, *map(len, seqs)])
    rows = PackedRows([], [], [], [[] for _ in seqs])
    tokens: list[int] = []
    depth: list[int] = []
    prev: list[int] = []  # the previous sequence of the current row
    path: list[int] = []  # its columns in the current row

    def flush() -> None:
        if tokens:
            rows.tokens.append(list(tokens))
            rows.depth.append(list(depth))
            rows.end.append(_subtree_ends(depth))
            tokens.clear()
            depth.clear()

    for i in sorted(range(len(seqs)), key=seqs.__getitem__):
        s = seqs[i]
        lcp = 0
        for a, b in zip(prev, s, strict=False):
            if a != b:
                break
            lcp += 1
        if len(tokens) + len(s) - lcp > capacity:
            flush()
            lcp, path = 0, []
        path = path[:lcp] + list(range(len(tokens), len(tokens) + len(s) - lcp))
        tokens.extend(s[lcp:])
        depth.extend(range(lcp, len(s)))
        prev = s
        rows.where[i] = [(len(rows.tokens), c) for c in path]
    flush()
    return rows


def _subtree_ends(depth: list[int]) -> list[int]:
    """One past the last descendant of each node of a pre-order walk given by node depths."""
    end = [len(depth)] * len(depth)
    stack: list[int] = []
    for k, d in enumerate(depth):
        while stack and depth[stack[-1]] >= d:
            end[stack.pop()] = k
        stack.append(k)
    return end


def batch_tensors(rows: PackedRows, idx: range, pad_id: int, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, additive 4D attention mask, position_ids) of rows ``idx``, right-padded to the longest.

    The mask is 0 where a node may attend (an ancestor or itself) and the dtype's minimum elsewhere,
    shape (R, 1, L, L), the form Hugging Face decoders accept as a ready-made custom mask.
    """
    width = max(len(rows.tokens[r]) for r in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(idx), width), dtype=torch.long)
    col = torch.arange(width)
    end = (col + 1).repeat(len(idx), 1)  # padding: its own subtree
    for k, r in enumerate(idx):
        n = len(rows.tokens[r])
        ids[k, :n] = torch.tensor(rows.tokens[r])
        pos[k, :n] = torch.tensor(rows.depth[r])
        end[k, :n] = torch.tensor(rows.end[r])
    allowed = (col[None, None, :] <= col[None, :, None]) & (col[None, :, None] < end[:, None, :])  # (R, Lq, Lk)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, mask[:, None], pos
