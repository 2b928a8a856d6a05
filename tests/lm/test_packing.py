"""Packed rows: exact framing, per-epoch shuffles, DDP shards, resumable order, no cross-document attention."""

from __future__ import annotations

import numpy as np
import torch

from editlab.lm.packing import Corpus, PackedStream, StreamBatches
from editlab.lm.presets import Arch, build_model

TOY = Corpus(tokens=np.arange(10, 40, dtype=np.uint16), offsets=np.array([0, 5, 12, 13, 30]), bos_id=1, eos_id=2)


def test_rows_are_the_framed_shuffled_stream():
    ds = PackedStream(TOY, seq_len=7, seed=3)
    assert ds.rows_per_epoch == TOY.framed_tokens() // 7 == (30 + 8) // 7
    for epoch in (0, 1):
        order = np.random.default_rng([3, epoch]).permutation(4)
        stream, pos = [], []
        for d in order:
            body = TOY.tokens[TOY.offsets[d] : TOY.offsets[d + 1]].tolist()
            stream += [1, *body, 2]
            pos += list(range(len(body) + 2))
        rows = [ds[(epoch, r)] for r in range(ds.rows_per_epoch)]
        assert torch.cat([r["input_ids"] for r in rows]).tolist() == stream[: 7 * ds.rows_per_epoch]
        assert torch.cat([r["position_ids"] for r in rows]).tolist() == pos[: 7 * ds.rows_per_epoch]
        assert all(r["labels"][0] == -100 and torch.equal(r["labels"][1:], r["input_ids"][1:]) for r in rows)
    assert not torch.equal(ds[(0, 0)]["input_ids"], ds[(1, 0)]["input_ids"])  # fresh shuffle per epoch


def test_ddp_ranks_take_disjoint_rows_and_resume_starts_at_step():
    keys = {}
    for rank in range(2):
        s = StreamBatches(rows_per_epoch=20, rows_per_rank=3, rank=rank, world=2, n_batches=7, start=lambda: 0)
        keys[rank] = list(s)
    for a, b in zip(keys[0], keys[1], strict=True):
        assert not set(a) & set(b)
    assert keys[0][3] == [(1, 0), (1, 1), (1, 2)]  # 3 batches per epoch of 20 rows at 6 rows per step
    resumed = list(StreamBatches(20, 3, 0, 2, 7, start=lambda: 4))
    assert resumed == keys[0][4:]


def test_packed_rows_do_not_attend_across_documents():
    torch.manual_seed(0)
    model = build_model(Arch(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2), vocab_size=50).eval()
    a, b = [1, 5, 6, 7, 2], [1, 8, 9, 2]
    packed = torch.tensor([a + b])
    pos = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    with torch.no_grad():
        joint = model(input_ids=packed, position_ids=pos, use_cache=False).logits
        la = model(input_ids=torch.tensor([a]), use_cache=False).logits
        lb = model(input_ids=torch.tensor([b]), use_cache=False).logits
        leaky = model(input_ids=packed, use_cache=False).logits  # no resets: b attends to a
    torch.testing.assert_close(joint[:, : len(a)], la, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint[:, len(a) :], lb, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(leaky[:, len(a) :], lb, atol=1e-3)
