"""AdamW parameter groups with weight decay on weight matrices only.

The paper's code meant to exempt norm weights and biases from weight decay but its no-decay group
was always empty (world.md section 8, bug 6), so every parameter decayed. Here the rule is by shape:
tensors with >= 2 dimensions (linear weights, token embeddings, the LM head) decay; vectors (RMSNorm
weights, biases) do not. Tied parameters are listed once.
"""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``weight_decay`` on matrices, 0 on vectors; frozen parameters are skipped."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
