"""The poll planner against a zoo of task-duration shapes, on a simulated clock.

Every figure here comes from :mod:`tests._planner_sim` (no event loop, no real time), so the
runs are deterministic under their seeds and the bounds can be asserted. The bounds are the
planner's guarantees plus a margin over what it reaches today; the measured targets against
the simulator (mean lag, polls per task) are in ``benchmarks/bench_tracker.py``.
"""

from __future__ import annotations

import random

import pytest

from ailab_async import PollingConfig
from ailab_async._polling import PollPlanner

from ._planner_sim import SHAPES, burst, figures, simulate, spread, uniform


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_task_waits_more_than_the_fallback_beyond_its_completion(shape: str) -> None:
    arrivals, sampler = SHAPES[shape]
    outcomes, _ = simulate(arrivals, sampler)
    assert max(o.lag for o in outcomes) <= PollingConfig().fallback_interval


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_beats_fixed_5s_polling_by_a_wide_margin(shape: str) -> None:
    arrivals, sampler = SHAPES[shape]
    result = figures(arrivals, sampler)
    assert result.ratio <= 0.75, result


@pytest.mark.parametrize("shape", ["uniform 1-6 s, spread", "uniform 1-6 s, burst"])
def test_uniform_tasks_are_found_within_a_second_at_about_two_polls(shape: str) -> None:
    arrivals, sampler = SHAPES[shape]
    result = figures(arrivals, sampler)
    assert result.mean_lag <= 0.9, result
    assert result.polls_per_task <= 2.5, result


def test_a_burst_warm_up_is_not_stuck_on_the_5s_fallback() -> None:
    """Hundreds submitted at once with no evidence: the warm-up itself polls early, and the
    first plan puts the first poll well before 5 s (the short durations are learned)."""
    outcomes, planner = simulate(burst(300, warm_up=0), uniform(1.0, 6.0))
    assert planner.plan[0] < 4.0
    warm_up_lag = sum(o.lag for o in outcomes[:100]) / 100
    assert warm_up_lag < 1.2  # the 5 s fallback would give about 2.5 s


@pytest.mark.parametrize("warm_up", [20, 150])
def test_the_warm_up_length_does_not_bias_the_steady_state(warm_up: int) -> None:
    """The old planner's bias fed itself (a longer warm-up made the lag worse); now a burst
    after a short or a long warm-up is found within a second either way."""
    result = figures(burst(400, warm_up=warm_up), uniform(1.0, 6.0), skip=200)
    assert result.mean_lag <= 1.0, result  # the old planner: 1.14 s, and worse the longer
    assert result.polls_per_task <= 2.7, result


def test_an_outlier_does_not_swing_the_schedule() -> None:
    def with_outlier(rng: random.Random, index: int, _pending: int) -> float:
        return 300.0 if index == 150 else rng.uniform(1.0, 6.0)

    arrivals = spread(300)
    _, plain = simulate(arrivals, uniform(1.0, 6.0))
    _, swung = simulate(arrivals, with_outlier)
    assert swung.plan[0] == pytest.approx(plain.plan[0], abs=0.6)
    quiet = figures(arrivals, uniform(1.0, 6.0), skip=160)
    noisy = figures(arrivals, with_outlier, skip=160)
    assert noisy.mean_lag <= quiet.mean_lag + 0.15


def test_a_drift_is_followed_within_about_fifty_tasks() -> None:
    """Durations jump from 1-6 s to 8-12 s at task 200: 50 tasks later the first poll has
    moved past where the old tasks finished."""

    def jump(rng: random.Random, index: int, _pending: int) -> float:
        return rng.uniform(1.0, 6.0) if index < 200 else rng.uniform(8.0, 12.0)

    _, before = simulate(spread(200), jump)
    _, after = simulate(spread(250), jump)
    assert sum(point < 6.0 for point in before.plan) >= 2  # polls where 1-6 s tasks end
    assert sum(point < 8.0 for point in after.plan) <= 1  # only the first (<= 5 s apart)


def test_resumed_tasks_teach_nothing() -> None:
    """Only tasks the planner saw submitted count (the tracker never reports others)."""
    planner = PollPlanner()
    planner.not_done("resumed", 7200.0)  # never submitted here: ignored
    planner.finished("resumed", 7300.0)
    assert planner.observations == 0
    for _ in range(5):
        planner.observe(2.0, 3.0)
    assert max(planner.plan) < 10.0
