"""Template-averaged keys k* (and the averaged output) of a module at the subject's last token.

ROME Sec. 3.1 / Eq. 3: ``k* = 1/N sum_j k(x_j + s)``, the input of the edited down-projection at the
subject's last token, averaged over N context prefixes x_j (the bare prompt included). r-ROME (Gupta
et al. 2024, "Rebuilding ROME") showed that ROME's code used this averaged key in the update's
direction but the bare prompt's key in its scale, which makes sequential ROME collapse; every kernel
here reads its keys through :func:`average_io`, so the one averaged key is used in every term.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.editing.base import EditRequest
from editlab.editing.locate.hooks import read_at
from editlab.editing.locate.rows import Rows, build_rows

CHUNK_ROWS = 256
"""Rows per forward pass (bounded memory for a batch of thousands of edits)."""


class _Stop(Exception):
    """Raised by :func:`_stop_after` once every read module has run: nothing later is needed."""


@contextmanager
def _stop_after(modules: Sequence[nn.Module]) -> Iterator[None]:
    """End the next forward pass (with :class:`_Stop`) as soon as each of ``modules`` has run once."""
    pending = {id(m) for m in modules}

    def hook(mod: nn.Module, _args: tuple, _out) -> None:
        pending.discard(id(mod))
        if not pending:
            raise _Stop

    handles = [m.register_forward_hook(hook) for m in modules]  # after the read hooks: those run first
    try:
        yield
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def rows_io(model: nn.Module, modules: Sequence[nn.Module], rows: Rows) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each module's input and output at each row's subject-last position, (R, d_in) and (R, d_out), one pass.

    Causality makes the pass stop early at no cost to the result: each row is cut after its read position
    (padding beyond it is right-padding), and the forward pass ends once the last read module has run (no
    blocks above it, no output head).
    """
    device = next(model.parameters()).device
    got: list[list[dict]] = [[] for _ in modules]
    for a in range(0, rows.ids.shape[0], CHUNK_ROWS):
        sl = slice(a, a + CHUNK_ROWS)
        ids, mask, subj = rows.ids[sl].to(device), rows.mask[sl].to(device), rows.subj[sl].to(device)
        width = int(subj.max()) + 1
        at = torch.arange(ids.shape[0], device=device)
        with ExitStack() as stack:
            reads = [stack.enter_context(read_at(m, at, subj)) for m in modules]
            stack.enter_context(_stop_after(modules))
            model(input_ids=ids[:, :width], attention_mask=mask[:, :width], use_cache=False)
        for i, r in enumerate(reads):
            got[i].append(r)
    return [(torch.cat([r["input"] for r in g]), torch.cat([r["output"] for r in g])) for g in got]


def per_request_mean(x: torch.Tensor, req: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the rows of ``x`` (R, d) per request index ``req`` (R,) -> (n, d)."""
    out = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, req.to(x.device), x)
    count = torch.bincount(req, minlength=n).to(x.device, x.dtype)
    return out / count[:, None]


def average_io(model: nn.Module, modules: Sequence[nn.Module], tok: PreTrainedTokenizerBase,
               requests: Sequence[EditRequest], templates: Sequence[str], fact_token: str = "subject_last"
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per module and request, the input (k*) and output at the subject's last token averaged over ``templates``
    (context prefixes; ``""`` = the bare prompt): ``[(keys (n, d_in), outputs (n, d_out)), ...]``, fp32."""
    rows = build_rows(tok, requests, templates, fact_token=fact_token)
    n = len(requests)
    return [(per_request_mean(i.float(), rows.req, n), per_request_mean(o.float(), rows.req, n))
            for i, o in rows_io(model, modules, rows)]
