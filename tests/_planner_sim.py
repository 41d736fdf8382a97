"""A clock-free stand-in for the task tracker, to measure the poll planner on known tasks.

:func:`simulate` feeds :class:`~ailab_async._polling.PollPlanner` a list of tasks (submit
time, true duration) and plays the tracker's part on a simulated clock: each task is placed
by ``next_poll``, each poll tells the planner what it saw (``not_done``, ``finished`` with
:func:`~ailab_async._polling.completion_evidence`), and every re-plan re-places the pending
polls, as :mod:`ailab_async._tracker` does. Nothing sleeps, nothing reads a clock: a run
of hundreds of tasks takes a fraction of a second and gives the same figures every time.

The duration shapes (:data:`SHAPES`) are plain seeded samplers of the same families as the
simulator's distributions; :func:`fixed_polling_lag` is the provider's advice (poll at once,
then every 5 s) on the same tasks.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence

import attrs

from ailab_async import PollingConfig
from ailab_async._polling import PollPlanner, completion_evidence

#: A duration sampler: (rng, task index, tasks pending at its submit) -> seconds.
Sampler = Callable[[random.Random, int, int], float]


@attrs.frozen
class Outcome:
    """One task: its true duration, how late its completion was seen, after how many polls."""

    duration: float
    lag: float
    polls: int


@attrs.frozen
class Figures:
    """Means over a set of tasks."""

    tasks: int
    mean_lag: float
    polls_per_task: float
    max_lag: float
    fixed_lag: float

    @property
    def ratio(self) -> float:
        """Mean lag relative to fixed 5 s polling on the same tasks."""
        return self.mean_lag / self.fixed_lag


@attrs.define
class _Task:
    submitted_at: float
    duration: float
    lane: float
    expected: float | None
    last_not_done: float | None = None
    polls: int = 0
    next_poll_at: float = math.inf


def simulate(
    arrivals: Sequence[float],
    sampler: Sampler,
    config: PollingConfig | None = None,
    *,
    seed: int = 0,
    round_trip: float = 0.005,
) -> tuple[list[Outcome], PollPlanner]:
    """Run tasks submitted at ``arrivals`` (seconds, ascending) with durations drawn by
    ``sampler`` through a fresh planner; each poll takes ``round_trip`` seconds and the
    server looks at the task half-way. Returns each task's outcome, in submit order."""
    rng = random.Random(seed)
    planner = PollPlanner(config)
    tasks: dict[int, _Task] = {}
    outcomes: list[Outcome | None] = [None] * len(arrivals)
    heap: list[tuple[float, int, int]] = []  # (time, sequence, task index), -1: a submit
    sequence = itertools.count()
    for index, at in enumerate(arrivals):
        heapq.heappush(heap, (at, next(sequence), -1 - index))

    def place(index: int, task: _Task, offset: float) -> None:
        task.next_poll_at = task.submitted_at + offset
        heapq.heappush(heap, (task.next_poll_at, next(sequence), index))

    while heap:
        now, _, index = heapq.heappop(heap)
        if index < 0:  # a submit
            index = -1 - index
            duration = sampler(rng, index, len(tasks))
            lane = rng.random()
            key = str(index)
            planner.submitted(key)
            task = tasks[index] = _Task(now, duration, lane, planner.expected_polls(lane))
            place(index, task, planner.next_poll(0.0, None, lane))
            continue
        task_or_none = tasks.get(index)
        if task_or_none is None or task_or_none.next_poll_at != now:
            continue  # finished, or re-placed since
        task = task_or_none
        task.polls += 1
        seen_at = now + round_trip / 2
        answered = now + round_trip
        done_at = task.submitted_at + task.duration
        if seen_at >= done_at:
            outcomes[index] = Outcome(task.duration, seen_at - done_at, task.polls)
            del tasks[index]
            evidence = completion_evidence(
                answered - task.submitted_at, task.last_not_done, fresh=True
            )
            assert evidence is not None
            if planner.finished(str(index), evidence[1], task.polls, task.expected):
                for other_index, other in tasks.items():  # the tracker's _replace_pending
                    if other.next_poll_at == math.inf:
                        continue
                    offset = planner.next_poll(
                        answered - other.submitted_at, other.last_not_done, other.lane
                    )
                    if other.submitted_at + offset != other.next_poll_at:
                        place(other_index, other, offset)
            continue
        task.last_not_done = now - task.submitted_at
        planner.not_done(str(index), task.last_not_done)
        age = answered - task.submitted_at
        place(index, task, planner.next_poll(age, task.last_not_done, task.lane))
    finished = [outcome for outcome in outcomes if outcome is not None]
    assert len(finished) == len(arrivals)
    return finished, planner


def fixed_polling_lag(durations: Sequence[float], interval: float = 5.0) -> float:
    """Mean lag of polling at once, then every ``interval`` seconds (the provider's advice)."""
    return statistics.fmean(math.ceil(d / interval) * interval - d for d in durations)


def figures(
    arrivals: Sequence[float],
    sampler: Sampler,
    config: PollingConfig | None = None,
    *,
    skip: int = 100,
    seeds: Sequence[int] = (0, 1, 2),
) -> Figures:
    """Run the tasks once per seed (durations and lanes) and sum up, over all runs, the
    tasks after the first ``skip`` of each (the steady state)."""
    steady: list[Outcome] = []
    worst = 0.0
    for seed in seeds:
        outcomes, _ = simulate(arrivals, sampler, config, seed=seed)
        steady += outcomes[skip:]
        worst = max([worst, *(o.lag for o in outcomes)])
    return Figures(
        tasks=len(steady),
        mean_lag=statistics.fmean(o.lag for o in steady),
        polls_per_task=statistics.fmean(o.polls for o in steady),
        max_lag=worst,
        fixed_lag=fixed_polling_lag([o.duration for o in steady]),
    )


# -- arrivals and shapes -----------------------------------------------------------------------


def spread(count: int, rate: float = 20.0, seed: int = 1) -> list[float]:
    """Poisson arrivals at ``rate`` per second, the first at 0."""
    rng = random.Random(seed)
    gaps = [rng.expovariate(rate) for _ in range(count - 1)]
    return list(itertools.accumulate(gaps, initial=0.0)) if count else []


def burst(count: int, warm_up: int = 100, rate: float = 20.0, seed: int = 1) -> list[float]:
    """``warm_up`` tasks spread out, then the rest submitted at once 10 s later."""
    first = spread(warm_up, rate, seed)
    return first + [(first[-1] + 10.0 if first else 0.0)] * (count - warm_up)


def uniform(low: float, high: float) -> Sampler:
    return lambda rng, _index, _pending: rng.uniform(low, high)


def lognormal(median: float, sigma: float, cap: float = 120.0) -> Sampler:
    return lambda rng, _index, _pending: min(cap, rng.lognormvariate(math.log(median), sigma))


def bimodal(short_share: float, short: Sampler, long: Sampler) -> Sampler:
    def sample(rng: random.Random, index: int, pending: int) -> float:
        pick = short if rng.random() < short_share else long
        return pick(rng, index, pending)

    return sample


def drifting(at_task: int, before: Sampler, after: Sampler) -> Sampler:
    def sample(rng: random.Random, index: int, pending: int) -> float:
        return (before if index < at_task else after)(rng, index, pending)

    return sample


def queue_growing(base: Sampler, per_pending: float) -> Sampler:
    """Durations grow by ``per_pending`` (a share) for each task pending at submit."""
    return lambda rng, index, pending: base(rng, index, pending) * (1.0 + per_pending * pending)


#: name -> (arrivals, sampler): the shapes the planner must hold on. (Long modes are kept
#: below about 12 s: a task must be polled at least every ``fallback_interval``, so tasks of
#: 10-20 s alone need 3-5 polls, and no schedule keeps those within 2 polls per task.)
SHAPES: dict[str, tuple[list[float], Sampler]] = {
    "uniform 1-6 s, spread": (spread(400), uniform(1.0, 6.0)),
    "uniform 1-6 s, burst": (burst(400), uniform(1.0, 6.0)),
    "log-normal (median 3 s)": (spread(400), lognormal(3.0, 0.8)),
    "bimodal 0.5-2 s / 6-12 s": (spread(400), bimodal(0.7, uniform(0.5, 2.0), uniform(6, 12))),
    "queue-growing": (burst(400), queue_growing(uniform(1.0, 6.0), 0.005)),
    "drift 1-6 s -> 3-9 s": (spread(400), drifting(200, uniform(1, 6), uniform(3, 9))),
    "drift 3-9 s -> 1-6 s": (spread(400), drifting(200, uniform(3, 9), uniform(1, 6))),
}
