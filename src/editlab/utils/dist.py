"""The few collective operations a training module does itself (MALMEN's split backward under DDP).

Each is the identity in a single process, so code that calls them runs unchanged without DDP. They work
on any backend (gloo on CPU, NCCL on GPU): tensors travel as float32 (float64 stays float64), since a
backend may not carry bf16, and come back in their own dtype.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _wire(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor travels in: float64 stays float64, anything else goes as float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    padded = torch.zeros((longest, *x.shape[1:]), dtype=_wire(x.dtype), device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)]).to(x.dtype)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks, as a new tensor (``x`` is left as it is; in one process, ``x`` itself)."""
    if world_size() == 1:
        return x
    out = x.detach().to(_wire(x.dtype)).clone()
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
