"""Template-averaged keys k* (and the averaged output) of a module at the subject's last token.

ROME Sec. 3.1 / Eq. 3: ``k* = 1/N sum_j k(x_j + s)``, the input of the edited down-projection at the
subject's last token, averaged over N context prefixes x_j (the bare prompt included). r-ROME (Gupta
et al. 2024, "Rebuilding ROME") showed that ROME's code used this averaged key in the update's
direction but the bare prompt's key in its scale, which makes sequential ROME collapse; every kernel
here reads its keys through :func:`average_io`, so the one averaged key is used in every term.

How the templates are averaged differs between the reference codes, so it is a choice
(:data:`KEY_AVERAGES`): ROME's ``compute_u`` takes the flat mean over its list of templates (the bare
prompt weighs 1/21 with ROME's 20 prefixes); MEMIT's ``compute_ks`` (and AlphaEdit's copy of it) averages
within each group of templates (the bare prompt ``"{}"`` is a group of its own, then one group per
``[tokens, count]`` pair of prefixes) and then across the groups, so with MEMIT's one group of 5 prefixes
the bare prompt weighs 1/2.
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
from editlab.errors import EditlabError

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


KEY_AVERAGES = ("flat", "groups")
"""How keys are averaged over the templates: ``flat`` (ROME's ``compute_u``: every template weighs the same) or
``groups`` (MEMIT's ``compute_ks``: the mean of the per-group means, see the module docstring)."""

TARGET_INITS = ("mean", "bare")
"""Which output a target starts from (``target_init``): the mean over the templates, or the bare prompt's (ROME's
``compute_v`` / MEMIT's ``compute_z`` record ``target_init`` on ``context_templates[0]``, the bare ``"{}"``)."""


def template_groups(prefix_counts: Sequence[int]) -> list[int]:
    """Group of each template for ``key_average="groups"``: the bare prompt (template 0) is group 0, the prefixes of
    the i-th ``[tokens, count]`` pair are group i + 1 (MEMIT's ``context_templates``: ``[["{}"], [prefixes], ...]``)."""
    return [0] + [i + 1 for i, count in enumerate(prefix_counts) for _ in range(int(count))]


def template_mean(x: torch.Tensor, req: torch.Tensor, tpl: torch.Tensor, n: int,
                  groups: Sequence[int] | None = None) -> torch.Tensor:
    """Per request, the mean of its rows ``x`` (R, d) over the templates -> (n, d): flat (``groups`` None) or the mean
    over the groups of the per-group means (``groups[t]``: the group of template ``t``, :func:`template_groups`)."""
    if groups is None:
        return per_request_mean(x, req, n)
    of_row = torch.as_tensor(list(groups))[tpl.cpu()]
    means = []
    for g in of_row.unique().tolist():
        sel = (of_row == g).nonzero(as_tuple=True)[0].to(x.device)
        means.append(per_request_mean(x[sel], req.to(x.device)[sel], n))
    return torch.stack(means).mean(0)


def bare_rows(x: torch.Tensor, req: torch.Tensor, tpl: torch.Tensor, n: int) -> torch.Tensor:
    """Per request, its row of ``x`` (R, d) behind template 0, the bare prompt -> (n, d)."""
    sel = (tpl == 0).nonzero(as_tuple=True)[0].to(x.device)
    return per_request_mean(x[sel], req.to(x.device)[sel], n)


def average_io(model: nn.Module, modules: Sequence[nn.Module], tok: PreTrainedTokenizerBase,
               requests: Sequence[EditRequest], templates: Sequence[str], fact_token: str = "subject_last",
               groups: Sequence[int] | None = None, output: str = "mean") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per module and request, the input (k*) and output at the subject's last token over ``templates`` (context
    prefixes; ``""`` = the bare prompt, always template 0): ``[(keys (n, d_in), outputs (n, d_out)), ...]``, fp32.

    Keys are averaged flat or by ``groups`` (:func:`template_mean`); outputs are the flat mean (``output="mean"``)
    or the bare prompt's (``"bare"``, :data:`TARGET_INITS`).
    """
    if output not in TARGET_INITS:
        raise EditlabError(f"output={output!r} must be one of {', '.join(TARGET_INITS)}")
    if output == "bare" and templates[0] != "":
        raise EditlabError("output='bare' reads template 0, which must be the bare prompt ''")
    rows = build_rows(tok, requests, templates, fact_token=fact_token)
    n = len(requests)

    def out(o: torch.Tensor) -> torch.Tensor:
        return per_request_mean(o, rows.req, n) if output == "mean" else bare_rows(o, rows.req, rows.tpl, n)

    return [(template_mean(i.float(), rows.req, rows.tpl, n, groups), out(o.float()))
            for i, o in rows_io(model, modules, rows)]
