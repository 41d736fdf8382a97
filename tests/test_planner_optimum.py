"""The exact optimum the poll planner is measured against (:func:`tests._planner_sim.optimum`).

A bound is only worth citing if it is right: here it is checked on tasks whose best schedule
is known by hand, against the fallback guarantee, and against the planner's own solver told
the true durations (which no poller can beat the optimum of).
"""

from __future__ import annotations

import pytest

from ailab_async import PollingConfig
from ailab_async._polling import _Policy

from ._planner_sim import (
    SHAPES,
    best_fixed,
    fixed_polling_lag,
    optimum,
    population_groups,
    simulate,
    steady_groups,
)

BUDGET = PollingConfig().target_polls


def test_tasks_of_one_duration_are_caught_by_one_poll_at_it() -> None:
    assert optimum([[3.0] * 10], 1.0) == pytest.approx((0.0, 1.0))


@pytest.mark.parametrize(("budget", "lag"), [(1.0, 0.5), (1.25, 0.25), (1.5, 0.0)])
def test_a_budget_between_two_schedules_mixes_them(budget: float, lag: float) -> None:
    """Tasks of 1 s and 2 s: one poll at 2 s (lag 0.5 s for half of them, 1 poll), or polls
    at 1 s and 2 s (no lag, 1.5 polls); a budget between is met by putting tasks on both."""
    assert optimum([[1.0, 2.0]], budget) == pytest.approx((lag, budget))


def test_the_fallback_guarantee_costs_polls_the_budget_cannot_refuse() -> None:
    """A 12 s task must be polled by 5 s, 10 s and then at 12 s: three polls, whatever the
    budget says (the answer is the sparsest schedule, over budget)."""
    assert optimum([[12.0]], 2.0) == pytest.approx((0.0, 3.0))
    assert optimum([[12.0]], 4.0) == pytest.approx((0.0, 3.0))


def test_groups_share_one_budget() -> None:
    """Two groups a poller can tell apart (a drift's phases): the budget goes where it buys
    most lag. Tasks of 1 or 2 s need a second poll to catch the 1 s ones; tasks of exactly
    3 s need none. With 1.25 polls per task over both, the first group gets 1.5."""
    lag, polls = optimum([[1.0, 2.0], [3.0, 3.0]], 1.25)
    assert (lag, polls) == pytest.approx((0.0, 1.25))


@pytest.mark.parametrize("shape", ["uniform 1-6 s", "log-normal, median 3 s"])
def test_the_planners_own_solver_told_the_truth_does_not_beat_the_optimum(shape: str) -> None:
    (durations,) = steady_groups(shape) or [[]]
    best_lag, best_polls = best_fixed(durations, BUDGET)
    optimum_lag, _ = optimum([durations], best_polls, step=0.02)
    assert optimum_lag <= best_lag + 0.02


def test_the_log_normal_target_is_within_reach() -> None:
    """Half of fixed 5 s polling's lag at two polls per task is reachable on the long-tailed
    shape: the best poller that knows the distribution expects 0.48 of it (on fresh draws,
    not fitted to one sample); the planner's solver, told a sample's true durations, reaches
    0.47-0.48 of it on its grid on that very sample (eight runs' steady states)."""
    groups = population_groups("log-normal, median 3 s", draws=5_000)
    assert groups is not None
    optimum_lag, polls = optimum(groups, BUDGET, step=0.02)
    assert polls == pytest.approx(BUDGET)
    assert optimum_lag / fixed_polling_lag(groups[0]) < 0.49


def test_a_queue_has_no_bound_for_tasks_alike() -> None:
    """Its tasks' durations follow the tasks pending at their submit, which a poller sees."""
    assert steady_groups("queue-growing") is None
    assert population_groups("queue-growing") is None


def test_a_drift_is_two_groups_in_the_shares_of_a_run() -> None:
    """Tasks 100-199 of a run of 400 before the drift, 200-399 after it: a third, two thirds."""
    assert [len(group) for group in steady_groups("drift 1-6 s -> 3-9 s") or []] == [300, 600]
    groups = population_groups("drift 1-6 s -> 3-9 s", draws=300) or []
    assert [len(group) for group in groups] == [100, 200]
    assert max(groups[0]) <= 6.0
    assert min(groups[1]) >= 3.0


def test_told_once_every_plan_is_told_the_same_durations() -> None:
    """``told_once``: the harness's planner told the distribution itself (one sample, the
    same at every plan), so no plan differs from the next by its draws: every plan rests on
    the same grid and the same estimate; told fresh draws at each plan, they differ."""
    arrivals, sampler = SHAPES["uniform 1-6 s"]
    estimates = {}
    for once in (False, True):
        plans: list[tuple[int, _Policy]] = []
        simulate(arrivals[:120], sampler, seed=0, plans=plans, told=200, told_once=once)
        estimates[once] = {(tuple(p.points), tuple(p.mass_below)) for _, p in plans}
        assert len(plans) > 5
    assert len(estimates[True]) == 1
    assert len(estimates[False]) > 1
