"""The pure poll decisions of ``_polling``, as tables: no event loop, no clock, no network.

What a poll answer says, what a failed poll means and the error its waiters get, when to poll
again, how far apart polls go, what a finished task teaches the planner, and the planner's
schedules themselves.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any

import pytest

from ailab_async import ImageResult, PollingConfig, TaskStatus, ValidationError, _polling, errors
from ailab_async import _protocol as protocol
from ailab_async._polling import (
    PROCESSING_FAILURE_TRIES,
    PollPlanner,
    PollVerdict,
    classify_poll_error,
    completion_evidence,
    poll_retry_delay,
    poll_spacing,
    read_poll,
    retry_after_of,
    solve_schedules,
    task_failure,
)


def answer(body: dict[str, Any]) -> protocol.Envelope:
    return protocol.Envelope(status=200, body=body, request_id="req-1", log_id="log-1")


# -- what a poll answer says -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"data": {"task_status": 0}}, TaskStatus.QUEUED),
        ({"data": {"task_status": 1}}, TaskStatus.PROCESSING),
        ({"data": {"taskStatus": "1"}}, TaskStatus.PROCESSING),
        ({"task_status": 0}, TaskStatus.QUEUED),
        ({"data": {"task_status": 3}}, errors.TaskFailedError),  # outside 0-2: failed
        ({"data": {"task_status": 2}}, errors.MalformedResponseError),  # done, but no URL
        ({"data": {"foo": 1}}, errors.MalformedResponseError),  # no status: ask again
    ],
    ids=["queued", "processing", "camel-case-text", "top-level", "status-3", "no-url", "none"],
)
def test_read_poll(body: dict[str, Any], expected: TaskStatus | type[Exception]) -> None:
    outcome = read_poll(answer(body), "t1")
    if isinstance(expected, TaskStatus):
        assert outcome is expected
    else:
        assert type(outcome) is expected


def test_read_poll_of_a_finished_task_is_its_result() -> None:
    body = {"data": {"task_status": 2, "image_url": "https://r.example/t1.png"}}
    outcome = read_poll(answer(body), "t1")
    assert isinstance(outcome, ImageResult)
    assert (outcome.image_url, outcome.task_id, outcome.request_id) == (
        "https://r.example/t1.png",
        "t1",
        "req-1",
    )


def test_a_task_status_failed_is_never_read_from_the_wire() -> None:
    assert [TaskStatus.from_wire(value) for value in (0, 1, 2)] == [
        TaskStatus.QUEUED,
        TaskStatus.PROCESSING,
        TaskStatus.SUCCEEDED,
    ]
    for value in (TaskStatus.FAILED.value, 3, 99):
        assert TaskStatus.from_wire(value) is None


def test_a_negative_task_status_is_the_tasks_failure_not_a_state() -> None:
    outcome = read_poll(answer({"data": {"task_status": TaskStatus.FAILED.value}}), "t1")
    assert isinstance(outcome, errors.TaskFailedError)


# -- what a failed poll means ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (errors.RateLimitedError("x", status=429, code="EXCEEDING_LIMITS"), PollVerdict.RETRY),
        (errors.ServerError("x", status=503), PollVerdict.RETRY),
        (errors.MalformedResponseError("x", status=200, retryable=False), PollVerdict.RETRY),
        (errors.DeadlineExceededError("x", endpoint="q", attempts=1), PollVerdict.RETRY),
        (errors.RequestTimeoutError("x", endpoint="q", ambiguous=False), PollVerdict.RETRY),
        (errors.APIError("x", status=302), PollVerdict.RETRY),
        (errors.AuthenticationError("x", status=401), PollVerdict.STOP),
        (errors.PermissionDeniedError("x", status=403), PollVerdict.STOP),
        (errors.InsufficientCreditsError("x", status=429), PollVerdict.STOP),
        (errors.ClientClosedError("x"), PollVerdict.STOP),
        (errors.TaskFailedError("x", task_id="t", status=200), PollVerdict.TASK_FAILED),
        (
            errors.ImageRejectedError("x", status=422, code="ERROR_NO_FACE_IN_FILE"),
            PollVerdict.TASK_FAILED,
        ),
        (
            errors.InvalidRequestError("x", status=400, code="ERROR_INVALID_PARAMETER"),
            PollVerdict.TASK_FAILED,
        ),
        (errors.InvalidRequestError("x", status=404), PollVerdict.RETRY),  # no API code
        (  # our own refusal to follow a redirect: a set-up fault, not the task's failure
            errors.InvalidRequestError("x", status=302, code="UNEXPECTED_REDIRECT"),
            PollVerdict.STOP,
        ),
    ],
)
def test_classify_poll_error(error: errors.AILabError, verdict: PollVerdict) -> None:
    assert classify_poll_error(error) is verdict


def test_tls_failure_on_a_poll_stops_rather_than_retrying_forever() -> None:
    error = errors.ConnectionFailedError("tls", endpoint="q", ambiguous=False)
    error.retryable = False
    assert classify_poll_error(error) is PollVerdict.STOP


def test_processing_failure_is_retried_a_few_times_then_is_the_tasks_failure() -> None:
    error = errors.ServerError("x", status=500, code="PROCESSING_FAILURE")
    for in_a_row in range(1, PROCESSING_FAILURE_TRIES):
        assert classify_poll_error(error, in_a_row=in_a_row) is PollVerdict.RETRY
    assert classify_poll_error(error, in_a_row=PROCESSING_FAILURE_TRIES) is (
        PollVerdict.TASK_FAILED
    )


def test_task_failure_keeps_the_api_code_ids_and_cause() -> None:
    rejected = errors.ImageRejectedError(
        "no face", status=422, code="ERROR_NO_FACE_IN_FILE", request_id="r", log_id="l"
    )
    failure = task_failure(rejected, "t1")
    assert (failure.task_id, failure.status, failure.code) == ("t1", 422, "ERROR_NO_FACE_IN_FILE")
    assert (failure.request_id, failure.log_id, failure.retryable) == ("r", "l", False)
    assert failure.__cause__ is rejected


def test_task_failure_of_a_task_failed_error_is_that_error() -> None:
    reported = errors.TaskFailedError("status 3", task_id="t1", status=200, code="TASK_STATUS_3")
    assert task_failure(reported, "t1") is reported


def test_retry_after_is_found_behind_a_deadline_error() -> None:
    limited = errors.RateLimitedError("x", status=429, retry_after=60.0)
    deadline = errors.DeadlineExceededError("x", endpoint="q", attempts=1)
    deadline.__cause__ = limited
    assert retry_after_of(deadline) == 60.0
    assert retry_after_of(errors.ServerError("x", status=503)) is None


# -- when to poll ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "retry_after", "rand", "expected"),
    [
        (1, None, 0.0, 2.5),
        (1, None, 0.999999, 5.0),
        (2, None, 0.0, 5.0),
        (4, None, 0.0, 20.0),
        (10, None, 0.999999, 60.0),  # capped by poll_retry_max
        (10_000, None, 0.0, 30.0),  # no overflow
        (1, 60.0, 0.0, 60.0),  # Retry-After is a floor ...
        (1, 3600.0, 0.0, 120.0),  # ... capped by retry_after_cap
        (1, math.inf, 0.0, 2.5),
    ],
)
def test_poll_retry_delay(
    failures: int, retry_after: float | None, rand: float, expected: float
) -> None:
    delay = poll_retry_delay(failures, retry_after, rand, PollingConfig())
    assert delay == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("rate", "share", "expected"),
    [(None, 0.5, 0.0), (10.0, 0.5, 0.2), (10.0, 1.0, 0.1), (40.0, 0.25, 0.1)],
)
def test_poll_spacing_keeps_polls_to_their_share_of_the_rate(
    rate: float | None, share: float, expected: float
) -> None:
    assert poll_spacing(rate, PollingConfig(poll_share=share)) == pytest.approx(expected)


# -- what a finished task teaches --------------------------------------------------------------


@pytest.mark.parametrize(
    ("done_at", "last_not_done", "fresh", "expected"),
    [
        (3.0, 2.0, True, (2.0, 3.0)),  # bounded below by our own poll
        (5.0, None, True, (0.0, 5.0)),  # done at its first poll: somewhere in (0, 5]
        (65.0, None, True, (0.0, 65.0)),  # a late first poll is still true, only wide
        (3.0, 2.0, False, None),  # picked up again: its submit time is not ours
        (7200.0, None, False, None),  # a resumed task must not teach "hours"
    ],
)
def test_completion_evidence(
    done_at: float,
    last_not_done: float | None,
    fresh: bool,
    expected: tuple[float, float] | None,
) -> None:
    assert completion_evidence(done_at, last_not_done, fresh=fresh) == expected


# -- the planner -------------------------------------------------------------------------------


def test_planner_schedule_meets_the_budget_for_uniform_1_to_6() -> None:
    observations = [(1.0 + 5.0 * i / 200, 1.0 + 5.0 * i / 200 + 0.01, 1.0) for i in range(200)]
    solved = solve_schedules(observations, 2.0, PollingConfig())
    assert solved is not None
    plan = solved[0]
    # Expected polls and lag of the plan for D ~ U(1, 6), computed exactly.
    points = [0.0, *plan]
    polls = sum(max(0.0, min(1.0, (6 - p) / 5)) for p in points[:-1])
    lag = sum(
        ((min(b, 6) - max(a, 1)) / 5) * (b - (max(a, 1) + min(b, 6)) / 2)
        for a, b in itertools.pairwise(points)
        if min(b, 6) > max(a, 1)
    )
    assert polls <= 2.05  # the budget, up to the grid's discretisation
    assert lag < 0.85


def test_no_evidence_no_schedule() -> None:
    assert solve_schedules([], 2.0, PollingConfig()) is None


def test_before_evidence_polls_go_out_geometrically_not_every_5s() -> None:
    planner = PollPlanner()
    offsets, last = [], None
    for _ in range(8):
        offset = planner.next_poll(0.0 if last is None else last, last)
        offsets.append(offset)
        last = offset
    assert offsets[:4] == pytest.approx([0.5, 0.75, 1.125, 1.6875])
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert max(gaps) <= 5.0 - 0.25  # never further apart than the fallback (less its margin)


def test_a_burst_before_any_plan_sends_only_a_few_scouts_early() -> None:
    """Hundreds submitted with nothing learned: the first few and about fifteen of those
    pending poll in the warm-up; the others wait as long as the guarantee allows (the first
    plan re-places them), instead of each spending the warm-up's polls."""
    planner = PollPlanner()
    first_polls = []
    for index in range(400):
        planner.submitted(f"b{index}")
        first_polls.append(planner.next_poll(0.0, None, lane=(index * 0.618_034) % 1.0))
    assert first_polls[:10] == [0.5] * 10  # the first ones all scout
    scouts = sum(offset == 0.5 for offset in first_polls)
    assert 30 <= scouts <= 100
    assert all(offset in (0.5, 5.0 - 0.25) for offset in first_polls)


def test_a_task_at_the_edge_of_what_is_known_is_not_polled_there_again() -> None:
    """A burst's tasks share their age: the latest of them to finish sets the grid's end,
    and the others, seen running there, would be polled at that end (their last poll plus
    ``min_interval``) at each re-plan as it creeps up. Most tasks still running there is
    the edge of what is known: the next poll steps geometrically from the last one."""
    planner = PollPlanner()
    for index in range(300):
        planner.submitted(f"t{index}")
    for round_, at in enumerate((0.5, 1.0, 1.5, 2.0, 2.5, 3.0)):
        for index in range(300):  # a tenth of the tasks finish in each round from 1 s on
            if index % 10 >= round_:
                planner.not_done(f"t{index}", at - 0.01 if at == 3.0 else at)
            elif index % 10 == round_ - 1:
                planner.finished(f"t{index}", at)
    assert planner.plan[-1] == pytest.approx(3.0)  # the grid ends where they are
    for lane in (0.0, 0.25, 0.5, 0.75, 0.9, 0.99):
        assert planner.next_poll(3.0, 2.99, lane) >= 2.99 * 1.15 - 1e-9


def test_the_plan_is_learned_from_min_observations_finished_tasks() -> None:
    planner = PollPlanner()
    for _ in range(4):
        planner.observe(2.0, 3.0)
    assert not planner.has_plan  # below min_observations: still the warm-up
    planner.observe(2.0, 3.0)
    assert planner.plan
    assert planner.observations == 5
    assert planner.next_poll(0.0, None, lane=0.5) <= 3.0 * 1.05


def test_done_at_first_poll_teaches_short_durations() -> None:
    """(0, t] is not read as "in the upper half": evidence of 1 s tasks from two first-poll
    positions moves the first poll down to where they finish."""
    planner = PollPlanner()
    for index in range(60):
        planner.observe(0.0, 4.0 if index % 2 else 1.2)
    assert planner.plan[0] <= 1.3


def test_pending_tasks_count_as_right_censored_evidence() -> None:
    """A burst's slow tasks, still pending, keep the plan from believing only the quick
    ones that finished first."""
    quick_only, with_pending = PollPlanner(), PollPlanner()
    for planner in (quick_only, with_pending):
        for _ in range(20):
            planner.observe(0.5, 1.0)
    for index in range(60):
        with_pending.submitted(f"slow-{index}")
        with_pending.not_done(f"slow-{index}", 4.0)
    for _ in range(12):  # enough new evidence that both re-plan
        for planner in (quick_only, with_pending):
            planner.observe(0.5, 1.0)
    # Estimated share finished by the longest completion seen (1 s): all of them, for the
    # planner that saw only the quick ones; a quarter, for the one that sees the slow ones.
    assert quick_only._policy is not None
    assert with_pending._policy is not None
    assert quick_only._policy.mass_below[-1] == pytest.approx(1.0)
    assert with_pending._policy.mass_below[-1] < 0.5


def _reference_histogram(
    observations: list[tuple[float, float, float]], cells: int
) -> tuple[list[float], float]:
    """Turnbull's self-consistency rounds cell by cell, as written down: each interval's
    weight shared among the cells it covers in proportion to the current estimate smoothed
    (each cell's mass spread by a Gaussian as wide as a tenth of its age in cells, the first
    cells' kept as they are)."""
    step = max(high for _, high, _ in observations if high != math.inf) / cells
    spans = []
    for low, high, weight in observations:
        first = min(cells, int(low / step))
        if high == math.inf and first >= cells - 1:
            first = cells
        last = cells if high == math.inf else max(first, min(cells - 1, math.ceil(high / step) - 1))
        spans.append((first, last, weight))
    total = sum(weight for _, _, weight in spans)
    mass = [0.0] * (cells + 1)
    for first, last, weight in spans:
        for cell in range(first, last + 1):
            mass[cell] += weight / (total * (last - first + 1))
    for _ in range(_polling._EM_ROUNDS):
        prior = [0.0] * (cells + 1)
        prior[cells] = mass[cells]
        for source in range(cells):
            if source < _polling._SHARP_CELLS:
                prior[source] += mass[source]
                continue
            width = _polling._SMOOTHING * (source + 0.5)
            targets = [
                target
                for target in range(_polling._SHARP_CELLS, cells)
                if abs(target - source) <= math.ceil(4 * width)
            ]
            shares = [math.exp(-0.5 * ((target - source) / width) ** 2) for target in targets]
            for target, share in zip(targets, shares, strict=True):
                prior[target] += mass[source] * share / sum(shares)
        updated = [0.0] * (cells + 1)
        for first, last, weight in spans:
            covered = sum(prior[first : last + 1])
            for cell in range(first, last + 1):
                updated[cell] += prior[cell] * weight / (total * covered) if covered else 0.0
        mass = updated
    norm = sum(mass)
    return [m / norm for m in mass[:cells]], mass[cells] / norm


@pytest.mark.parametrize("seed", range(5))
def test_the_estimate_is_the_smoothed_self_consistency_update(seed: int) -> None:
    """The rounds work on running sums (a few steps per interval, not one per cell) and a
    cached kernel: the estimate is still the cell-by-cell update's, to rounding."""
    rng = random.Random(seed)
    observations = []
    for index in range(150):
        duration = rng.lognormvariate(1.0, 0.6)
        low = rng.choice([0.0, duration * rng.uniform(0.3, 0.95)])
        high = math.inf if index % 7 == 0 else duration * rng.uniform(1.0, 1.4)
        observations.append((low, high, 0.98**index))
    expected_mass, expected_beyond = _reference_histogram(observations, 60)
    _, mass, beyond = _polling._histogram(observations, 60)
    assert mass == pytest.approx(expected_mass, rel=1e-9, abs=1e-12)
    assert beyond == pytest.approx(expected_beyond, rel=1e-9, abs=1e-12)


def _reference_schedule(
    points: list[float],
    below: list[float],
    moment: list[float],
    cost: float,
    longest_gap: float,
    shortest_gap: float,
) -> tuple[list[float], float, list[float]]:
    """The dynamic programme over poll times as written down: from each point, every next
    poll allowed (no closer than ``shortest_gap`` but the last point, no further than
    ``longest_gap`` but the next point), costed as ``cost`` per task still running plus the
    lag of the tasks finishing before it."""
    last = len(points) - 1
    value = [0.0] * (last + 1)
    choice = [last] * (last + 1)
    for i in range(last - 1, -1, -1):
        best, pick = math.inf, last
        for j in range(i + 1, last + 1):
            gap = points[j] - points[i]
            if gap > longest_gap and j > i + 1:
                break
            if gap < shortest_gap and j < last:
                continue
            candidate = (
                cost * (1.0 - below[i])
                + points[j] * (below[j] - below[i])
                - (moment[j] - moment[i])
                + value[j]
            )
            if candidate < best:
                best, pick = candidate, j
        value[i], choice[i] = best, pick
    schedule, polls, i = [], 0.0, 0
    while i < last:
        polls += 1.0 - below[i]
        i = choice[i]
        schedule.append(points[i])
    return schedule, polls, value


@pytest.mark.parametrize("seed", range(40))
def test_the_schedule_is_the_dynamic_programmes_written_out(seed: int) -> None:
    """The solver's inner loop is rearranged (one multiplication per candidate, the allowed
    next polls found once for every cost): its schedules are still the written-out
    programme's, on grids equal and not, with gaps tight and loose."""
    rng = random.Random(seed)
    count = rng.randint(2, 60)
    points = [0.0, *sorted(rng.uniform(0.0, 20.0) for _ in range(count - 1))]
    if seed % 2:
        points = [cell * 0.1 for cell in range(count)]
    shares = [rng.random() ** 3 for _ in range(count - 1)]
    total = sum(shares) * rng.uniform(1.0, 1.3)  # some probability past the last point
    below, moment = [0.0], [0.0]
    for cell, share in enumerate(shares):
        below.append(below[-1] + share / total)
        moment.append(moment[-1] + share / total * (points[cell] + points[cell + 1]) / 2)
    longest, shortest = rng.choice([(4.75, 0.25), (1.5, 1.0), (0.5, 0.01), (2.1, 2.0)])
    cost = rng.choice([0.0, 1e-3, rng.uniform(0.0, 5.0), 1e3])
    expected = _reference_schedule(points, below, moment, cost, longest, shortest)
    windows = _polling._windows(points, longest, shortest)
    schedule, polls, value = _polling._best_schedule(points, below, moment, cost, windows)
    assert schedule == expected[0]
    assert polls == pytest.approx(expected[1], rel=1e-12)
    assert value == pytest.approx(expected[2], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("longest", "cells"), [(6.0, 60), (11.0, 88), (30.0, 120)])
def test_a_long_horizon_gets_finer_cells_than_sixty(longest: float, cells: int) -> None:
    """The grid's cells are at most an eighth of a second wide, between 60 and 120 of them:
    tasks of 1-6 s keep the 60 cells they had, a long tail gets finer ones (with 60 cells
    throughout, a long-lived client's log-normal tasks were found at 0.504-0.514 of fixed
    polling's lag at 2.0 polls per task, 0.492-0.502 with these)."""
    rng = random.Random(7)
    durations = [rng.uniform(1.0, longest - 0.5) for _ in range(200)] + [longest - 0.3]
    observations = [(duration - 0.3, duration + 0.3, 1.0) for duration in durations]
    solved = solve_schedules(observations, 2.0, PollingConfig())
    assert solved is not None
    points = solved[-1].points
    assert points[1] - points[0] == pytest.approx(longest / cells)


@pytest.mark.parametrize(("seed", "budget"), [(0, 2.0), (1, 1.2), (2, 3.0), (3, 2.0)])
def test_the_bisection_probe_changes_no_schedule(
    seed: int, budget: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bisection for the budget's poll cost skips its first halvings when one programme
    at the last of them keeps within the budget: the schedules, shares and values are the
    full bisection's."""
    rng = random.Random(seed)
    observations = []
    for index in range(150):
        duration = rng.lognormvariate(1.0, 0.4 + 0.3 * seed)
        low = rng.choice([0.0, duration * rng.uniform(0.3, 0.95)])
        high = math.inf if index % 9 == 0 else duration * rng.uniform(1.0, 1.3)
        observations.append((low, high, 0.99**index))
    probed = solve_schedules(observations, budget, PollingConfig())
    monkeypatch.setattr(_polling, "_PROBE_COST", math.inf)
    halved = solve_schedules(observations, budget, PollingConfig())
    assert probed is not None
    assert halved is not None
    assert probed[:4] == halved[:4]
    assert probed[4] == halved[4]


def test_a_task_seen_running_at_the_horizon_counts_wholly_beyond_it() -> None:
    """Half the tasks finished by 6 s, the other half were seen running at 5.95 s, in the
    grid's last cell: none of them is put before the horizon (where a burst's tasks would be
    polled again and again as the longest completion seen creeps up)."""
    finished = [(1.0 + index / 10, 1.1 + index / 10, 1.0) for index in range(50)]
    running = [(5.95, math.inf, 1.0)] * 50
    solved = solve_schedules(finished + running, 2.0, PollingConfig())
    assert solved is not None
    policy = solved[-1]
    assert policy.mass_below[-1] == pytest.approx(0.5, abs=0.01)


def test_each_task_expected_past_the_horizon_counts_the_polls_given() -> None:
    """Half the tasks still running past the longest completion seen: counted three polls
    each instead of one, the schedule has that much less to spend on what it knows."""
    finished = [(1.0 + index / 10, 1.1 + index / 10, 1.0) for index in range(50)]
    running = [(5.95, math.inf, 1.0)] * 50
    once = solve_schedules(finished + running, 3.0, PollingConfig())
    thrice = solve_schedules(finished + running, 3.0, PollingConfig(), past_polls=3.0)
    assert once is not None
    assert thrice is not None
    assert thrice[-1].past == pytest.approx(0.5, abs=0.01)
    assert min(thrice[3]) >= 0.5 * 3.0  # the polls it counts include three for each
    assert thrice[0][0] > once[0][0]  # its first poll later: fewer polls before the horizon


def _planner_of_quick_tasks() -> PollPlanner:
    """A plan learned from 80 tasks of 1-1.9 s (the longest first), each seen finished 0.1 s
    after a poll."""
    planner = PollPlanner()
    for index in range(80):
        done = 1.9 - (index % 10) / 10
        planner.observe(done - 0.1, done)
    return planner


def test_tasks_outliving_their_plan_teach_what_its_horizon_costs() -> None:
    """A batch of 8 s tasks placed by a plan that knows only 1-2 s ones, each polled four
    times past its horizon, where the plan expected next to no task: the next plans count
    three polls (the most) for each task they expect past their horizon."""
    planner = _planner_of_quick_tasks()
    assert planner.past_polls == 1.0  # every task finished within its plan's horizon
    for index in range(20):
        planner.submitted(f"slow-{index}")
    for index in range(20):
        for offset in (3.0, 5.0, 7.0):
            planner.not_done(f"slow-{index}", offset)
    for index in range(20):
        planner.finished(f"slow-{index}", 8.0)
    assert planner.past_polls == 3.0


def test_dropped_tasks_teach_nothing_about_the_horizon() -> None:
    planner = _planner_of_quick_tasks()
    planner.submitted("slow")
    planner.not_done("slow", 7.0)
    planner.dropped("slow")
    assert planner.past_polls == 1.0
    assert planner._past == {}


def _planner_with_tasks_running_past_the_horizon(running: int, oldest: float) -> PollPlanner:
    """Quick tasks (1-2 s) have finished; ``running`` others were last seen running at ages
    spread from 2.2 s up to ``oldest``, past everything seen finish (a slow kind of task
    none of which has finished yet)."""
    planner = PollPlanner()
    for index in range(40):
        planner.observe(0.5, 1.0 + index / 40)
    for index in range(running):
        planner.submitted(f"slow-{index}")
        planner.not_done(f"slow-{index}", 2.2 + (oldest - 2.2) * index / max(1, running - 1))
    for index in range(20):  # enough new evidence to re-plan with the slow ones in it
        planner.observe(0.5, 1.0 + index / 20)
    return planner


def test_the_tail_skips_to_where_many_were_seen_still_running() -> None:
    """Past the longest completion seen, a task would step at each 1.25x of its age; where
    ten or more others were already seen still running, none of which finished, a poll
    would find next to nothing done: it skips to the latest such age instead."""
    planner = _planner_with_tasks_running_past_the_horizon(running=30, oldest=5.0)
    assert planner.plan[-1] <= 2.0  # only the quick ones have finished
    seen = sorted((2.2 + 2.8 * index / 29 for index in range(30)), reverse=True)
    tenth_oldest = seen[9]
    for lane in (0.1, 0.5, 0.9):
        assert planner.next_poll(2.5, 2.5, lane) == pytest.approx(tenth_oldest)
    # Past that age (among the oldest), the tail steps geometrically again.
    assert planner.next_poll(4.9, 4.9, 0.5) == pytest.approx(4.9 * 1.25)


def test_a_few_tasks_running_past_the_horizon_do_not_move_the_tail() -> None:
    planner = _planner_with_tasks_running_past_the_horizon(running=9, oldest=5.0)
    assert planner.next_poll(2.5, 2.5, 0.5) == pytest.approx(2.5 * 1.25)


def test_the_tail_skips_no_further_than_the_fallback_allows() -> None:
    planner = _planner_with_tasks_running_past_the_horizon(running=30, oldest=60.0)
    assert planner.next_poll(2.5, 2.5, 0.5) == pytest.approx(2.5 + 5.0 - 0.25)


def test_dropped_tasks_leave_the_evidence() -> None:
    planner = PollPlanner()
    planner.submitted("t1")
    planner.not_done("t1", 30.0)
    planner.dropped("t1")
    for _ in range(5):
        planner.observe(2.0, 3.0)
    assert planner.plan[-1] < 10.0


def _spread_durations(planner: PollPlanner, polls: int, expected: float) -> None:
    """Feed 400 tasks of 1-6 s, each spending ``polls`` where its plan expected ``expected``."""
    for index in range(400):
        planner.submitted(f"t{index}")
        planner.not_done(f"t{index}", 1.0 + (index % 50) / 10)
        planner.finished(f"t{index}", 1.1 + (index % 50) / 10, polls=polls, expected=expected)


def test_the_budget_is_corrected_by_what_tasks_spend() -> None:
    planner = PollPlanner()
    _spread_durations(planner, polls=3, expected=2.5)
    # The measured surprise (the first 25 tasks, placed while learning, do not count).
    assert planner.overspend == pytest.approx(0.5, abs=0.015)
    assert planner.expected_polls(0.5) is not None
    sparse, dense = planner._plan_polls
    share = planner._dense_share
    assert sparse * (1 - share) + dense * share == pytest.approx(2.0 - planner.overspend, abs=0.01)


def test_the_budget_correction_goes_no_lower_than_one_poll_per_task() -> None:
    planner = PollPlanner(PollingConfig(target_polls=2.5))
    _spread_durations(planner, polls=9, expected=2.0)
    assert planner.overspend == pytest.approx(1.5)  # target_polls - 1, not more


def test_tasks_spending_less_than_planned_never_raise_the_budget() -> None:
    planner = PollPlanner()
    _spread_durations(planner, polls=1, expected=2.0)
    assert planner.overspend == 0.0


def test_plans_that_count_right_on_average_keep_the_whole_budget() -> None:
    """Tasks spend two polls more or less than their plan expected, at random, none more on
    average: the budget stays about where it is. When the smoothed surprise itself stopped
    at zero, each run of tasks below plan was forgotten and each run above it counted, so
    the correction sat above zero (here 0.063 polls per task on average, 0.014 now) and
    lowered the budget of plans that counted right (a long-lived client's log-normal tasks
    spent 1.95 polls per task where their plans expected 1.97)."""
    planner = PollPlanner()
    rng = random.Random(5)
    corrections = []
    for index in range(1200):
        planner.submitted(f"t{index}")
        planner.not_done(f"t{index}", 1.0 + (index % 50) / 10)
        polls = 4 + rng.choice((-2, 2))
        planner.finished(f"t{index}", 1.1 + (index % 50) / 10, polls=polls, expected=4.0)
        if index >= 400:
            corrections.append(planner.overspend)
    assert sum(corrections) / len(corrections) <= 0.03


def _learned_planner() -> PollPlanner:
    """A planner whose plan rests on enough finished tasks for the budget correction."""
    planner = PollPlanner()
    for index in range(60):
        planner.observe(0.5 + index / 12, 1.0 + index / 12)
    return planner


def _batch(planner: PollPlanner, finish_order: list[int]) -> float:
    """Submit twenty tasks at once; the odd ones spend a poll less than their plan expected,
    the even ones two more; finish them in ``finish_order``. Returns the correction."""
    for index in range(20):
        planner.submitted(f"b{index}")
    for index in finish_order:
        polls = 1 if index % 2 else 4
        planner.finished(f"b{index}", 1.0 + index / 10, polls=polls, expected=2.0)
    return planner.overspend


def test_the_budget_correction_counts_tasks_in_submit_order() -> None:
    """A batch's quick tasks finish first: counted as they finish, they would leave the
    correction at zero (it never goes below), and then the slow ones would push it up."""
    quick_first = _batch(_learned_planner(), [*range(1, 20, 2), *range(0, 20, 2)])
    as_submitted = _batch(_learned_planner(), list(range(20)))
    assert quick_first == pytest.approx(as_submitted)
    assert 0.0 < quick_first < 0.1  # a mean surprise of 0.5, smoothed over ~100 tasks


def test_a_slow_task_holds_the_correction_back_only_until_its_surprise_is_sure() -> None:
    planner = _learned_planner()
    planner.submitted("slow")
    for index in range(5):
        planner.submitted(f"q{index}")
        planner.finished(f"q{index}", 2.0, polls=4, expected=2.0)
    assert planner.overspend == 0.0  # they wait for the slow task submitted before them
    for poll in range(1, 8):
        planner.not_done("slow", 2.0 * poll)
    corrected = planner.overspend
    assert corrected > 0.0  # it has spent three polls more than planned: that counts now
    planner.finished("slow", 20.0, polls=12, expected=2.0)
    assert planner.overspend == corrected  # and only once


def test_tasks_placed_while_learning_teach_the_budget_correction_nothing() -> None:
    planner = PollPlanner()
    for _ in range(10):
        planner.observe(2.0, 3.0)
    assert planner.has_plan
    planner.submitted("early")  # the plan rests on 10 tasks: learning
    planner.finished("early", 9.0, polls=5, expected=2.0)
    assert planner.overspend == 0.0
    for _ in range(20):
        planner.observe(2.0, 3.0)
    planner.submitted("later")  # 30 tasks: learned
    planner.finished("later", 9.0, polls=5, expected=2.0)
    assert planner.overspend > 0.0


@pytest.mark.parametrize("lane", [0.01, 0.3, 0.77, 0.999])
def test_no_poll_is_more_than_the_fallback_after_the_last(lane: float) -> None:
    planner = PollPlanner()
    for index in range(50):
        planner.observe(float(index), float(index) + 0.5)  # durations 0.5 .. 50 s
    last: float | None = None
    for _ in range(40):
        age = 0.0 if last is None else last
        offset = planner.next_poll(age, last, lane)
        assert offset - (last or 0.0) <= 5.0 - 0.25 + 1e-9
        assert offset >= age
        last = offset


def _polled_every_half_second(
    planner: PollPlanner, rng: random.Random, low: float, high: float
) -> bool:
    """One task of ``Uniform(low, high)`` seconds, polled every 0.5 s: what it teaches."""
    duration = rng.uniform(low, high)
    seen_running = math.floor(duration * 2.0) / 2.0
    return planner.observe(seen_running, seen_running + 0.5)


def _intervals(rng: random.Random, low: float, high: float, count: int) -> list[list[float]]:
    intervals = []
    for _ in range(count):
        seen_running = math.floor(rng.uniform(low, high) * 2.0) / 2.0
        intervals.append([seen_running, seen_running + 0.5])
    return intervals


@pytest.mark.parametrize(
    ("low", "high", "changed"),
    [(1.0, 6.0, False), (3.0, 9.0, True), (0.5, 3.0, True), (1.5, 6.5, False)],
)
def test_recent_tasks_that_disagree_with_the_plan_are_a_change(
    low: float, high: float, changed: bool
) -> None:
    """Tasks alike to those the plan was made for agree with it (half a second later, a
    shift within the polls' own resolution, too); tasks that take longer, or shorter, are
    a change."""
    rng = random.Random(3)
    evidence = [(a, b, 1.0) for a, b in _intervals(rng, 1.0, 6.0, 200)]
    solved = solve_schedules(evidence, 2.0, PollingConfig())
    assert solved is not None
    policy = solved[4]
    assert _polling._changed(_intervals(rng, low, high, 40), policy) is changed


def test_a_task_still_running_past_the_plan_counts_towards_a_change() -> None:
    rng = random.Random(4)
    evidence = [(a, b, 1.0) for a, b in _intervals(rng, 1.0, 6.0, 200)]
    solved = solve_schedules(evidence, 2.0, PollingConfig())
    assert solved is not None
    running = [[6.0, math.inf]] * 20 + _intervals(rng, 1.0, 6.0, 20)
    assert _polling._changed(running, solved[4])
    assert not _polling._changed(_intervals(rng, 1.0, 6.0, 10), solved[4])  # too few to say


def _uniform_plan() -> _polling._Policy:
    """A plan solved for 1-6 s tasks polled every half second (the tests' intervals)."""
    rng = random.Random(4)
    evidence = [(a, b, 1.0) for a, b in _intervals(rng, 1.0, 6.0, 200)]
    solved = solve_schedules(evidence, 2.0, PollingConfig())
    assert solved is not None
    return solved[4]


def test_young_tasks_still_running_do_not_hide_a_change() -> None:
    """Twenty tasks all still running at 3.5 s, where the plan has half of them done, are a
    change beside twenty tasks seen running once at 0.5 s, which say next to nothing of the
    durations (counted a whole uniform draw's worth each, they hid it: 2.8 standard errors
    for 4.5)."""
    policy = _uniform_plan()
    recent = [[3.5, math.inf] for _ in range(20)] + [[0.5, math.inf] for _ in range(20)]
    assert _polling._changed(recent, policy)


def test_tasks_alike_to_the_plans_are_seldom_a_change() -> None:
    """The same ages, the same kind of young tasks, but durations the plan was made for:
    seldom a change (beyond 3.5 standard errors: 0.05 % by chance), in one window of the
    last tasks or in a run at the end of them."""
    policy = _uniform_plan()
    rng = random.Random(7)
    windows = runs = 0
    for _ in range(300):
        recent = [
            [0.0, 3.5] if rng.uniform(1.0, 6.0) <= 3.5 else [3.5, math.inf] for _ in range(20)
        ]
        recent += [[0.5, math.inf] for _ in range(20)]
        windows += _polling._changed(recent, policy)
        runs += _polling._disagreeing(_intervals(rng, 1.0, 6.0, 60) + recent, policy) is not None
    assert windows <= 2
    assert runs <= 2


def test_a_run_of_the_youngest_tasks_alone_can_be_a_change() -> None:
    """The twenty tasks since a change, all still running at 3 s where the plan has 41 %
    done, are a change on their own (3.9 standard errors), though not among the last forty
    (2.4): the run is what changed."""
    policy = _uniform_plan()
    older = _intervals(random.Random(0), 1.0, 6.0, 60)
    since = [[3.0, math.inf] for _ in range(20)]
    evidence = older + since
    assert not _polling._changed(evidence[-40:], policy)
    found = _polling._disagreeing(evidence, policy)
    assert found is not None
    assert found[0] is since[0]
    assert len(found) == len(since)
    assert _polling._disagreeing(older, policy) is None


def test_young_tasks_do_not_pull_where_a_change_began_back_among_the_old_ones() -> None:
    """Since a change: twenty tasks found late (5.5-6 s, where the plan has 90 % done),
    then the twenty youngest, each seen running once at 0.5 s, which say nothing. Before
    it, the old durations, the last ten on the long side (4-4.5 s). The change began at
    the first late task. Counted a whole uniform draw each, the young tasks diluted the
    run so much that taking in the long-side ten and two older tasks scored higher (index
    58, not 70), and those twelve were then moved with the old durations."""
    policy = _uniform_plan()
    older = _intervals(random.Random(0), 1.0, 6.0, 60) + [[4.0, 4.5] for _ in range(10)]
    late = [[5.5, 6.0] for _ in range(20)]
    young = [[0.5, math.inf] for _ in range(20)]
    evidence = older + late + young
    assert _polling._disagreeing(evidence, policy) is not None
    assert _polling._change_start(evidence, policy) == len(older)


def test_the_memory_is_long_while_durations_hold_and_short_after_a_change() -> None:
    """While the tasks keep to the durations the plan was made for, its evidence's half-life
    grows to five times ``half_life`` (a long tail's schedule rests on more tasks); when
    recent tasks disagree with it, the half-life is ``half_life`` again, and stays there
    until the tasks in flight at the change have finished."""
    rng = random.Random(5)
    planner = PollPlanner()
    assert planner.memory == 40.0
    for _ in range(400):
        _polled_every_half_second(planner, rng, 1.0, 6.0)
    assert planner.memory == 200.0
    for _ in range(60):
        _polled_every_half_second(planner, rng, 3.0, 9.0)
    assert planner.memory == 40.0
    for _ in range(60):
        _polled_every_half_second(planner, rng, 3.0, 9.0)
    assert planner.memory == 40.0  # the tasks in flight at the change (_SETTLE since it)
    for _ in range(230):
        _polled_every_half_second(planner, rng, 3.0, 9.0)
    assert planner.memory > 100.0


def _polled_at(duration: float, rng: random.Random) -> tuple[float, float, float]:
    """A task of ``duration`` under a plan polling at 1.5, 3, 4.5, 6, 8, 10 s and on (each
    task's polls stretched by a few per cent): its interval."""
    low = 0.0
    for planned in (1.5, 3.0, 4.5, 6.0, 8.0, 10.0, 12.5, 15.0, 20.0, 25.0, 30.0, 40.0):
        point = planned * (1.0 + 0.05 * (rng.random() - 0.5))
        if point >= duration:
            return low, point, 1.0
        low = point
    return low, math.inf, 1.0


def test_the_evidence_chooses_a_wider_smoothing_for_a_smooth_tail_only() -> None:
    """Each half of the evidence predicts the other best under a wider smoothing when the
    durations are smooth (a log-normal's long tail), under the narrow one when they have
    sharp edges (short tasks and long ones, nothing between)."""
    rng = random.Random(1)
    smooth = [_polled_at(3.0 * math.exp(0.8 * rng.gauss(0.0, 1.0)), rng) for _ in range(200)]
    edged = [
        _polled_at(rng.uniform(0.5, 2.0) if rng.random() < 0.7 else rng.uniform(6.0, 12.0), rng)
        for _ in range(200)
    ]
    assert _polling._choose_smoothing(smooth) == max(_polling._SMOOTHINGS)
    assert _polling._choose_smoothing(edged) == _polling._SMOOTHING == min(_polling._SMOOTHINGS)


def test_the_smoothing_is_chosen_only_once_durations_have_held_for_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until ``_SMOOTH_AFTER`` tasks have finished since the last change, every plan shares
    by ``_SMOOTHING``; from then on by what the evidence chooses (here a log-normal's: the
    wider one), checked every ``_CHOOSE_EVERY`` plans; after a change, ``_SMOOTHING`` again."""
    used: list[float | None] = []
    solve = _polling.solve_schedules

    def spy(*args: Any, smoothing: float | None = None, **kwargs: Any) -> Any:
        used.append(smoothing)
        return solve(*args, smoothing=smoothing, **kwargs)

    monkeypatch.setattr(_polling, "solve_schedules", spy)
    rng = random.Random(2)
    planner = PollPlanner()

    def lognormal(median: float) -> None:
        low, high, _ = _polled_at(median * math.exp(0.8 * rng.gauss(0.0, 1.0)), rng)
        planner.observe(low, high if high != math.inf else 60.0)

    for _ in range(_polling._SMOOTH_AFTER - 10):
        lognormal(3.0)
    assert set(used) == {_polling._SMOOTHING}
    for _ in range(30):
        lognormal(3.0)
    assert used[-1] == max(_polling._SMOOTHINGS) > _polling._SMOOTHING
    for _ in range(60):
        lognormal(12.0)
    assert planner.memory == 40.0
    assert used[-1] == _polling._SMOOTHING


def test_tasks_before_a_change_do_not_come_back_as_the_memory_grows() -> None:
    """After a change, the memory grows again, but the tasks from before it keep the short
    one: 250 tasks later, those 1-6 s tasks (still within a window of 600) would otherwise
    weigh about 0.4 each, and the plan would expect tasks to finish before 3 s."""
    rng = random.Random(7)
    planner = PollPlanner(PollingConfig(window=600))
    for _ in range(300):
        _polled_every_half_second(planner, rng, 1.0, 6.0)
    for _ in range(250):
        _polled_every_half_second(planner, rng, 3.0, 9.0)
    assert planner.memory > 100.0
    policy = planner._policy
    assert policy is not None
    assert policy.mass_at(3.0)[0] < 0.02


def test_a_change_to_longer_tasks_moves_the_old_evidence_to_where_they_now_are() -> None:
    """Tasks seen still running at 5 s where the plan expected most of them done: before
    any of them has finished (no completion seen past 6.5 s), the plan reaches past the old
    tasks' longest completion, its first poll later than before, instead of polling them at
    the old plan's ages, each poll "not done"."""
    rng = random.Random(8)
    planner = PollPlanner()
    for _ in range(400):
        _polled_every_half_second(planner, rng, 1.0, 6.0)
    old_plan = planner.plan
    assert old_plan[-1] <= 6.5
    for index in range(40):
        planner.submitted(f"longer-{index}")
        planner.not_done(f"longer-{index}", 5.0)
    for _ in range(10):  # the quick ones among them finish: a re-plan
        _polled_every_half_second(planner, rng, 3.0, 6.0)
    assert planner.memory == 40.0  # a change
    assert planner.plan[-1] > 7.5
    assert planner.plan[0] > old_plan[0] + 0.5


def test_a_change_is_measured_on_every_task_since_it_not_only_the_last_forty() -> None:
    """Durations move from 1-6 s to 3-9 s: the change is seen some 20-30 tasks after it,
    when the last 40 tasks are still partly the old durations. The old tasks are moved by
    as much as the tasks since the change say (where the evidence starts to disagree with
    the plan), not by the last 40 mixed: the plan then expects next to none of the new
    tasks finished by 3 s (0.034 of them over six seeds, where the last 40 said 0.121; the
    median 5.65 s, not 5.02 s: the new durations' is 6 s)."""
    early, medians = [], []
    for seed in range(6):
        rng = random.Random(seed)
        planner = PollPlanner()
        for _ in range(400):
            _polled_every_half_second(planner, rng, 1.0, 6.0)
        while planner.memory > planner.config.half_life:  # until the change is seen
            _polled_every_half_second(planner, rng, 3.0, 9.0)
        policy = planner._policy
        assert policy is not None
        early.append(policy.mass_at(3.0)[0])
        medians.append(next(point for point in policy.points if policy.mass_at(point)[0] >= 0.5))
    assert statistics.fmean(early) <= 0.06, early
    assert statistics.fmean(medians) >= 5.4, medians


def test_a_batch_still_running_is_not_old_evidence_to_move() -> None:
    """Among the tasks before a change, more than one in five still running: one batch
    whose later tasks take longer, not old durations to carry over."""
    rng = random.Random(9)
    evidence = [(a, b, 1.0) for a, b in _intervals(rng, 1.0, 6.0, 200)]
    solved = solve_schedules(evidence, 2.0, PollingConfig())
    assert solved is not None
    recent = [[5.0, math.inf] for _ in range(40)]
    finished = _intervals(rng, 1.0, 6.0, 100)
    draining = [*(list(record) for record in finished), *([[2.0, math.inf]] * 30)]
    _polling._carry_over(draining, recent, solved[4])
    assert draining[:100] == finished
    moved = [*(list(record) for record in finished), *([[2.0, math.inf]] * 20)]
    _polling._carry_over(moved, recent, solved[4])
    assert all(
        after[0] > before[0] + 1.0 for after, before in zip(moved[:100], finished, strict=True)
    )


def test_the_memory_is_short_while_a_batch_of_most_of_a_window_is_pending() -> None:
    rng = random.Random(6)
    planner = PollPlanner()
    for _ in range(400):
        _polled_every_half_second(planner, rng, 1.0, 6.0)
    assert planner.memory == 200.0
    for index in range(200):
        planner.submitted(f"batch-{index}")
        planner.not_done(f"batch-{index}", 0.5)
    for _ in range(10):
        _polled_every_half_second(planner, rng, 1.0, 6.0)
    assert planner.memory == 40.0


def test_planner_keeps_only_the_most_recent_window() -> None:
    planner = PollPlanner(PollingConfig(window=10))
    for _ in range(25):
        planner.observe(2.0, 3.0)
    assert planner.observations == 10


def test_a_task_that_outlived_the_plan_is_still_polled_later() -> None:
    planner = PollPlanner()
    for _ in range(5):
        planner.observe(2.0, 3.0)
    last = planner.plan[-1]
    assert planner.next_poll(last + 10.0, last + 10.0) > last + 10.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_polls": 0.5},
        {"poll_share": 0},
        {"give_up_after": math.nan},
        {"give_up_after": 0},
        {"fallback_interval": -1},
        {"min_interval": "1"},
        {"window": 0},
        {"min_observations": 2.5},
        {"retry_after_cap": 0},
        {"poll_retry_max": math.nan},
        {"explore_share": 1.5},
        {"jitter": -0.1},
        {"half_life": 0},
        {"min_interval": 6.0},  # not below the fallback interval
    ],
)
def test_bad_polling_config_is_a_validation_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        PollingConfig(**kwargs)
    assert isinstance(info.value, ValueError)
