"""Prefix-tree packing: shared prefixes laid out once, each token attends exactly to its own sequence's prefix."""

from __future__ import annotations

import torch

from editlab.eval.prefix_tree import batch_tensors, pack

SEQS = [[1, 5, 6, 7], [1, 5, 6], [1, 5, 8], [1, 9], [1, 5, 6, 7], [2, 3], [1, 5, 6, 4, 4]]


def test_shared_prefixes_are_laid_out_once():
    rows = pack(SEQS, capacity=100)
    assert len(rows.tokens) == 1
    # trie of SEQS: 1-5-6-{7, 4-4}, 1-5-8, 1-9, 2-3 -> 10 distinct prefixes
    assert len(rows.tokens[0]) == 10
    for s, path in zip(SEQS, rows.where, strict=True):
        assert [rows.tokens[r][c] for r, c in path] == s  # each sequence reads back from its path
        assert [rows.depth[r][c] for r, c in path] == list(range(len(s)))  # positions as if unpacked
    assert rows.where[0] == rows.where[4]  # a duplicate costs nothing
    assert rows.where[1] == rows.where[0][:3]  # a prefix of another sequence costs nothing


def test_mask_is_exactly_each_tokens_ancestors():
    rows = pack(SEQS, capacity=6)  # forces several rows; a sequence never straddles two
    assert len(rows.tokens) > 1 and all(len(t) <= 6 for t in rows.tokens)
    ids, mask, pos = batch_tensors(rows, range(len(rows.tokens)), pad_id=0, dtype=torch.float32)
    allowed = mask[:, 0] == 0  # (R, L, L)
    for s, path in zip(SEQS, rows.where, strict=True):
        r = path[0][0]
        assert all(rr == r for rr, _ in path)
        for k, (_, c) in enumerate(path):
            sees = set(torch.nonzero(allowed[r, c]).flatten().tolist())
            assert sees == {cc for _, cc in path[: k + 1]}, (s, k)  # its prefix, nothing else
            assert ids[r, c].item() == s[k] and pos[r, c].item() == k
    # padding attends only to itself (no fully masked softmax row), and nothing attends to padding
    for r, toks in enumerate(rows.tokens):
        for c in range(len(toks), ids.shape[1]):
            assert torch.nonzero(allowed[r, c]).flatten().tolist() == [c]
            assert not allowed[r, :c, c].any()


def test_capacity_below_longest_sequence_grows_to_fit():
    rows = pack([[1, 2, 3, 4, 5], [1, 2]], capacity=2)
    assert [rows.tokens[r][c] for r, c in rows.where[0]] == [1, 2, 3, 4, 5]
