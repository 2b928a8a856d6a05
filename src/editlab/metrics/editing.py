"""Editing-framework metrics as EasyEdit/KnowEdit report them: edit success and portability."""

from __future__ import annotations

import torch

from editlab.metrics.grouped import GroupedMean


class EditSuccess(GroupedMean):
    """Edit success (reliability), logged as ``stage/edit_exact`` and ``stage/edit_token_acc``.

    ``edit_exact``: share of requests whose greedy continuation of "s1 r1" equals o* under the exact
    protocol; ``edit_token_acc``: EasyEdit's teacher-forced token accuracy of o*, so numbers can be set
    beside theirs (evaluation.md).
    """

    higher_is_better = True

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(("edit_exact", "edit_token_acc"), stage, **kwargs)

    def update(self, exact: torch.Tensor, token_acc: torch.Tensor) -> None:
        """Add per-request exact hits (bool) and token accuracies."""
        self._accumulate(exact, 0)
        self._accumulate(token_acc, 1)


class Portability(GroupedMean):
    """Portability of an edit to its consequences, ``stage/portability_s1r2`` and ``stage/portability_tf``.

    ``portability_s1r2``: the downstream s1 r2 probe produces the agent's new argmax;
    ``portability_tf``: the LM calls the edit itself true, p(true | "s1 r1 o*" is) > p(false | ...).
    """

    higher_is_better = True

    def __init__(self, stage: str = "", **kwargs) -> None:
        super().__init__(("portability_s1r2", "portability_tf"), stage, **kwargs)

    def update(self, s1r2_hits: torch.Tensor, p_true: torch.Tensor, p_false: torch.Tensor) -> None:
        """Add s1 r2 hits (bool, per probe) and the request sentence's label probabilities (per request)."""
        self._accumulate(s1r2_hits, 0)
        self._accumulate(torch.as_tensor(p_true) > torch.as_tensor(p_false), 1)
