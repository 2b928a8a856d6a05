"""The few collective operations a training module does itself (MALMEN's split backward under DDP).

Each is the identity in a single process, so code that calls them runs unchanged without DDP. They work
on any backend (gloo on CPU, NCCL on GPU): tensors are moved to float32 for the exchange where a backend
may not carry their dtype, and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` (n_r, ...) concatenated in rank order; ranks may hold different row counts."""
    world = world_size()
    if world == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=torch.float32, device=x.device)
    padded[: x.shape[0]] = x.float()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)]).to(x.dtype)


def sum_(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks (a new tensor; ``x`` is left as it is)."""
    if world_size() == 1:
        return x
    out = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(x.dtype)


def gather_objects(items: list) -> list:
    """Every rank's list ``items`` concatenated in rank order (picklable Python objects, e.g. prompts)."""
    world = world_size()
    if world == 1:
        return list(items)
    parts: list = [None] * world
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]
