"""The poll planner against a zoo of task-duration shapes, on a simulated clock.

Every figure here comes from :mod:`tests._planner_sim` (no event loop, no real time), on
the benchmark's own shapes (``benchmarks.bench_tracker.SHAPES``), so the runs are
deterministic under their seeds and the bounds can be asserted. Two kinds of bounds:

* the targets (at most ``target_polls`` polls per task within 0.02, mean lag at most half
  of fixed 5 s polling's, uniform 1-6 s found within 0.8 s), on eight seeds per shape (three
  move the means by a few hundredths with any change to the planner), marked ``xfail``
  (strict) on the shapes where the planner misses them today, with the measured figures, so
  a fix shows up as an XPASS that fails the run until the mark goes;
* guards a little beyond what the planner reaches today, so a regression fails at once.

``python -m tests._planner_sim`` prints the whole table, with the bounds no schedule fixed in
advance can beat on the same tasks.
"""

from __future__ import annotations

import random
import statistics
from unittest import mock

import pytest

from ailab_async import PollingConfig, _polling
from ailab_async._polling import PollPlanner
from ailab_async._tracker import _LAUNCH_SLACK
from ailab_async.testing.simulator import ManualClock
from ailab_async.testing.simulator._state import SimulatorState
from benchmarks._common import sample_portraits
from benchmarks.bench_tracker import (
    IMAGE_SIDE,
    _simulator_config,
    burst_arrivals,
    lane_source,
    poisson_arrivals,
)
from benchmarks.bench_tracker import SHAPES as BENCH_SHAPES

from . import _planner_sim as planner_sim
from ._planner_sim import (
    EDGE,
    FALLBACK,
    PLAN,
    REASONS,
    SHAPES,
    TAIL,
    Figures,
    best_fixed,
    blocks,
    estimate_error,
    figures,
    least_polls,
    ratio_at_budget,
    shapes,
    simulate,
    steady_durations,
    told_truth,
    uniform,
)

TARGET_POLLS = PollingConfig().target_polls
POLLS_TOLERANCE = 0.15  # three seeds of 300 steady-state tasks: the mean moves about this much
#: The shapes' figures: eight seeds of 300 steady-state tasks each.
SHAPE_SEEDS = range(8)
SHAPE_POLLS_TOLERANCE = 0.02
TARGET_RATIO = 0.5
TARGET_UNIFORM_LAG = 0.8

QUEUE = "queue-growing"
DRIFT_UP = "drift 1-6 s -> 3-9 s"
#: Where the planner misses a target today, with the harness's figures (eight seeds).
MISSES_POLLS = {
    QUEUE: "2.62 polls: no schedule keeping the fallback guarantee spends under 2.14 here",
    # (The upward drift keeps to it, just: 2.010 polls at 0.497x, seeds 8-15 2.031 at 0.445x,
    # 16-31 2.020 at 0.491x, 32-63 2.011 at 0.488x. The tasks placed by the old plan spend
    # 2.65 polls each, tasks 200-250; the new durations leave the budget almost no room to
    # pay that back, since the sparsest schedule keeping the fallback guarantee spends about
    # 1.8 there, so the lag rises instead. It was 2.036 at 0.507x, 2.057 at 0.485x, 2.040 at
    # 0.496x until a change was also found in a run of the youngest tasks alone, and 2.012 at
    # 0.507x, 2.031 at 0.452x, 2.025 at 0.487x, 2.012 at 0.491x until where the change began
    # was scored the same way.
    # Log-normal keeps to it since its plans count what the tasks past their horizon spend
    # there: 2.00 polls at 0.49x, seeds 8-15 2.01 at 0.49x, 16-31 2.02 at 0.52x; it was 2.06
    # at 0.47x, learning the long part: tasks 100-200 were placed before their slow ones had
    # finished, 2.2 polls each. Bimodal 0.5-2 s / 6-12 s: 1.98 polls at 0.24x, seeds 8-15
    # 2.01, 16-31 2.00; it was 2.00, 2.04 and 2.03.)
}
MISSES_RATIO = {
    QUEUE: "0.55x at 2.62 polls",
}


def _marked(names: list[str], misses: dict[str, str]) -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=misses[name]))
        if name in misses
        else name
        for name in names
    ]


#: A long-lived client's steady state: runs of this many tasks, after this many.
LONG_TASKS, LONG_SKIP = 1000, 300
LOG_NORMAL = "log-normal, median 3 s"


@pytest.fixture(scope="module")
def long_log_normal() -> Figures:
    """Log-normal's steady state in long runs (eight seeds of tasks 300-1000)."""
    arrivals, sampler = shapes(LONG_TASKS)[LOG_NORMAL]
    return figures(arrivals, sampler, skip=LONG_SKIP, seeds=SHAPE_SEEDS)


@pytest.fixture(scope="module")
def shape_figures() -> dict[str, Figures]:
    """Each shape's steady-state figures, computed once for the module."""
    return {
        name: figures(arrivals, sampler, seeds=SHAPE_SEEDS)
        for name, (arrivals, sampler) in SHAPES.items()
    }


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_task_waits_more_than_the_fallback_beyond_its_completion(shape: str) -> None:
    arrivals, sampler = SHAPES[shape]
    outcomes, _ = simulate(arrivals, sampler)
    assert max(o.lag for o in outcomes) <= PollingConfig().fallback_interval


@pytest.mark.parametrize("shape", _marked(sorted(SHAPES), MISSES_POLLS))
def test_each_shape_keeps_to_the_poll_budget(shape: str, shape_figures: dict[str, Figures]) -> None:
    result = shape_figures[shape]
    assert result.polls_per_task <= TARGET_POLLS + SHAPE_POLLS_TOLERANCE, result


@pytest.mark.parametrize("shape", _marked(sorted(SHAPES), MISSES_RATIO))
def test_each_shape_halves_fixed_polling_lag(shape: str, shape_figures: dict[str, Figures]) -> None:
    result = shape_figures[shape]
    assert result.ratio <= TARGET_RATIO, result


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_beats_fixed_5s_polling_by_a_wide_margin(
    shape: str, shape_figures: dict[str, Figures]
) -> None:
    """The regression guard beside the target: well under fixed polling's lag, and no
    shape far over the budget (the queue, which no schedule holds to it, within a bound)."""
    result = shape_figures[shape]
    assert result.ratio <= 0.6, result
    assert result.polls_per_task <= (2.75 if shape == QUEUE else 2.2), result


@pytest.mark.parametrize("shape", ["uniform 1-6 s", "uniform 1-6 s, burst"])
def test_uniform_tasks_are_found_within_0_8_s(
    shape: str, shape_figures: dict[str, Figures]
) -> None:
    result = shape_figures[shape]
    assert result.mean_lag <= TARGET_UNIFORM_LAG, result
    assert result.polls_per_task <= TARGET_POLLS + SHAPE_POLLS_TOLERANCE, result


@pytest.mark.parametrize("shape", ["uniform 1-6 s", "uniform 1-6 s, burst"])
def test_uniform_tasks_are_found_within_a_second(
    shape: str, shape_figures: dict[str, Figures]
) -> None:
    result = shape_figures[shape]
    assert result.mean_lag <= 0.9, result


def test_the_harness_never_re_places_a_poll_the_tracker_has_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A re-plan comes with a poll's answer; a poll that fell due before that answer came
    back has gone out (the tracker re-places only polls still waiting). The harness
    re-placed those too, from the answer's age: in a burst (a re-plan every few finishes)
    a task's next poll was pushed past its time again and again, and a long-run burst of
    900 spent 1.96 polls per task where its plans counted 2.00 (a plan kept unchanged
    through the burst: 1.33)."""
    moved: list[tuple[float, float]] = []
    placed: dict[float, tuple[float | None, float]] = {}  # lane -> (last seen running, poll)

    class Recording(PollPlanner):
        def next_poll(self, age: float, last_not_done: float | None, lane: float = 0.5) -> float:
            before = placed.get(lane)
            if before is not None and before[0] == last_not_done and age > before[1]:
                moved.append((age, before[1]))  # re-placed after its poll fell due
            offset = super().next_poll(age, last_not_done, lane)
            placed[lane] = (last_not_done, offset)
            return offset

    monkeypatch.setattr(planner_sim, "PollPlanner", Recording)
    simulate(*SHAPES["uniform 1-6 s, burst"])
    assert placed
    assert moved == []


def test_the_harness_leaves_a_poll_due_within_the_launch_slack_where_the_tracker_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the launch slack, a poll due within it of an answer that brings a re-plan has
    gone out with that answer's own group (in flight), or goes at once, and the tracker
    leaves it where it is (``_replace_pending``). The harness re-placed the group's later
    polls from the answer's age: a burst's plans seemed to spend less than they counted
    (seeds 0-7: 1.952 polls per task where they counted 2.002, at 0.81 s; on 40 seeds
    2.000 at 0.782 s, as without the slack), where the tracker's polls, each kept where its
    plan put it, spend 2.050 at 0.762 s (40 seeds; without the slack 1.991 at 0.783 s)."""
    moved: list[tuple[float, float]] = []
    placed: dict[float, tuple[float | None, float]] = {}  # lane -> (last seen running, poll)

    class Recording(PollPlanner):
        def next_poll(self, age: float, last_not_done: float | None, lane: float = 0.5) -> float:
            before = placed.get(lane)
            if (
                before is not None
                and before[0] == last_not_done
                and age > before[1] - _LAUNCH_SLACK + 1e-9
            ):
                moved.append((age, before[1]))  # re-placed within the slack of its poll
            offset = super().next_poll(age, last_not_done, lane)
            placed[lane] = (last_not_done, offset)
            return offset

    monkeypatch.setattr(planner_sim, "PollPlanner", Recording)
    simulate(*SHAPES["uniform 1-6 s, burst"], slack=_LAUNCH_SLACK)
    assert placed
    assert moved == []


def test_the_harness_can_send_polls_in_groups_as_the_tracker_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tracker sends every poll due within its launch slack of one falling due with it,
    early, never late. Two tasks submitted 20 ms apart have their warm-up polls 20 ms apart;
    with the slack, each goes with the other's earlier one."""
    seen: dict[str, list[float]] = {}

    class Recording(PollPlanner):
        def not_done(self, task_id: str, offset: float) -> None:
            seen.setdefault(task_id, []).append(offset)
            super().not_done(task_id, offset)

    monkeypatch.setattr(planner_sim, "PollPlanner", Recording)
    constant = lambda _rng, _index, _pending: 3.0  # noqa: E731
    simulate([0.0, 0.02], constant)
    alone = dict(seen)
    seen.clear()
    simulate([0.0, 0.02], constant, slack=_LAUNCH_SLACK)
    assert [round(b - a, 9) for a, b in zip(alone["0"], alone["1"], strict=True)] == [0.0] * 5
    sent = [round(offset + 0.02, 9) for offset in seen["1"]]
    assert sent == [round(offset, 9) for offset in seen["0"]]  # together
    assert seen["1"][0] == pytest.approx(alone["1"][0] - 0.02)  # early, not late


def test_polls_sent_early_in_groups_spend_more_than_each_at_its_time() -> None:
    """What the tracker spends live beyond what the harness counted: sent up to its launch
    slack early, a poll finds a few tasks not yet finished that its plan expected finished.
    On 1,100 uniform 1-6 s tasks (the live benchmark's), counted from the 100th, seeds 0-7:
    1.974 polls per task each at its time, 1.991 in groups (with the evidence's half-life
    40 throughout: 1.990 and 2.002, where two live runs read 2.007 and 2.009)."""
    arrivals, sampler = poisson_arrivals(1100, 20.0, 0), uniform(1.0, 6.0)
    alone = figures(arrivals, sampler, skip=100, seeds=range(2))
    grouped = figures(arrivals, sampler, skip=100, seeds=range(2), slack=_LAUNCH_SLACK)
    assert grouped.polls_per_task > alone.polls_per_task


def test_the_blocks_split_the_steady_state_without_losing_a_task() -> None:
    """The attribution (``python -m tests._planner_sim --attribute``) cuts the steady state
    into blocks of 50 tasks: their means average back to the whole's, and the upward drift's
    first block of new tasks (placed by the old plan) shows the overspend it explains."""
    arrivals, sampler = SHAPES[DRIFT_UP]
    whole = figures(arrivals, sampler)
    parts = blocks(arrivals, sampler)
    assert [b.first for b in parts] == [100, 150, 200, 250, 300, 350]
    assert sum(b.polls for b in parts) / len(parts) == pytest.approx(whole.polls_per_task)
    assert sum(b.lag for b in parts) / len(parts) == pytest.approx(whole.mean_lag)
    drifted = parts[2]  # tasks 200-250: the first 3-9 s ones
    # 2.45 polls where their plans counted 2.00 (2.69 while the old durations were moved by
    # what the last 40 tasks said, not by every task since the change).
    assert drifted.polls > drifted.expected + 0.4, drifted


def test_the_attribution_shows_where_a_plan_runs_out_of_knowledge() -> None:
    """Where the steady state spends beyond its plans (``--attribute``): past the horizon of
    the plan that placed each task (the longest completion it knew), which counts one poll
    for each task it expects there. On bimodal 0.5-2 s / 6-12 s, while no slow task has
    finished, a third of the first steady tasks outlive their plan and spend more polls
    there than the block overspends; on uniform 1-6 s, once learned, hardly a task does
    (a few in a hundred: the smoothed estimate thins the last cells before the sharp 6 s
    edge, so a plan may end a cell or two short of it), and each of those spends the one
    poll its plan counted there."""
    learning, *_ = blocks(*SHAPES["bimodal 0.5-2 s / 6-12 s"])
    assert learning.past_share >= 0.25, learning
    assert learning.past_polls >= learning.polls - learning.expected, learning
    learned = blocks(*SHAPES["uniform 1-6 s"])[2:]
    # A few in a hundred: 8 of the 150 tasks of block 200 (three seeds), 7 while the
    # harness moved polls already sent (see the test above).
    assert all(b.past_share <= 0.06 for b in learned), learned
    assert all(b.past_polls <= b.past_share + 1e-9 for b in learned), learned


def test_the_reasons_account_for_every_poll_and_show_a_horizon_outgrown_by_later_plans() -> None:
    """Why each poll went where it did (``python -m tests._planner_sim --reasons``): every
    poll has one reason. The first tasks a learned plan places on log-normal durations
    outlive that plan's horizon (about half: no long task had finished yet), and what they
    spend past it the later plans placed, which had learned the longer tasks; the tail's
    and the edge's steps and the fallback guarantee spend little of it. Their plans count
    it now, as what the tasks past their horizon were seen to spend there: three seeds,
    2.10 polls per task where their plans counted 2.06 (when each task expected past the
    horizon counted one poll: 2.21 where they counted 2.00), 1.00 of them past the
    horizon, 0.05 by steps or the fallback."""
    learning, *_ = parts = blocks(*SHAPES["log-normal, median 3 s"])
    for block in parts:
        assert sum(block.by_reason) == pytest.approx(block.polls), block
    share = dict(zip(REASONS, learning.by_reason, strict=True))
    overspend = learning.polls - learning.expected
    assert learning.past_share >= 0.3, learning
    assert learning.expected >= TARGET_POLLS + 0.03, learning  # the horizon's cost counted
    assert overspend <= 0.1, learning
    assert learning.past_polls >= 3 * overspend, learning
    assert share[EDGE] + share[TAIL] + share[FALLBACK] <= 0.1, learning
    assert share[PLAN] >= TARGET_POLLS, learning
    # A growing queue's tasks outlive every plan: what they spend beyond it is the tail's
    # steps (1.83 polls per task in its last block), and the fallback guarantee's.
    last = dict(zip(REASONS, blocks(*SHAPES[QUEUE])[-1].by_reason, strict=True))
    assert last[TAIL] >= 1.0, last
    assert last[FALLBACK] >= 0.1, last
    assert last[PLAN] <= TARGET_POLLS, last


def test_a_slow_mode_not_seen_yet_is_not_stepped_through_at_each_1_25x_of_its_age() -> None:
    """Bimodal 0.5-2 s / 6-12 s at 20 tasks a second: when task 100 is submitted no 6-12 s
    task has finished, and each of its long tasks outlives everything seen. Stepping at each
    1.25x of its age from 2 s to where the oldest of them are, the first 50 steady tasks
    spent 2.79 polls each, and the budget correction paid it back by starving the tasks
    after them (0.86 s lag from task 200 on). The tail skips to where ten of them were
    already seen still running: 2.51 polls, 0.72 s."""
    learning, _, *later = blocks(*SHAPES["bimodal 0.5-2 s / 6-12 s"])
    assert learning.polls <= 2.65, learning
    assert sum(b.lag for b in later) / len(later) <= 0.8, later


@pytest.mark.parametrize(
    ("shape", "most_misplaced"),
    [("log-normal, median 3 s", 0.37), ("bimodal 0.5-2 s / 6-12 s", 0.47)],
)
def test_the_estimate_follows_the_durations_between_polls(
    shape: str, most_misplaced: float
) -> None:
    """A task is known only to have finished between two polls, and the self-consistency
    rounds heap such evidence on the cells where many intervals end: the estimate grew
    spikes at the plan's own poll times (probability in the wrong cells of the grid, eight
    seeds: log-normal 0.42, bimodal 0.52). Sharing each interval's weight by a smoothed
    estimate follows the durations between the polls: 0.33 and 0.43."""
    misplaced, _ = estimate_error(shape, seeds=SHAPE_SEEDS)
    assert misplaced <= most_misplaced


def test_no_schedule_holds_the_growing_queue_to_two_polls() -> None:
    """Why the queue shape is exempt from the budget: its tasks (1-6 s plus 0.02 s for each
    task pending, in a burst of 300) are so long that polling each at least every
    ``fallback_interval`` alone takes more than two polls per task on average."""
    arrivals, sampler = SHAPES[QUEUE]
    durations = steady_durations(arrivals, sampler)
    assert sum(least_polls(d) for d in durations) / len(durations) > TARGET_POLLS


def test_the_best_fixed_schedule_is_a_bound_the_planner_comes_close_to(
    shape_figures: dict[str, Figures],
) -> None:
    """On uniform 1-6 s, the planner (learning, exploring) is within 0.15 s of the schedule
    that is best for the true durations at the same budget."""
    arrivals, sampler = SHAPES["uniform 1-6 s"]
    best_lag, best_polls = best_fixed(steady_durations(arrivals, sampler), TARGET_POLLS)
    assert best_polls == pytest.approx(TARGET_POLLS, abs=0.05)
    assert best_lag <= shape_figures["uniform 1-6 s"].mean_lag <= best_lag + 0.15


def test_a_burst_warm_up_is_not_stuck_on_the_5s_fallback() -> None:
    """Hundreds submitted at once with no evidence: the warm-up itself polls early, and the
    first plan puts the first poll well before 5 s (the short durations are learned)."""
    outcomes, planner = simulate(burst_arrivals(300, 0, 20.0, 0), uniform(1.0, 6.0))
    assert planner.plan[0] < 4.0
    warm_up_lag = sum(o.lag for o in outcomes[:100]) / 100
    assert warm_up_lag < 1.2  # the 5 s fallback would give about 2.5 s


@pytest.mark.parametrize(
    ("warm_up", "most_polls"), [(20, 2.25), (150, TARGET_POLLS + POLLS_TOLERANCE)]
)
def test_the_warm_up_length_does_not_bias_the_steady_state(warm_up: int, most_polls: float) -> None:
    """The old planner's bias fed itself (a longer warm-up made the lag worse); now a burst
    after a short or a long warm-up is found within a second either way, near the budget.
    After 20 tasks, most of the batch is placed before the plan has learned, and spends 2.20
    polls per task (before the scouts and the edge of what is known: 3.48). It looked closer
    to the budget (2.13) while its surprise cut the budget to one poll per task for the tasks
    after it: see the next test."""
    result = figures(burst_arrivals(400, warm_up, 20.0, 0), uniform(1.0, 6.0), skip=200)
    assert result.mean_lag <= 1.0, result  # the old planner: 1.14 s, and worse the longer
    assert result.polls_per_task <= most_polls, result


def test_a_batch_does_not_leave_the_budget_lowered_for_the_tasks_after_it() -> None:
    """A batch of 300 after 20 tasks, then a steady stream: the tasks after the batch get
    the budget again. When the correction counted tasks as they finished, the batch's slow
    tasks came last and left it near one poll per task: 1.86 polls, 0.92 s lag after it."""
    first = burst_arrivals(320, 20, 20.0, 0)
    later = [first[-1] + 15.0 + at for at in poisson_arrivals(300, 20.0, 1)]
    after = figures(first + later, uniform(1.0, 6.0), skip=len(first))
    assert after.polls_per_task >= 1.9, after
    assert after.mean_lag <= 0.85, after


def test_a_burst_on_a_fresh_client_keeps_to_the_budget() -> None:
    """``client.map`` of hundreds on a new client: nothing learned, all submitted at once.
    Its tasks share their age, so the longest completion seen is their age: polled at it,
    they were polled every ``min_interval`` as it crept up (10.9 polls per task). Now only
    its scouts poll in the warm-up, and a task at the edge of what is known steps
    geometrically, still never more than the fallback beyond its completion."""
    result = figures(burst_arrivals(400, 0, 20.0, 0), uniform(1.0, 6.0), skip=100)
    assert result.polls_per_task <= TARGET_POLLS + POLLS_TOLERANCE, result
    assert result.max_lag <= PollingConfig().fallback_interval, result


def test_a_burst_is_planned_with_what_finished_before_it() -> None:
    """While a burst runs, its finished tasks are its quick ones: the tasks finished before
    it stay in the evidence (past the window), so the plan still reaches as far as they
    did, instead of ending at the burst's age and chasing that edge poll after poll."""
    planner = PollPlanner(PollingConfig(window=50))
    for index in range(60):  # before the burst: 1-6 s
        planner.observe(0.5 + index / 12, 1.0 + index / 12)
    for index in range(200):  # the burst: all submitted, the quick half finished by 3 s
        planner.submitted(f"b{index}")
        planner.not_done(f"b{index}", 1.0)
        if index % 2:
            planner.finished(f"b{index}", 1.2 + index / 100)
        else:
            planner.not_done(f"b{index}", 3.0)
    planner.observe(1.0, 1.5)  # one more finish: re-plan now
    assert planner.plan[-1] >= 5.5


def test_an_outlier_does_not_swing_the_schedule() -> None:
    def with_outlier(rng: random.Random, index: int, _pending: int) -> float:
        return 300.0 if index == 150 else rng.uniform(1.0, 6.0)

    arrivals = poisson_arrivals(300, 20.0, 0)
    # One run's first poll moves by a few tenths of a second either way, outlier or not (it
    # is the sparser of two schedules that swap as the budget moves); over eight runs the
    # outlier moves it by 0.22 s on average (by 0.29 s when the evidence's half-life was 40
    # tasks throughout, 0.55 s at most; now 0.67 s at most).
    shifts = []
    for seed in range(8):
        _, plain = simulate(arrivals, uniform(1.0, 6.0), seed=seed)
        _, swung = simulate(arrivals, with_outlier, seed=seed)
        shifts.append(abs(swung.plan[0] - plain.plan[0]))
    assert sum(shifts) / len(shifts) <= 0.3, shifts
    assert max(shifts) <= 0.8, shifts
    quiet = figures(arrivals, uniform(1.0, 6.0), skip=160)
    noisy = figures(arrivals, with_outlier, skip=160)
    assert noisy.mean_lag <= quiet.mean_lag + 0.15


def test_a_drift_is_followed_within_about_fifty_tasks() -> None:
    """Durations jump from 1-6 s to 8-12 s at task 200: 50 tasks later the first poll has
    moved past where the old tasks finished."""

    def jump(rng: random.Random, index: int, _pending: int) -> float:
        return rng.uniform(1.0, 6.0) if index < 200 else rng.uniform(8.0, 12.0)

    _, before = simulate(poisson_arrivals(200, 20.0, 0), jump)
    _, after = simulate(poisson_arrivals(250, 20.0, 0), jump)
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


def test_a_long_run_continues_the_harness_runs() -> None:
    """``shapes(n)`` (``python -m tests._planner_sim --tasks n``) are the benchmark's shapes
    on more tasks: the 400-task runs' arrivals, continued."""
    long = shapes(LONG_TASKS)
    assert long.keys() == SHAPES.keys()
    for name, (arrivals, _) in SHAPES.items():
        assert len(long[name][0]) == LONG_TASKS
        assert long[name][0][: len(arrivals)] == arrivals


def test_the_live_benchmarks_tasks_are_the_simulators() -> None:
    """``live_durations`` (``python -m tests._planner_sim --live``) are the durations the
    simulator gives the live benchmark's images, in its order: the harness runs the very
    tasks a live run polls."""
    state = SimulatorState(_simulator_config("1:6", 0), ManualClock())
    images = sample_portraits(30, IMAGE_SIDE)
    drawn = [state.create_task("key", state.digest(image), image, 0.5).duration for image in images]
    assert planner_sim.live_durations()[:30] == drawn


@pytest.mark.parametrize(
    ("name", "draw"),
    [
        ("log-normal, median 3 s", 0),
        ("queue-growing", 0),
        ("drift 3-9 s -> 1-6 s", 0),
        ("log-normal, median 3 s", 2),
        ("uniform 1-6 s, burst", 1),
    ],
)
def test_the_live_shape_tables_tasks_are_the_simulators(name: str, draw: int) -> None:
    """``live_shapes`` (``python -m tests._planner_sim --live-shapes``) are the tasks the live
    shape table's simulator gives its images, submitted at its arrivals: durations that read
    the server's state at a submit (a growing queue, a drift after 200 tasks) included; for
    each of its draws (seed ``draw``: arrivals and durations)."""
    spec = {shape: spec for shape, spec, _ in BENCH_SHAPES}[name]
    tasks = 250
    arrivals, sampler = planner_sim.live_shapes(tasks, seed=draw)[name]
    clock = ManualClock()
    state = SimulatorState(_simulator_config(spec, draw), clock)
    drawn = []
    for image, at in zip(sample_portraits(tasks, IMAGE_SIDE), arrivals, strict=True):
        clock.advance(at - clock.now())
        drawn.append(state.create_task("key", state.digest(image), image, 0.5).duration)
    rng = random.Random(0)
    assert [sampler(rng, index, 0) for index in range(tasks)] == drawn


def test_the_harness_pools_the_live_tables_draws_as_it_does() -> None:
    """``--live-shapes --draws N`` sets the live table's pooled row beside the harness's: every
    figure over the draws' tasks together, each draw weighing by its tasks (the benchmark's
    ``pool_draws``), the longest wait the longest of any draw."""
    runs = [
        planner_sim.Figures(
            tasks=300, mean_lag=0.7, polls_per_task=2.1, max_lag=2.0, fixed_lag=2.5
        ),
        planner_sim.Figures(
            tasks=100, mean_lag=1.1, polls_per_task=1.7, max_lag=3.0, fixed_lag=2.1
        ),
    ]
    pooled = planner_sim._pooled(runs)
    assert pooled.tasks == 400
    assert pooled.mean_lag == pytest.approx(0.8)
    assert pooled.polls_per_task == pytest.approx(2.0)
    assert pooled.fixed_lag == pytest.approx(2.4)
    assert pooled.max_lag == 3.0
    assert pooled.ratio == pytest.approx(0.8 / 2.4)


def test_a_live_run_with_a_lane_seed_draws_the_harness_runs_lanes() -> None:
    """``bench_tracker --shapes --lane-seed K`` gives the tracker the lanes the harness gives
    the same tasks under seed ``K`` (``--live-shapes --first-seed K``), in submit order, so
    a live run and the harness differ by what the live clock adds, not by a draw of lanes."""
    arrivals, sampler = planner_sim.live_shapes(120)["uniform 1-6 s"]
    lanes: list[float] = []
    place = planner_sim._Placer.place

    def placing(
        placer: planner_sim._Placer, age: float, last_not_done: float | None, lane: float
    ) -> tuple[float, str]:
        if last_not_done is None and age == 0.0:
            lanes.append(lane)  # a task's first placement: at its submit
        return place(placer, age, last_not_done, lane)

    with mock.patch.object(planner_sim._Placer, "place", placing):
        simulate(arrivals, sampler, seed=3)
    draw = lane_source(3)
    assert draw is not None
    assert lane_source(None) is None
    assert lanes == [draw() for _ in arrivals]


def test_the_ratio_at_a_budget_is_read_off_the_line_through_three_runs() -> None:
    """``ratio_at_budget`` (``python -m tests._planner_sim --at-budget SHAPE``) compares
    changes at exactly the budget: runs at the budget and 0.06 either side, the least-squares
    line through their (polls, ratio), read at the budget."""
    arrivals, sampler = shapes(150)["uniform 1-6 s"]
    ratio, runs = ratio_at_budget(arrivals, sampler, skip=50, seeds=range(1))
    assert [run.tasks for run in runs] == [100, 100, 100]
    polls = [run.polls_per_task for run in runs]
    ratios = [run.ratio for run in runs]
    assert polls[0] < polls[1] < polls[2]
    mean_polls, mean_ratio = statistics.fmean(polls), statistics.fmean(ratios)
    slope = sum((p - mean_polls) * (r - mean_ratio) for p, r in zip(polls, ratios, strict=True))
    slope /= sum((p - mean_polls) ** 2 for p in polls)
    assert ratio == pytest.approx(mean_ratio + slope * (2.0 - mean_polls))
    assert runs[1] == figures(arrivals, sampler, skip=50, seeds=range(1))


def test_a_planner_told_the_truth_plans_on_it() -> None:
    """``told_truth`` (``python -m tests._planner_sim --at-budget SHAPE --told N``): every
    plan is solved on fresh draws of the true durations instead of the planner's estimate,
    and only while it is active."""
    told, untold = PollPlanner(), PollPlanner()
    with told_truth(lambda _rng, _index, _pending: 2.0, 20):
        for _ in range(10):
            told.observe(4.0, 4.5)
    for _ in range(10):
        untold.observe(4.0, 4.5)
    assert told.plan[0] == pytest.approx(2.0, abs=0.05)
    assert untold.plan[0] > 3.9
    assert _polling.solve_schedules is planner_sim.solve_schedules
    with told_truth(uniform(1.0, 6.0), 0):
        assert _polling.solve_schedules is planner_sim.solve_schedules


@pytest.mark.xfail(
    strict=True,
    reason="1.38 s at 1.97 polls, 0.509x (seeds 8-15: 0.490x at 2.00; 16-31: 0.507x at 1.97):"
    " at exactly 2.0 polls 0.495x, but these plans spend a little under the budget; the"
    " least any poller knowing the distribution can expect 0.475x, the planner told 800"
    " fresh exact durations at every plan 0.493x",
)
def test_log_normal_halves_fixed_polling_lag_in_a_long_run(long_log_normal: Figures) -> None:
    """The target holds for a long-lived client too: what it sees is the steady state of a
    long run, where the plans have learned only from what they themselves polled."""
    assert long_log_normal.ratio <= TARGET_RATIO, long_log_normal
    assert long_log_normal.polls_per_task <= TARGET_POLLS + SHAPE_POLLS_TOLERANCE, long_log_normal


def test_log_normal_stays_well_under_fixed_polling_in_a_long_run(long_log_normal: Figures) -> None:
    """The regression guard beside it: 0.509x at 1.97 polls today (hold-out seeds 8-15:
    0.490x at 2.00). The evidence's half-life was 40 tasks throughout: 0.526x at 1.97 (at
    exactly 2.0 polls, 0.517x; then 0.509x). The half-life now grows to 200 tasks while the
    durations hold, and is 40 again when recent tasks disagree with the plan. The grid had
    60 cells whatever the horizon: 0.513x at 2.00 polls; a long horizon now gets cells of an
    eighth of a second (up to 120): 0.502x at 1.99 (exactly 2.0: 0.502x). Once durations have
    held for 400 tasks, the evidence chooses how smoothly intervals are shared: at exactly
    2.0 polls, 0.497x (0.503x at 1.98; 8-15: 0.479x at 2.00). The plans now count what the
    tasks past their horizon spend there (``_polling._PAST_GAIN``), which keeps the first
    400 tasks to the budget; here, at exactly 2.0 polls, 0.495x."""
    assert long_log_normal.ratio <= 0.51, long_log_normal
    assert long_log_normal.polls_per_task <= TARGET_POLLS + SHAPE_POLLS_TOLERANCE, long_log_normal
