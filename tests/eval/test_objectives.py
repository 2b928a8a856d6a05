"""Tuning objectives (editlab.eval.objectives): each named rule by hand, the floors ranking setups as documented."""

from __future__ import annotations

import math

import pytest

from editlab.errors import EditlabError
from editlab.eval.objectives import Objective


def _summary(success: float, locality: float, s1r1: float = 0.9, stage: str = "post") -> dict:
    return {"subsets": {"all": {f"{stage}/edit_exact": success, f"{stage}/locality_agree": locality,
                                f"{stage}/s1r1_acc": s1r1}}}


def test_each_objective_by_hand():
    s = _summary(0.97, 0.90)
    assert Objective("s1r1_acc")(s) == 0.9
    assert Objective("edit_success")(s) == 0.97
    assert Objective("success_at_locality", locality_floor=0.95)(s) == pytest.approx(0.90 - 0.95)
    assert Objective("success_at_locality", locality_floor=0.85)(s) == 0.97
    assert Objective("locality_at_success", success_floor=0.99)(s) == pytest.approx(0.97 - 0.99)
    assert Objective("locality_at_success", success_floor=0.95)(s) == 0.90
    assert Objective("edit_success")(_summary(0.5, 0.5, stage="final")) == 0.5  # sequential runs: final stage
    assert math.isnan(Objective("edit_success")({"subsets": {"all": {}}}))


def test_floors_rank_every_feasible_setup_above_every_infeasible_one():
    obj = Objective("locality_at_success", success_floor=0.99)
    feasible = [obj(_summary(1.0, loc)) for loc in (0.0, 0.5, 0.99)]
    infeasible = [obj(_summary(succ, 1.0)) for succ in (0.0, 0.5, 0.98)]
    assert min(feasible) > max(infeasible) and infeasible == sorted(infeasible)


@pytest.mark.parametrize("kwargs", [{"name": "accuracy"}, {"locality_floor": 1.5}, {"success_floor": -0.1}])
def test_bad_objective_settings_are_refused(kwargs):
    with pytest.raises(EditlabError, match="objective"):
        Objective(**kwargs)
