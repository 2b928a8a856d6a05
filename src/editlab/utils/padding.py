"""Left-padded batches of token sequences, for decoding with a model's own ``generate`` (the scorer's generic path,
the reference scorer, schema-guided editors): every row ends at the last column, so generated tokens start at the
same position in every row."""

from __future__ import annotations

import torch


def left_padded(prompts: list[list[int]], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (len(idx), longest), of the sequences ``prompts[i]`` for ``i`` in ``idx``."""
    width = max(len(prompts[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
        mask[row, width - len(prompts[i]) :] = 1
    return ids, mask
