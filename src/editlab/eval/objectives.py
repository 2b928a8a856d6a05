"""Named objectives: the one number ``edit.py`` returns, which a Hydra sweeper (optuna) optimises.

Tuning on edit success alone rewards methods that change everything (a large learning rate makes every target
the argmax and breaks the neighbours); the usual research question is "the best success that keeps locality",
so the default tuning objective puts a floor under locality agreement:

- ``s1r1_acc``: post-edit generative accuracy of the requested fact (Table 4's s1r1 column, paper hit rule);
- ``edit_success``: share of requests whose greedy continuation is exactly the new object;
- ``success_at_locality``: ``edit_success`` when locality agreement >= ``locality_floor``; otherwise
  ``locality_agree - locality_floor`` (negative), so every setup that keeps the floor beats every setup that
  does not, and among those that do not, the one closest to the floor wins;
- ``locality_at_success``: the mirror image, for methods that reach full success easily (LoRA on the tiny
  model reaches 1.000 with most settings, so success alone cannot rank them): ``locality_agree`` when edit
  success >= ``success_floor``, else ``edit_success - success_floor`` (negative).

Values are read from the ``all`` subset of the run's summary at its headline stage (``final`` for sequential
runs, else ``post``: :func:`editlab.eval.summary.headline_stage`). Always maximised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from editlab.errors import EditlabError
from editlab.eval.summary import headline_stage

NAMES = ("s1r1_acc", "edit_success", "success_at_locality", "locality_at_success")


@dataclass(frozen=True)
class Objective:
    """``edit.py``'s ``objective`` node: which number to return, and the floor where it applies."""

    name: str = "s1r1_acc"
    locality_floor: float = 0.95
    success_floor: float = 0.99

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise EditlabError(f"objective.name={self.name} is not available; choose one of {', '.join(NAMES)}")
        for key in ("locality_floor", "success_floor"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise EditlabError(f"objective.{key}={getattr(self, key)} must be in [0, 1]")

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
        if self.name == "locality_at_success":
            return locality if success >= self.success_floor else success - self.success_floor
        return success if locality >= self.locality_floor else locality - self.locality_floor
