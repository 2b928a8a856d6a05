"""Named objectives: the one number ``edit.py`` returns, which a Hydra sweeper (optuna) optimises.

Tuning on edit success alone rewards methods that change everything (a large learning rate makes every target
the argmax and breaks the neighbours); the usual research question is "the best success that keeps locality",
so the default tuning objective puts a floor under locality agreement:

- ``s1r1_acc``: post-edit generative accuracy of the requested fact (Table 4's s1r1 column, paper hit rule);
- ``edit_success``: share of requests whose greedy continuation is exactly the new object;
- ``success_at_locality``: ``edit_success`` when locality agreement >= ``floor``; otherwise
  ``locality_agree - floor`` (negative), so every setup that keeps the floor beats every setup that does not,
  and among those that do not, the one closest to the floor wins.

Values are read from the ``all`` subset of the run's summary at its headline stage (``final`` for sequential
runs, else ``post``: :func:`editlab.eval.summary.headline_stage`). Always maximised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from editlab.errors import EditlabError
from editlab.eval.summary import headline_stage

NAMES = ("s1r1_acc", "edit_success", "success_at_locality")


@dataclass(frozen=True)
class Objective:
    """``edit.py``'s ``objective`` node: which number to return, and the locality floor where it applies."""

    name: str = "s1r1_acc"
    locality_floor: float = 0.95

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise EditlabError(f"objective.name={self.name} is not available; choose one of {', '.join(NAMES)}")
        if not 0.0 <= self.locality_floor <= 1.0:
            raise EditlabError(f"objective.locality_floor={self.locality_floor} must be in [0, 1]")

    def __call__(self, summary: dict) -> float:
        """The objective's value for a run's summary (``metrics.json["summary"]``); NaN if a metric is missing."""
        allsub = summary.get("subsets", {}).get("all", {})
        stage = headline_stage(summary)

        def get(key: str) -> float:
            v = allsub.get(f"{stage}/{key}", allsub.get(f"post/{key}"))
            return float(v) if isinstance(v, int | float) else math.nan

        if self.name == "s1r1_acc":
            return get("s1r1_acc")
        success = get("edit_exact")
        if self.name == "edit_success":
            return success
        locality = get("locality_agree")
        return success if locality >= self.locality_floor else locality - self.locality_floor
