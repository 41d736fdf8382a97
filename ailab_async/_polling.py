"""Where to place polls: a pure planner that learns how long tasks take.

Evidence: every task this client submits tells us its completion time (seconds after
submit) lies in ``(last poll that saw it unfinished, poll that saw it finished]``; "done at
its first poll" is the interval ``(0, t]``, and a task still pending says ``(last poll, inf)``
(so a burst's slow tasks count before they finish). Newer tasks weigh more: the weight halves
every ``half_life`` tasks after a change of durations (recent tasks that disagree with the
plan's estimate), so a drift is followed, and every ``5 x half_life`` while they hold, so a
long tail's schedule rests on enough tasks; at such a change the old tasks' completion times
are moved by as much as the tasks since the change say durations moved, until the new ones
have finished. From these interval-censored data the
planner estimates the completion-time distribution on a grid with Turnbull's
self-consistency (EM) rounds (each sharing an interval's weight by a smoothed estimate;
once durations have held for long, as smoothed as each half of the evidence says predicts
the other best), then solves for the poll schedule that minimises mean detection lag for
a budget of polls per task:

    minimise  E[lag] + cost · E[polls]        (dynamic programming over the grid)

with ``cost`` found by bisection. The schedules are discrete, so the two that bracket the
budget are mixed: each task's ``lane`` in [0, 1) picks the denser one with the probability
that makes the expected polls per task meet the budget. The dynamic programme's values also
say where to poll next from *any* poll, so a task placed by an older plan continues
optimally under the new one: every re-plan re-places the pending polls.

Before there is evidence, polls go out geometrically (``2 x min_interval``, then each 1.5x
the age), so the first evidence is narrow whatever the durations; in a burst only about
fifteen of the tasks pending do (the scouts), the others wait as long as the guarantee
allows and are placed by the first plan. Where the plan runs out of knowledge (its last
cell, where more tasks are still running than have finished: a burst's tasks all of one
age at the longest completion seen), a task steps geometrically from its last poll instead
of being polled at that edge as it creeps up with each re-plan; past the longest completion
seen, it skips the ages at which ten or more others were already seen still running (none
finished there: a slow kind of task not seen yet). A small share of tasks
(``explore_share``) polls once before the plan's first poll, and every task's schedule is
stretched by a small per-task factor (``jitter``): the evidence keeps measuring what the plan
would otherwise never look at. The expected polls of a schedule count what it really
spends: its own polls, the exploratory ones, and for each task expected past its last poll
as many as the tasks past their plans' last polls were seen to spend there for each one
expected (at least one: while a long tail is still being learned, more tasks outlive a
plan than it expects, and each is polled a few times out there, which the correction
below would learn only once they finish); what tasks still spend beyond that (polls
re-placed by a newer plan, late timers) lowers the budget of the next plans (down to one
poll per task). That correction counts tasks in the order they were submitted, not as they
finish (a batch's quick tasks finish first, its slow ones last), and only tasks placed once
the plan has learned (what learning costs is over once learned). While a burst runs, the
tasks that finished before it stay in the evidence, so its slow part is planned from what
they said. Two polls of one task are never more than ``fallback_interval - min_interval``
apart, so no task is found more than ``fallback_interval`` after it finished (while polls go
out on time).

It also decides everything else the tracker (:mod:`._tracker`) needs to know about one
poll: what an answer says (:func:`read_poll`), what a failed poll means
(:func:`classify_poll_error`) and the error its waiters get (:func:`task_failure`), when to
poll again after a transient failure (:func:`poll_retry_delay`), how far apart polls go
(:func:`poll_spacing`), and what a finished task teaches the planner
(:func:`completion_evidence`). Polls are free, the tasks behind them are paid for: only a
definite answer about the task may end it.

Nothing here does I/O or reads a clock; the tracker passes times in.
"""

from __future__ import annotations

import bisect
import collections
import enum
import functools
import heapq
import itertools
import math
import operator

import attrs

from . import _protocol as protocol
from . import errors
from ._protocol import MAX_RETRY_AFTER, UNEXPECTED_REDIRECT
from .models import ImageResult, RawResult, TaskStatus

FALLBACK_INTERVAL = 5.0
#: ``PROCESSING_FAILURE`` answers to a poll in a row before the task counts as failed: the
#: provider says to retry it "a few times", and repeated about one task it is an answer.
PROCESSING_FAILURE_TRIES = 4


@attrs.frozen
class PollingConfig:
    """Knobs of the smart poller.

    Attributes:
        target_polls: Polls per task the schedule aims at (mean); fewer polls, more lag.
        fallback_interval: The longest wait between two polls of one task (seconds, the
            provider suggests 5 s): no task is found more than this after it finished.
        min_observations: Finished tasks needed before the learned schedule is used.
        window: How many recent finished tasks the estimate is built from.
        half_life: Evidence from this many tasks ago weighs half as much as the newest,
            just after the durations changed; while they hold, the half-life grows to five
            times this (see :attr:`PollPlanner.memory`).
        explore_share: Share of tasks that poll once before the plan's first poll.
        jitter: Each task's schedule is stretched by a factor within ``1 ± jitter/2``.
        budget_gain: How fast the budget is corrected by the polls actually spent.
        min_interval: No two polls of one task closer than this (seconds).
        give_up_after: Stop polling a task still unfinished this long after this client
            started tracking it (not after its submit: a task picked up hours later gets
            its full time). Its waiters get :class:`~ailab_async.TaskTimeoutError`; it can
            be tracked again.
        poll_share: At most this share of the client's rate limit goes to polls (when a
            rate limit is in force), and of its concurrency slots, so polls never starve
            submissions.
        poll_retry_max: Longest wait (seconds) between polls of a task whose polls keep
            failing transiently (the wait doubles from ``fallback_interval`` up to this).
        retry_after_cap: A server's ``Retry-After`` on a poll is honoured up to this many
            seconds.
    """

    target_polls: float = 2.0
    fallback_interval: float = FALLBACK_INTERVAL
    min_observations: int = 5
    window: int = 200
    half_life: float = 40.0
    explore_share: float = 0.05
    jitter: float = 0.05
    budget_gain: float = 0.01
    min_interval: float = 0.25
    poll_share: float = 0.5
    give_up_after: float = 3600.0
    poll_retry_max: float = 60.0
    retry_after_cap: float = MAX_RETRY_AFTER

    def __attrs_post_init__(self) -> None:
        # ValidationError is also a ValueError: callers catching ValueError keep working.
        if not self.target_polls >= 1.0:
            raise errors.ValidationError(
                "target_polls must be at least 1", input="target_polls", rule="range"
            )
        for name in ("explore_share", "jitter", "budget_gain"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 1
            ):
                raise errors.ValidationError(
                    f"{name} must be within [0, 1], got {value!r}", input=name, rule="range"
                )
        if not self.half_life > 0:
            raise errors.ValidationError(
                "half_life must be a positive number of tasks", input="half_life", rule="range"
            )
        if not 0 < self.poll_share <= 1:
            raise errors.ValidationError(
                "poll_share must be in (0, 1]", input="poll_share", rule="range"
            )
        for name in (
            "fallback_interval",
            "min_interval",
            "give_up_after",
            "poll_retry_max",
            "retry_after_cap",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise errors.ValidationError(
                    f"{name} must be a positive number of seconds, got {value!r}",
                    input=name,
                    rule="range",
                )
        if not self.min_interval < self.fallback_interval:
            raise errors.ValidationError(
                "min_interval must be below fallback_interval",
                input="min_interval",
                rule="range",
            )
        for name in ("min_observations", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise errors.ValidationError(
                    f"{name} must be an integer >= 1, got {value!r}", input=name, rule="range"
                )


class PollVerdict(enum.Enum):
    """What a failed poll means for its task."""

    #: Transient, or not about the task: poll again later (polls are free).
    RETRY = "retry"
    #: A definite answer about the task: it failed (the waiters get TaskFailedError).
    TASK_FAILED = "task_failed"
    #: Not the task's fault, but polling cannot go on (bad key, closed client): the
    #: waiters get this error itself, and the task can be tracked again later.
    STOP = "stop"


def classify_poll_error(error: errors.AILabError, *, in_a_row: int = 1) -> PollVerdict:
    """Decide what a failed poll of a task means; ``in_a_row`` counts this failure's code
    among the task's consecutive poll failures (this one included).

    >>> classify_poll_error(errors.RateLimitedError("slow down", status=429))
    <PollVerdict.RETRY: 'retry'>
    >>> classify_poll_error(errors.AuthenticationError("bad key", status=401))
    <PollVerdict.STOP: 'stop'>
    """
    if isinstance(error, errors.TaskFailedError):
        return PollVerdict.TASK_FAILED  # task_status outside 0-2
    if isinstance(error, errors.APIError) and error.code == UNEXPECTED_REDIRECT:
        # Our refusal to follow a redirect (a wrong base_url), not the API's word on the task.
        return PollVerdict.STOP
    if isinstance(error, (errors.ImageRejectedError, errors.InvalidRequestError)) and error.code:
        # The API's own word (it names a code): the task's image was refused, or the task
        # id is unknown or expired. A bare 4xx without a code may come from anything in
        # between (a gateway, a proxy): not definite, and a wrong "failed" costs a resubmit.
        return PollVerdict.TASK_FAILED
    if (
        isinstance(error, errors.APIError)
        and error.code == "PROCESSING_FAILURE"
        and in_a_row >= PROCESSING_FAILURE_TRIES
    ):
        return PollVerdict.TASK_FAILED
    if isinstance(
        error,
        (
            errors.AuthenticationError,  # 401/403: the key, not the task
            errors.InsufficientCreditsError,
            errors.ClientClosedError,
            errors.ConfigurationError,
            errors.ValidationError,
        ),
    ):
        return PollVerdict.STOP
    if isinstance(error, errors.TransportError) and not error.retryable:
        return PollVerdict.STOP  # TLS verification failed: waiting cannot fix it
    # Rate limits, 5xx, transport errors, the poll's own deadline, HTML or malformed
    # bodies, anything unexpected from the API: nothing definite about the task.
    return PollVerdict.RETRY


def retry_after_of(error: BaseException) -> float | None:
    """The ``Retry-After`` behind ``error`` (a poll's deadline error wraps the 429 that
    made it give up), or ``None``."""
    seen: BaseException | None = error
    for _ in range(8):  # a short, finite walk down the cause chain
        if seen is None:
            break
        if isinstance(seen, errors.APIError) and seen.retry_after is not None:
            return seen.retry_after
        seen = seen.__cause__
    return None


def poll_retry_delay(
    failures: int, retry_after: float | None, rand: float, config: PollingConfig
) -> float:
    """Seconds before polling again after the ``failures``-th transient failure in a row.

    Doubling from ``fallback_interval`` up to ``poll_retry_max``, drawn in the upper half
    of that (so synchronised tasks spread out, but never hammer); a server's ``Retry-After``
    is a floor, capped at ``retry_after_cap``. ``rand`` is in [0, 1).

    >>> poll_retry_delay(1, None, 0.0, PollingConfig())
    2.5
    >>> poll_retry_delay(1, 600.0, 0.0, PollingConfig())
    120.0
    """
    exponent = min(max(failures, 1) - 1, 30)
    cap = min(config.poll_retry_max, config.fallback_interval * 2.0**exponent)
    wait = cap * (0.5 + 0.5 * rand)
    if retry_after is not None and math.isfinite(retry_after):
        wait = max(wait, min(retry_after, config.retry_after_cap))
    return max(wait, config.min_interval)


def poll_spacing(rate: float | None, config: PollingConfig) -> float:
    """Seconds between poll launches so polls keep to their share of ``rate`` (requests per
    second this process may send; ``None``: unlimited, so no spacing).

    >>> poll_spacing(10.0, PollingConfig(poll_share=0.5)), poll_spacing(None, PollingConfig())
    (0.2, 0.0)
    """
    if rate is None:
        return 0.0
    return 1.0 / (rate * config.poll_share)


def read_poll(
    envelope: protocol.Envelope, task_id: str
) -> ImageResult | TaskStatus | errors.AILabError:
    """What a successful poll response says: a result, a state, or what is wrong with it."""
    status = protocol.parse_task_status(envelope, task_id=task_id)
    if isinstance(status, errors.AILabError):
        # A status outside 0-2 (the task failed), or none at all (ask again: it is free).
        return status
    if status is TaskStatus.SUCCEEDED:
        try:
            return protocol.parse_image_result(envelope, task_id=task_id)
        except errors.MalformedResponseError as exc:
            return exc  # "done" without a usable URL: ask again, it is free
    return status


def read_raw_poll(
    envelope: protocol.Envelope, task_id: str
) -> RawResult | TaskStatus | errors.AILabError:
    """:func:`read_poll` for a task of any other endpoint: once it succeeded, the answer's
    payload as it came (a :class:`~ailab_async.RawResult`)."""
    status = protocol.parse_task_status(envelope, task_id=task_id)
    if isinstance(status, errors.AILabError) or status is not TaskStatus.SUCCEEDED:
        return status
    return protocol.parse_raw_result(envelope, task_id=task_id)


def task_failure(error: errors.AILabError, task_id: str) -> errors.TaskFailedError:
    """The error a task's waiters get once a poll failure is the server's definite answer
    that the task failed (:attr:`PollVerdict.TASK_FAILED`); it keeps the API's code and ids,
    and the poll's own error as its cause.

    >>> failure = task_failure(errors.ImageRejectedError("no face", status=422, code="F"), "t1")
    >>> type(failure).__name__, failure.task_id, failure.code, failure.retryable
    ('TaskFailedError', 't1', 'F', False)
    """
    if isinstance(error, errors.TaskFailedError):
        return error
    if isinstance(error, errors.APIError):
        failure = errors.TaskFailedError(
            error.message,
            task_id=task_id,
            status=error.status,
            code=error.code,
            request_id=error.request_id,
            log_id=error.log_id,
            retryable=False,
        )
    else:  # pragma: no cover - classify_poll_error sends only API errors here
        failure = errors.TaskFailedError(
            str(error), task_id=task_id, status=0, code=type(error).__name__
        )
    failure.__cause__ = error
    return failure


def completion_evidence(
    done_at: float, last_not_done: float | None, *, fresh: bool
) -> tuple[float, float] | None:
    """What a task seen finished ``done_at`` seconds after its submit teaches the planner:
    the interval its completion time lies in, or ``None`` when it must not teach.

    ``last_not_done`` is the offset of the last poll that saw it unfinished (``None``: done
    at its first poll, which says "somewhere in (0, done_at]", however late that poll was:
    the estimator, not a guess, decides where in that interval); ``fresh`` says this client
    submitted it.

    >>> completion_evidence(3.0, 2.0, fresh=True)
    (2.0, 3.0)
    >>> completion_evidence(5.0, None, fresh=True)  # done at its first poll
    (0.0, 5.0)
    >>> completion_evidence(7200.0, None, fresh=False) is None  # picked up again
    True
    """
    if not fresh:
        # What the planner learns must be completion times measured from a submit we saw.
        # A task picked up again (a rerun hours later) has a submit time from a journal or
        # another process, and, seen done at its first poll, an interval of (0, hours]: it
        # would teach "tasks take hours". Only tasks this client submitted teach.
        return None
    return (0.0 if last_not_done is None else last_not_done), done_at


def _fraction(draw: float, salt: float) -> float:
    """Another uniform draw in [0, 1) from the task's ``draw`` (its lane): the lane's lower
    digits, shifted by ``salt`` so that round lanes (0.5) do not all land on 0."""
    return ((draw + salt) * 104_729.0) % 1.0


@attrs.define
class _Spending:
    """What one task has spent so far, for the budget correction."""

    polls: int = 0  # polls that saw it unfinished; once finished, all its polls
    expected: float | None = None  # what its plan expected (given when it finished)
    finished: bool = False


@attrs.frozen
class _Policy:
    """A solved schedule family on a grid: enough to continue optimally from any poll."""

    points: list[float]  # grid, points[0] == 0.0, points[-1] the horizon
    mass_below: list[float]  # estimated P(D <= point)
    moment_below: list[float]  # estimated E[D; D <= point]
    sparse_value: list[float]  # optimal remaining cost from each point (sparse lane)
    dense_value: list[float]  # the same for the dense lane
    #: Where what is known ends: the start of the last cell when more tasks are still
    #: running there than have finished in it (infinite when the evidence there is solid).
    edge: float
    #: How far past the horizon tasks were seen still running: the latest age at which at
    #: least ``_AT_RISK`` of them were (0.0 when fewer are past the horizon).
    frontier: float = 0.0
    #: The share of tasks the plan expects past its horizon, where it counts one poll each.
    past: float = 0.0

    def mass_at(self, offset: float) -> tuple[float, float]:
        """(P(D <= offset), E[D; D <= offset]), interpolated inside a grid cell."""
        index = max(0, bisect.bisect_right(self.points, offset) - 1)
        if index >= len(self.points) - 1:
            return self.mass_below[-1], self.moment_below[-1]
        low, high = self.points[index], self.points[index + 1]
        share = (offset - low) / (high - low)
        cell = self.mass_below[index + 1] - self.mass_below[index]
        below = self.mass_below[index] + cell * share
        return below, self.moment_below[index] + cell * share * (low + offset) / 2

    def continue_from(
        self, offset: float, earliest: float, longest_gap: float, dense: bool
    ) -> float | None:
        """The lag-minimising next poll for a task last seen unfinished at ``offset`` (not
        before ``earliest``, at most ``longest_gap`` later); ``None`` when it is most likely
        past the horizon (the longest completion seen): that is the tail's business."""
        points = self.points
        if offset >= points[-1]:
            return None
        value = self.dense_value if dense else self.sparse_value
        below, moment = self.mass_at(offset)
        if self.mass_below[-1] - below < _PAST_HORIZON * (1.0 - below):
            # Most tasks still running at ``offset`` finish past anything seen (a burst's
            # slow half, a drift to longer tasks): polling right at the horizon would chase
            # it as it creeps up with each re-plan.
            return None
        best, pick = math.inf, None
        for j in range(bisect.bisect_right(points, offset), len(points)):
            point = points[j]
            if point - offset > longest_gap and pick is not None:
                break
            if point < earliest and j < len(points) - 1:
                continue
            if self.mass_below[j] - below < _MIN_CATCH * (1.0 - below):
                continue  # a poll that would find almost no task finished
            lag = point * (self.mass_below[j] - below) - (self.moment_below[j] - moment)
            if lag + value[j] < best:
                best, pick = lag + value[j], point
        return pick


class PollPlanner:
    """Learns completion times and turns them into poll times (offsets from submit).

    The tracker tells it about every task this client submits (:meth:`submitted`,
    :meth:`not_done`, :meth:`finished`, :meth:`dropped`) and asks :meth:`next_poll` where
    to poll; when :meth:`finished` says it re-planned, every pending poll is re-placed.
    """

    def __init__(self, config: PollingConfig | None = None) -> None:
        self.config = config or PollingConfig()
        # task id -> [seen unfinished at, seen finished at (inf while pending)], in submit
        # order: finished tasks and pending ones alike, so a burst's slow tasks count too.
        self._cohort: dict[str, list[float]] = {}
        self._finished = 0
        self._new_since_plan = 0
        self._anonymous = itertools.count()
        self._plan: list[float] = []  # the sparser schedule (at most the budget)
        self._dense_plan: list[float] = []  # the denser one (above it)
        self._dense_share = 0.0  # share of tasks that follow the denser schedule
        self._plan_polls = (0.0, 0.0)  # expected polls per task: sparse, dense
        self._policy: _Policy | None = None
        # Polls per task spent beyond what the plans expected, smoothed (below zero when
        # they spent less): the budget is lowered by what of it is above zero.
        self._surprise = 0.0
        # What each task spent, in submit order, until the budget correction has learned
        # from it (see _settle); only tasks placed by a plan that had learned.
        self._ledger: dict[str, _Spending] = {}
        self._ledger_done = 0  # entries of the ledger whose task has finished
        # What the plans' horizons cost (see _count_past): task id -> [the horizon of the
        # plan that placed it, the share of tasks that plan expected past it, the task's
        # polls past it so far]; and, smoothed over the tasks finished, the polls per task
        # past their plan's horizon and the share the plans expected there.
        self._past: dict[str, list[float]] = {}
        self._spent_past = 0.0
        self._counted_past = 0.0
        # Finished tasks ever, and how many had when recent evidence last disagreed with the
        # plan (a change of durations): the evidence's memory grows with the tasks since.
        self._finished_ever = 0
        self._calm_since = 0
        self._half_life = self.config.half_life  # the evidence's, at the last plan
        # The first of the recent tasks that disagreed with the plan (the last change).
        self._change_mark: list[float] | None = None
        # Plans made since the smoothing may be chosen, and the one chosen (_replan).
        self._plans_made = 0
        self._smoothing = _SMOOTHING

    @property
    def plan(self) -> tuple[float, ...]:
        """The current schedule: poll offsets in seconds after submit (empty: warm-up)."""
        return tuple(self._plan)

    @property
    def observations(self) -> int:
        """How many finished tasks the estimate is built from (at most ``window``)."""
        return min(self._finished, self.config.window)

    @property
    def memory(self) -> float:
        """The half-life (in tasks) of the evidence the current plan rests on: ``half_life``
        after a change of durations, longer while the durations hold."""
        return self._half_life

    @property
    def has_plan(self) -> bool:
        """Whether a learned schedule is in use (else the warm-up's geometric polls)."""
        return bool(self._plan)

    # -- evidence ------------------------------------------------------------------------------

    def submitted(self, task_id: str) -> None:
        """This client just submitted ``task_id``: its whole life will be evidence."""
        self._cohort.pop(task_id, None)
        self._cohort[task_id] = [0.0, math.inf]
        self._forget_spending(task_id)
        self._past.pop(task_id, None)
        if self._plan and self._policy is not None:
            self._past[task_id] = [self._policy.points[-1], self._policy.past, 0.0]
        # A task placed while the plan still rests on few tasks spends what learning costs
        # (a kind of task not seen yet): that is over once learned, not the plan's miscount.
        learning = max(self.config.min_observations, self.config.window // _LEARNING_SHARE)
        if self._plan and self.observations >= learning:
            self._ledger[task_id] = _Spending()

    def not_done(self, task_id: str, offset: float) -> None:
        """A poll that went out ``offset`` seconds after submit saw it unfinished."""
        record = self._cohort.get(task_id)
        if record is not None and record[1] == math.inf:
            record[0] = max(record[0], offset)
            past = self._past.get(task_id)
            if past is not None and offset > past[0] + 1e-6:  # past it, not on it
                past[2] += 1.0
            spending = self._ledger.get(task_id)
            if spending is not None:
                spending.polls += 1
                if spending is next(iter(self._ledger.values())):
                    self._settle()

    def finished(
        self, task_id: str, offset: float, polls: int = 0, expected: float | None = None
    ) -> bool:
        """Seen finished ``offset`` seconds after submit, after ``polls`` polls, where the
        plan it was placed by expected ``expected`` (``None``: placed by no plan). Returns
        whether the planner re-planned (then re-place the pending polls)."""
        record = self._cohort.get(task_id)
        if record is None or record[1] != math.inf:
            return False
        record[1] = max(offset, record[0] + 1e-6)
        self._count_past(task_id, offset)
        self._finished += 1
        self._finished_ever += 1
        self._new_since_plan += 1
        spending = self._ledger.get(task_id)
        if spending is not None:
            spending.finished = True
            spending.polls, spending.expected = polls, expected
            self._ledger_done += 1
            self._settle()
        count = min(self._finished, self.config.window)
        # Re-plan often while learning, then every twentieth of the window; with thousands
        # pending, at most once per hundredth of them (each re-plan re-places them all).
        pending = len(self._cohort) - self._finished
        every = max(1, min(count // 2, self.config.window // 20), pending // 100)
        due = self._new_since_plan >= every
        if count >= self.config.min_observations and (due or not self._plan):
            self._replan()
            return True
        return False

    def dropped(self, task_id: str) -> None:
        """``task_id`` ended without a completion time (it failed, or tracking stopped)."""
        record = self._cohort.pop(task_id, None)
        self._past.pop(task_id, None)
        if record is not None and record[1] != math.inf:
            self._finished -= 1
        self._forget_spending(task_id)
        self._settle()

    # -- the budget correction -----------------------------------------------------------------

    def _forget_spending(self, task_id: str) -> None:
        spending = self._ledger.pop(task_id, None)
        if spending is not None and spending.finished:
            self._ledger_done -= 1

    def _settle(self) -> None:
        """Teach the budget correction what tasks spent, in the order they were submitted.

        In the order they finish, a batch's quick tasks (one poll each) would come first and
        its slow ones (several each) last: the correction would swing down, then up, and
        lower the budget long after the batch. So a task counts once every task submitted
        before it has counted. A task still running counts as soon as its surprise is sure
        to reach the clip (however late it finishes, it would count no more), so one slow
        task holds the others back for a few polls only; one whose polls stall (failing)
        counts what it is sure to spend once a window of finished tasks waits behind it.
        """
        config = self.config
        while self._ledger:
            task_id, spending = next(iter(self._ledger.items()))
            if spending.finished:
                expected = spending.expected
                surprise = None if expected is None else spending.polls - expected
            else:
                # Still running: it will have spent at least one poll more, against at most
                # what the denser plan expects.
                surprise = spending.polls + 1 - max(self._plan_polls)
                if surprise < _MAX_SURPRISE and self._ledger_done <= config.window:
                    return
            self._forget_spending(task_id)
            if surprise is None:
                continue
            # What the plan's count still misses (polls re-placed by a newer plan, a lane
            # that changed schedule, late timers, tails), smoothed over about 1 /
            # budget_gain tasks: the next plans aim that much lower, down to one poll per
            # task. One task's surprise is clipped: a task placed by a plan that knew nothing
            # of its kind (a long one while only short ones had finished) must not swing the
            # budget for long. The correction only ever lowers the budget, but the running
            # mean goes below zero too: stopped at zero, it forgot each run of tasks below
            # plan and counted each run above it, and sat above zero when the plans counted
            # right (a long-lived client's log-normal tasks: 1.95 polls per task where their
            # plans expected 1.97, found at 0.54 of fixed polling's lag; 1.97 and 0.53 now).
            surprise = min(_MAX_SURPRISE, max(-_MAX_SURPRISE, surprise))
            moved = self._surprise + config.budget_gain * (surprise - self._surprise)
            self._surprise = min(config.target_polls - 1.0, max(-_MAX_SURPRISE, moved))

    def _count_past(self, task_id: str, offset: float) -> None:
        """Learn what the plans' horizons cost from ``task_id``, seen finished at ``offset``.

        A plan counts one poll for each task it expects past its horizon (the longest
        completion seen), but while it is still learning a long tail more tasks outlive it
        than it expects (its longest tasks have not finished yet), and each of them is
        polled a few times out there (by the later plans that learned them, or the tail's
        steps). Counted one poll each, log-normal tasks placed by the first learned plans
        spent 2.2 polls where their plans counted 2.0, and the budget correction learns
        that only once they finish, in the order they were submitted: behind the slow
        ones, long after the plans that overspent. This learns it from the tasks that
        finish first, as the polls per task spent past the horizon of the plan that placed
        each task against the share of tasks that plan expected there, and the next plans
        count that many (between one and ``_MAX_PAST_POLLS``) for each task they expect
        past their horizon. Once the tail has been learned, a plan expects few tasks out
        there, and what it counts for them moves its schedule little."""
        past = self._past.pop(task_id, None)
        if past is None:
            return
        horizon, expected, spent = past
        spent += offset > horizon + 1e-6  # the poll that found it finished
        self._spent_past += _PAST_GAIN * (spent - self._spent_past)
        self._counted_past += _PAST_GAIN * (expected - self._counted_past)

    @property
    def past_polls(self) -> float:
        """Polls the plans count for each task they expect past their horizon: what such
        tasks were seen to spend there for each one expected (see :meth:`_count_past`)."""
        ratio = self._spent_past / max(self._counted_past, _PAST_FLOOR)
        return min(_MAX_PAST_POLLS, max(1.0, ratio))

    @property
    def overspend(self) -> float:
        """Polls per task the tasks spent beyond what their plans expected, smoothed over
        about ``1 / budget_gain`` tasks: the budget is lowered by this much (never raised,
        down to one poll per task)."""
        return max(0.0, self._surprise)

    def observe(self, not_done_at: float, done_at: float) -> bool:
        """A task (not tracked here) was seen unfinished at ``not_done_at`` and finished at
        ``done_at`` seconds after its submit: for seeding a planner with what is known."""
        task_id = f"\0observed-{next(self._anonymous)}"
        self.submitted(task_id)
        self.not_done(task_id, max(0.0, not_done_at))
        return self.finished(task_id, done_at)

    def expected_polls(self, lane: float) -> float | None:
        """Polls the current plan expects to spend on a task drawn ``lane`` (``None``: no
        plan yet). Given from the first plan on, so that a batch submitted early in a
        client's life is held to the budget too."""
        if not self._plan:
            return None
        sparse, dense = self._plan_polls
        return dense if lane < self._dense_share else sparse

    # -- placing polls -------------------------------------------------------------------------

    def next_poll(self, age: float, last_not_done: float | None, lane: float = 0.5) -> float:
        """Offset (seconds after submit) of the next poll for a task now ``age`` old.

        ``last_not_done`` is the offset of the last poll that saw it unfinished (``None``
        if never polled); ``lane`` is the task's own draw in [0, 1): it picks its schedule,
        its small time-scale jitter, and whether its first poll explores earlier than plan.
        The answer is never earlier than ``age``, and never more than ``fallback_interval``
        (less ``min_interval``, for the poll's own round trip) after the last poll.
        """
        config = self.config
        last = 0.0 if last_not_done is None else last_not_done
        floor = age if last_not_done is None else max(age, last + config.min_interval)
        latest = max(floor, last + config.fallback_interval - config.min_interval)
        if not self._plan or self._policy is None:
            if last_not_done is None and not self._scouts(lane):
                # A burst before any plan: its scouts learn the durations, the others wait
                # (as long as the guarantee allows) and are re-placed by the first plan.
                return latest
            return min(latest, max(floor, _grow(last, _WARMUP_GROWTH, config)))
        dense = lane < self._dense_share
        plan = self._dense_plan if dense else self._plan
        explore = _fraction(lane, 0.1)
        if last_not_done is None and explore < config.explore_share:
            # A few tasks look early (anywhere before the plan's first poll), so the mass
            # below it stays measured however the plan moves.
            where = _fraction(lane, 0.2)
            return min(latest, max(floor, plan[0] * (0.05 + 0.9 * where)))
        scale = 1.0 + config.jitter * (_fraction(lane, 0.3) - 0.5)
        if last_not_done is None:
            point: float | None = plan[0]
        elif last >= plan[-1] or last / scale >= plan[-1]:
            point = None  # polled at (or past) the horizon already
        else:
            point = self._policy.continue_from(
                last / scale,
                floor / scale,
                (config.fallback_interval - config.min_interval) / scale,
                dense,
            )
        if point is None:  # outlived what we know: keep looking, ever less often
            # ... but not where many others were already seen still running: none has
            # finished past the horizon, so a poll there would find next to nothing done.
            tail = max(_grow(last, _TAIL_GROWTH, config), self._policy.frontier)
            return min(latest, max(floor, tail))
        if point < plan[-1]:
            point *= scale  # jittered, so the evidence resolves more than a few offsets
        if max(floor, point) >= self._policy.edge:
            # The poll would land where most tasks seen there are still running: a burst's
            # tasks all that age, polled at the longest completion seen as it creeps up with
            # each re-plan. Such a task goes by the tail's steps instead (one never polled
            # waits as long as the guarantee allows), never sooner than the plan says.
            step = latest if last_not_done is None else _grow(last, _EDGE_GROWTH, config)
            point = max(point, step)
        return min(latest, max(floor, point))

    def _scouts(self, lane: float) -> bool:
        """Whether a task drawn ``lane`` polls in the warm-up (else it waits for a plan)."""
        pending = max(1, len(self._cohort) - self._finished)
        return _fraction(lane, 0.4) * pending < _SCOUTS

    # -- the solver ----------------------------------------------------------------------------

    def _memory(self, evidence: list[list[float]]) -> float:
        """The evidence's half-life (in tasks) for this plan.

        A plan resting on the last few dozen tasks follows a change of durations within
        them, but a long tail's schedule drawn from so few wobbles from plan to plan. So the
        memory is long while the recent tasks agree with the current plan's estimate, and
        short when they do not: ``half_life`` from the last time they disagreed (a change)
        until ``_SETTLE`` tasks have finished since (the tasks in flight when it came), then
        growing by one for each task finished, up to ``_LONG_MEMORY`` times ``half_life``.
        A change after durations had held moves the old durations' evidence to where the
        tasks since the change say they now are (:func:`_carry_over`, from
        :func:`_change_start`), so the plan does not wait for
        the new durations' slowest tasks to finish before reaching past the old ones.
        While more than three quarters of a window are pending (a batch), its tasks (all of
        one age, seen together) are most of the recent evidence, and the plan follows them
        as closely as before: ``half_life``. (With the long memory through a batch of 300
        uniform 1-6 s tasks, the harness's seeds 0-7 spent 2.024 polls per task, 8-15 2.033;
        short from three quarters of a window pending, 2.013 and 2.028; from half of one,
        2.019 and 2.006, but a log-normal stream's own pending tasks then cut its memory
        short too: 0.512 of fixed polling's lag at 2.0 polls instead of 0.509.)"""
        config = self.config
        policy = self._policy
        batch = len(self._cohort) - self._finished > config.window * 3 // 4
        recent = None if policy is None else _disagreeing(evidence, policy)
        if policy is not None and recent is not None:
            if self._half_life > config.half_life and not batch:
                # The durations had held (the memory had grown): carry them over to where
                # the tasks since the change say they now are (see _carry_over).
                start = _change_start(evidence, policy)
                _carry_over(evidence[:start], evidence[start:], policy)
            self._calm_since = self._finished_ever
            self._change_mark = recent[0]
        if batch:
            return config.half_life
        calm = self._finished_ever - self._calm_since - _SETTLE
        return min(config.half_life * _LONG_MEMORY, config.half_life + max(0, calm))

    def _replan(self) -> None:
        self._new_since_plan = 0
        config = self.config
        finished = [record for record in self._cohort.values() if record[1] != math.inf]
        kept = finished[-config.window :]
        if not kept:
            return
        oldest = kept[0]
        # The tasks that finished just before the oldest task still running stay, even
        # past the window: while a burst runs, its own finished tasks are only the quick
        # ones, and these are what says how long its slow part may take (without them the
        # grid ends at the burst's age, and its tasks are polled at that edge again and
        # again as it creeps up).
        settled = 0  # the cohort's first records, all finished, are the first of ``finished``
        for record in self._cohort.values():
            if record[1] == math.inf:
                break
            settled += 1
        context_start = max(0, settled - _BURST_CONTEXT)
        if settled and context_start < len(finished) - len(kept):
            oldest = finished[context_start]
        for task_id in list(self._cohort):  # forget finished tasks older than the window
            record = self._cohort[task_id]
            if record is oldest:
                break
            if record[1] != math.inf:
                del self._cohort[task_id]
                self._finished -= 1
        # The evidence: every task submitted since the oldest of the last ``window`` to
        # finish that has been polled: finished ones as (low, high], pending ones as (low,
        # inf), so a burst's slow tasks count before they finish. Newer counts more: weights
        # halve every ``self._memory`` tasks, so a drift is followed.
        evidence: list[list[float]] = []
        started = False
        for record in self._cohort.values():
            started = started or record is oldest
            if started and (record[0] > 0.0 or record[1] != math.inf):
                evidence.append(record)
        self._half_life = self._memory(evidence)
        # The tasks before the last change keep the short memory: as it grows, they must
        # not come back.
        change = next(
            (index for index, record in enumerate(evidence) if record is self._change_mark), 0
        )
        decay = (2.0 ** (-1.0 / config.half_life), 2.0 ** (-1.0 / self._half_life))
        weighted = [
            (low, high, decay[index >= change] ** (len(evidence) - 1 - index))
            for index, (low, high) in enumerate(evidence)
        ]
        budget = max(1.0, config.target_polls - self.overspend)
        # Once the durations have held for long (the memory at its longest), the evidence
        # itself says how smoothly to share each interval's weight (see _choose_smoothing):
        # checked every _CHOOSE_EVERY plans, from the first one that may.
        held = self._finished_ever - self._calm_since
        if held < _SMOOTH_AFTER or self._half_life < config.half_life * _LONG_MEMORY:
            self._plans_made, self._smoothing = 0, _SMOOTHING
        else:
            if self._plans_made % _CHOOSE_EVERY == 0:
                self._smoothing = _choose_smoothing(weighted)
            self._plans_made += 1
        solved = solve_schedules(
            weighted, budget, config, smoothing=self._smoothing, past_polls=self.past_polls
        )
        if solved is not None:
            self._plan, self._dense_plan, self._dense_share, self._plan_polls, self._policy = solved


# Warm-up: polls at 2 x min_interval, then 1.5x the age (capped by fallback_interval), so
# the first evidence is narrow whatever the task durations; past what the plan knows, 1.25x.
_WARMUP_GROWTH = 0.5
_TAIL_GROWTH = 0.25
# A continuing poll must expect to find at least this share of the still-running tasks done.
_MIN_CATCH = 0.1
# Past the horizon no task has finished: where this many were seen still running, a poll
# expects to find fewer than _MIN_CATCH of those there done, and the tail's steps skip to
# the latest such age (the frontier). A slow mode not seen yet (bimodal 0.5-2 s / 6-12 s:
# no 6-12 s task has finished when task 100 is submitted) otherwise costs every one of its
# tasks a step at each 1.25x of its age up to where the oldest of them are. Measured with
# ``python -m tests._planner_sim --seeds 8`` on seeds 0-7: bimodal 0.87 s lag at 2.04
# polls per task without it; with 3, 0.79 s at 2.07; 10, 0.80 s at 2.05; 15, 0.82 s at
# 2.05; 20, 0.86 s at 2.03 (the other shapes within 0.01 s and 0.01 polls of each other).
_AT_RISK = round(1.0 / _MIN_CATCH)
# When more than this share of the tasks still running are expected to finish past the
# longest completion seen, a running task is polled by the tail's steps, not the plan's.
_PAST_HORIZON = 0.5
# The budget correction learns from each task's polls beyond what its plan expected,
# clipped to this many.
_MAX_SURPRISE = 3.0
# What a plan's horizon costs (``PollPlanner._count_past``): smoothed over about
# 1 / _PAST_GAIN finished tasks; the share expected past the horizon floored at _PAST_FLOOR
# (a learned plan expects next to no task there, and the few just past its last poll must
# not multiply that by a hundred); at most _MAX_PAST_POLLS polls counted for each task.
# Measured with ``python -m tests._planner_sim --seeds 8`` (tasks 100-400; seeds 0-7 |
# 8-15 | 16-31): log-normal 2.06 polls at 0.47x fixed polling's lag -> 2.00 at 0.49x |
# 2.05 at 0.48x -> 2.01 at 0.49x | 2.07 at 0.49x -> 2.02 at 0.52x; at exactly 2.0 polls
# (``--at-budget``) 0.495x -> 0.495x | 0.503x -> 0.502x: the same lag for the polls, now
# within the budget. Shapes that overspent while learning a slow part now spend less and
# wait a little longer: bimodal 0.80 s at 2.00 polls -> 0.82 s at 1.98 | 0.78 at 2.04 ->
# 0.81 at 2.01 | 0.78 at 2.03 -> 0.83 at 2.00 (at exactly 2.0 polls 0.233x -> 0.238x |
# 0.236x -> 0.237x); a batch of 1-6 s tasks 0.77 s at 2.01 -> 0.78 at 1.99 | 0.76 at 2.03
# -> 0.79 at 1.98; steady 1-6 s tasks unchanged. Long runs of log-normal tasks (1,000,
# counted from the 300th): 0.503x at 1.98 -> 0.509x at 1.97 | 0.479x at 2.00 -> 0.490x at
# 2.00 (at exactly 2.0: 0.497x -> 0.495x). Floored at 0.01, log-normal 2.00 | 2.02 polls and
# the long run 0.505x; so floored and at most 10 polls counted, 1.96 polls at 0.52x (bimodal
# 0.88 s); one poll for each task that outlives the horizon, not against the share
# expected, 2.02 | 2.03 polls.
_PAST_GAIN = 0.1
_PAST_FLOOR = 0.05
_MAX_PAST_POLLS = 3.0
# Tasks placed before the plan rests on a 1/_LEARNING_SHARE of the window teach the budget
# correction nothing. Measured with ``python -m tests._planner_sim --seeds 8``: counting
# them all, the bimodal shape paid back its learning for the rest of the run (1.09 s lag at
# 1.91 polls, instead of 0.86 s at 2.03); from a quarter of the window on, it overspent
# (2.20 polls, 0.74 s).
_LEARNING_SHARE = 8
# Finished tasks submitted just before the oldest pending one that the evidence keeps.
_BURST_CONTEXT = 50
# Tasks polling in the warm-up, about, of those pending: the others wait for the first plan.
# Each scout of a burst spends the warm-up's five or six polls; fewer than about ten and the
# first plan comes late and rests on too few. Measured with ``python -m tests._planner_sim``
# and a 400-task burst of 1-6 s tasks on a fresh client: 10 scouts, 1.82 polls per task;
# 15, 2.03; 20, 2.21 (the steady shapes within noise of each other).
_SCOUTS = 15
# At the edge of what is known, each poll 1.15x the last one (0.25 and 0.5 measured within
# the noise of it, on the burst and on the steady shapes).
_EDGE_GROWTH = 0.15
# Self-consistency rounds: enough to pull wide intervals' mass to where narrow ones put it,
# few enough to keep the estimate smooth. Run to convergence, the estimate becomes a handful
# of spikes on a grid this fine, schedules fitted to spikes overspend their budget, and
# censored tasks' mass collapses onto the longest completion seen, where a burst's tasks
# are then polled again and again. Measured with ``python -m tests._planner_sim`` (with the
# budget correction and the burst context above): to convergence (tolerance 1e-4) a burst
# of 1-6 s tasks spent 2.94 polls per task instead of 2.03, a log-normal 2.42 instead of
# 2.12, for 0.05-0.2 s less lag; smoothed at each round (EMS) and converged, 2.38 and 2.19.
# Each round shares an interval's weight by the estimate smoothed (below), not the raw one,
# which keeps the estimate from growing spikes on a grid this fine while the rounds pull
# wide intervals' mass to where narrow ones put it; so two more rounds than the three the
# raw estimate could take. Measured with ``python -m tests._planner_sim --seeds 8`` (seeds
# 0-7, then 8-15): log-normal 1.32 s at 2.07 polls -> 1.31 at 2.09 | 1.31 at 2.08 -> 1.28
# at 2.09; uniform 1-6 s 0.81 at 1.98 -> 0.79 at 1.98 | 0.80 -> 0.81; its burst 0.77 at
# 2.07 -> 0.80 at 1.98 | 0.78 at 2.04 -> 0.80 at 1.99; bimodal 0.80 -> 0.78 | 0.80 ->
# 0.78; in long runs (``--tasks 1000 --skip 300``) log-normal 0.57x fixed polling's lag ->
# 0.54x. The probability the estimate puts in the wrong cells (``estimate_error``):
# log-normal 0.42 -> 0.33, bimodal 0.52 -> 0.43.
_EM_ROUNDS = 5
# The smoothing: each cell's mass spread by a Gaussian whose width grows with the age (in
# cells, this share of the cell's age), so a tail's few tasks are spread wider than the
# busy middle's many; the first cells stay as they are (short tasks are found by sharp
# early polls).
_SMOOTHING = 0.1
_SHARP_CELLS = 3
# A long-lived client whose durations hold (``_SMOOTH_AFTER`` tasks since the last change,
# the memory at its longest) picks the smoothing among _SMOOTHINGS by how well each half of
# its evidence predicts the other (``_choose_smoothing``; a held-out interval's probability
# is floored at _FLOOR), every _CHOOSE_EVERY plans. A smooth long tail rests on a few dozen
# tasks past its median, and the share of wide intervals' weight by a narrow smoothing
# follows where those few happened to fall: told 800 fresh exact durations at every plan
# instead of its estimate, the planner reads 0.495x of fixed polling's lag on a log-normal
# (median 3 s; tasks 300-1,000, seeds 0-7, at exactly 2.0 polls) where its estimate read
# 0.502x (told 200: 0.507x; 3,200: 0.492x; ``python -m tests._planner_sim --at-budget SHAPE
# --told N``). A wider smoothing throughout takes that back on the log-normal (0.495x) but
# blurs sharp edges: a batch of 1-6 s tasks after 100 others 0.83 s at 1.95 polls instead of
# 0.77 s at 2.01, the bimodal mix 0.85 s instead of 0.80 s (seeds 0-7, tasks 100-400); from
# the 400th task on only, the bimodal mix in long runs 0.84 s instead of 0.81 s. Chosen by
# the evidence, a long-run log-normal picks the wider one at about 19 plans of 20, the
# bimodal mix at about 1 of 10: at exactly 2.0 polls, tasks 300-1,000, seeds 0-7, 8-15 and
# 16-31 read 0.497x, 0.488x and 0.496x where one smoothing throughout read 0.502x, 0.492x
# and 0.502x; the bimodal mix and 1-6 s tasks in long runs within 0.01 s and 0.01 polls of
# before. Chosen from the start of a client's life, a burst's plans sometimes pick the wider
# one too (0.82 s at 1.96 polls), hence only once the durations have held for long. A long
# tail's re-plan (from its 450th task on) takes about 4.8-5.7 ms of CPU where it took 4.0
# (the wider smoothing's longer reach, and the choice's four estimates every tenth plan);
# chosen at every plan, a few times as long.
_SMOOTHINGS = (0.1, 0.2)
_CHOOSE_EVERY = 10
_SMOOTH_AFTER = 400
_FLOOR = 1e-4
# The last grid cells holding less than this much probability together are left to the tail.
_SLIVER = 0.005
# The grid: cells no wider than _CELL_WIDTH seconds, at least _CELLS of them and at most
# _MAX_CELLS. Tasks of up to 7.5 s (uniform 1-6 s, a burst of them) keep the 60 cells they
# always had; a longer horizon (a long tail, a slow mode, a queue) gets finer cells than 60
# would give it. Measured with the harness, runs of 1,000 log-normal tasks counted from the
# 300th, at exactly 2.0 polls (``--at-budget``): seeds 0-7, 8-15, 16-31 read 0.514x, 0.512x,
# 0.504x of fixed polling's lag with 60 cells throughout, 0.502x, 0.492x, 0.502x now (90
# at most: 0.508x and 0.496x on the first two). Not finer for short horizons: with 90 cells
# throughout, a batch of 300 uniform 1-6 s tasks after 100 others spends 1.97 polls per task
# instead of 2.02, found 0.80 s after they finish instead of 0.77 (seeds 0-15). Its plans
# then more often carry a tail that is not there: a task just past the plan's last poll is
# stepped by the tail's 1.25x (seen running at 5.95 s, found at 7.44 s), the grid reaches to
# 7.4 s, the smoothing spreads the mass near 6 s over 6-7.4 s, and the batch's hundreds of
# running tasks take a share of it: the plans count polls at 6.5-7.4 s that no task needs
# (5-7 % of tasks past 6 s by the estimate, none in truth), spend less than they count, and
# poll more sparsely past 6 s. With 60 cells 2 of 16 such runs reached past 7 s, with 90
# cells 4 (1.73-1.96 polls per task where the others spend 1.90-2.16).
_CELLS = 60
_MAX_CELLS = 120
_CELL_WIDTH = 0.125
# Where the bisection for the budget's poll cost probes before halving (seconds of lag per
# poll): the costs that meet a budget of 2 polls per task are 0.1-2 on the harness's shapes
# (a drift's lowered budget: up to 8; a queue's: a few hundred, where the probe finds more
# polls than the budget and the bisection starts from the top).
_PROBE_COST = 10.0
# The evidence's memory (``PollPlanner._memory``): the last _RECENT tasks of the evidence
# are tested against the plan's estimate, and disagree beyond _CHANGE_Z standard errors; the
# half-life stays at ``half_life`` until _SETTLE tasks have finished since, then grows to
# _LONG_MEMORY times it; the tasks before the change keep the short half-life. Measured with
# the harness (``tests._planner_sim``), runs of 1,000 log-normal tasks counted from the
# 300th at budgets of 1.94, 2.0 and 2.06 polls per task, the lag at exactly 2.0 read off
# the line through them (seeds 0-15): 0.517 of fixed polling's lag with half_life 40
# throughout, 0.508 with 200 throughout, 0.509 now. How soon a drift is followed (runs of
# 600 tasks, the change at task 200, seeds 0-7: tasks submitted after it until the plan's
# first two polls are half-way to where they settle, for good; most of it is the tasks
# already in flight): 1-6 s -> 3-9 s, 118 tasks with 40, 141 with 200, 123 now; 3-9 s ->
# 1-6 s, 162, 205 and 157; 1-6 s -> 8-12 s, 96 each.
_RECENT = 40
# Each task's middle is spread by what its interval tells (``_agreement``; a whole uniform
# draw's 1/12 before), and a run of the last _CHANGE_REACH tasks (at least _RECENT // 2)
# that disagrees with the plan beyond _CHANGE_Z standard errors is a change too
# (``_disagreeing``). The harness's lag at exactly 2.0 polls per task (``--at-budget``, 400
# tasks from the 100th, seeds 0-31 | 32-63), 1-6 s then 3-9 s: 0.523x | 0.524x with the
# last _RECENT alone at 3.0, each task counted 1/12; 0.514x | 0.517x spread by its
# interval; 0.500x | 0.511x with the runs too, all at 3.5 (the runs at 3.25: 0.509x on
# seeds 32-63, 4.0: 0.505x on 0-31); 3-9 s then 1-6 s 0.365x | 0.367x -> 0.361x | 0.370x;
# uniform (a batch too), log-normal and bimodal tasks within 0.0003x of before. Spread by
# its interval, a task says less, so the test is surer: at 3.0, the live benchmark's 1,100
# uniform tasks (``--live``, lanes 0-7) found changes that were not in three lanes of eight
# (0.798 s for 0.789 s; at 3.5 0.791 s, lanes 0-15 0.792 s for 0.793 s), and runs tested at
# 3.0 did in uniform tasks (0.313x for 0.310x).
_CHANGE_Z = 3.5
_MIN_VARIANCE = 1e-9
_SETTLE = 100
_LONG_MEMORY = 5.0
# At a change after durations had held, the finished tasks before it are moved by the shift
# under which the recent tasks agree with the plan's estimate (``_carry_over``; bisected in
# _SHIFT_ROUNDS halvings), unless more than one in _CARRY_RUNNING + 1 of them are still
# running (a batch draining). Without it, tasks of 1-6 s then 3-9 s (the change at task
# 200) were planned for 1-6 s until 3-9 s tasks had finished: the first 50 of the new ones
# spent 3.4 polls each (polled at the old plan's ages up to 6 s, then stepped past it), and
# the budget correction paid that back at about 1.6 polls per task, where 3-9 s tasks can
# only be polled about every ``fallback_interval``. Measured with ``python -m
# tests._planner_sim --seeds 8`` (seeds 0-7 | 8-15): 0.53x of fixed polling's lag at 2.15
# polls -> 0.52x at 2.06 | 0.50x at 2.14 -> 0.47x at 2.06 (at exactly 2.0 polls, by
# ``--at-budget``: 0.62x -> 0.56x | 0.56x -> 0.51x); 3-9 s then 1-6 s 0.46x at 1.77 -> 0.44x
# at 1.81 | 0.45x at 1.79 -> 0.43x at 1.83; tasks after the change until the plan's first two
# polls are half-way to where they settle (600 tasks, seeds 0-7) 151 -> 113 and 154 -> 139;
# the other shapes, and long runs, unchanged (it never fires there). A scale instead of a
# shift over-reached on the upward drift (3-9 s is no 1-6 s stretched: 1.5-3.5 times, by
# which the plans stayed too sparse to see their error); a queue's batch (its later tasks
# wait longer) is one batch, not a change to carry over (0.54x -> 0.75x unguarded).
# The shift is measured on the tasks since the change (``_change_start``: where, within the
# last _CHANGE_REACH tasks, the evidence starts to disagree with the plan), not on the last
# _RECENT: those are the youngest, most seen running once or twice, and when the change is
# seen (about 95 tasks after it on the upward drift) the tasks before them since the change
# were moved with the old ones as if they were old durations. Found from the last 40, the
# shift read 1.4-2.3 s on the upward drift (seeds 0-3; the medians moved by 2.5 s), from
# the change's start 1.6-3.0 s. Measured with the harness (``python -m tests._planner_sim``,
# seeds 0-7 | 8-15 | 16-31): 1-6 s then 3-9 s 2.046 polls at 0.512x -> 2.036 at 0.507x |
# 2.060 at 0.497x -> 2.057 at 0.485x | 2.054 at 0.491x -> 2.040 at 0.496x (at exactly 2.0,
# ``--at-budget``: 0.545x -> 0.532x | 0.530x -> 0.506x | 0.532x -> 0.526x); 3-9 s then 1-6 s
# 1.802 at 0.441x -> 1.815 at 0.437x | 1.812 at 0.432x -> 1.818 at 0.427x | 1.810 at 0.446x
# -> 1.815 at 0.446x; every other shape, and long log-normal runs, the same to the last
# digit. Reaching 150 or 250 tasks back finds the same starts on the drifts, but moves a
# growing queue (0.543x -> 0.549x on seeds 16-31). Scoring each task by what its interval
# tells (``_agreement``, as the change tests do) rather than a whole uniform draw each:
# 1-6 s then 3-9 s at exactly 2.0 polls 0.4998x -> 0.4972x (seeds 0-31), 0.5111x ->
# 0.5077x (32-63); at the default budget and the tracker's launch slack (seeds 0-31) 2.033
# polls at 1.129 s -> 2.031 at 1.128 s; every other shape the same to the last digit.
_SHIFT_ROUNDS = 16
_CARRY_RUNNING = 4
_CHANGE_REACH = 2 * _RECENT


def _cells(horizon: float) -> int:
    """How many cells the grid up to ``horizon`` (the longest completion seen) has: none
    wider than ``_CELL_WIDTH``, between ``_CELLS`` and ``_MAX_CELLS`` of them.

    >>> _cells(6.2), _cells(11.0), _cells(20.0)
    (60, 88, 120)
    """
    return min(_MAX_CELLS, max(_CELLS, math.ceil(horizon / _CELL_WIDTH)))


def _grow(last: float, growth: float, config: PollingConfig) -> float:
    """The next poll when nothing is known past ``last``: a geometric step."""
    if last <= 0.0:
        return 2.0 * config.min_interval
    return last + max(config.min_interval, growth * last)


@functools.cache
def _kernel(cells: int, smoothing: float) -> tuple[tuple[int, int, tuple[float, ...]], ...]:
    """The smoothing of :func:`_histogram`'s prior as, for each cell, the range of cells
    ``[low, high)`` it gathers from and their weights: each cell from ``_SHARP_CELLS`` on
    spreads its mass over the cells from ``_SHARP_CELLS`` on by a Gaussian of ``smoothing``
    times its age in cells (cut at four widths, and scaled to keep its mass); the first
    cells keep theirs."""
    gathered: list[dict[int, float]] = [{} for _ in range(cells)]
    for source in range(cells):
        if source < _SHARP_CELLS:
            gathered[source][source] = 1.0
            continue
        width = smoothing * (source + 0.5)
        reach = math.ceil(4.0 * width)
        targets = range(max(_SHARP_CELLS, source - reach), min(cells, source + reach + 1))
        shares = [math.exp(-0.5 * ((target - source) / width) ** 2) for target in targets]
        total = sum(shares)
        for target, share in zip(targets, shares, strict=True):
            gathered[target][source] = share / total
    kernel = []
    for sources in gathered:
        low, high = min(sources), max(sources) + 1
        kernel.append((low, high, tuple(sources.get(cell, 0.0) for cell in range(low, high))))
    return tuple(kernel)


def _histogram(
    observations: list[tuple[float, float, float]], cells: int, smoothing: float | None = None
) -> tuple[float, list[float], float]:
    """Completion-time probability per grid cell up to the longest completion seen, and the
    probability beyond it, from weighted interval-censored observations ``(low, high,
    weight)`` (``high`` infinite: still pending, or ``None`` if nothing finished).

    Turnbull's self-consistency iteration: each observation's weight is shared among the
    cells its interval covers in proportion to the current estimate, smoothed (by
    ``smoothing`` times each cell's age, ``_SMOOTHING`` unless given; see :func:`_kernel`):
    the weight never leaves its interval, so what narrow intervals say
    stays sharp, but what wide ones leave open is not heaped on a few cells. Observations are
    grouped by the cells they cover, which keeps this cheap. The grid ends at the longest
    completion seen: a pending task past it, or seen running in its last cell, says only
    "beyond" (the tail policy's business), so its next poll does not stretch the grid by a
    hair each time it is seen unfinished.
    """
    horizon = max(high for _, high, _ in observations if high != math.inf)
    step = horizon / cells
    beyond = cells  # the extra cell past the horizon
    groups: collections.defaultdict[tuple[int, int], float] = collections.defaultdict(float)
    for low, high, weight in observations:
        first = min(beyond, int(low / step))
        if high == math.inf and first >= cells - 1:
            # Seen running in the last cell: it says nothing of the cells before the
            # horizon, and spread over that cell too it would put a burst's pending tasks
            # there, just before the longest completion seen, where they would be polled
            # again and again as it creeps up (the growing queue: 2.88 polls per task, 2.61
            # once counted beyond; ``python -m tests._planner_sim --seeds 8``).
            first = beyond
        last = (
            beyond if high == math.inf else max(first, min(cells - 1, math.ceil(high / step) - 1))
        )
        groups[(first, last)] += weight
    total = sum(groups.values())
    # Each interval as its cells' range [first, stop) and its share of the weight. A round
    # sums each range's mass from running sums, and adds each range's scale to the cells
    # it covers as a step up at ``first`` and down at ``stop`` (running sums again): a few
    # operations per interval instead of one per cell it covers (a histogram took 0.37 ms,
    # now 0.19, on the evidence of the harness's runs; every task's polls and lag the same
    # on all its shapes, seeds 0-7).
    spans = [(first, last + 1, weight / total) for (first, last), weight in groups.items()]
    steps = [0.0] * (cells + 2)
    coverage = [0] * (cells + 2)
    for first, stop, share in spans:  # start: each interval spread evenly
        steps[first] += share / (stop - first)
        steps[stop] -= share / (stop - first)
        coverage[first] += 1
        coverage[stop] -= 1
    # A cell no interval covers holds nothing (not what the running sum's rounding leaves).
    mass = [
        spread if covers else 0.0
        for spread, covers in zip(
            itertools.accumulate(steps[: cells + 1]),
            itertools.accumulate(coverage[: cells + 1]),
            strict=True,
        )
    ]
    covered_cells = [covers > 0 for covers in itertools.accumulate(coverage[: cells + 1])]
    kernel = _kernel(cells, _SMOOTHING if smoothing is None else smoothing)
    for _ in range(_EM_ROUNDS):
        # Inside each interval its weight goes where the smoothed estimate puts it: the
        # smoothing never moves weight across an interval's ends, so what narrow intervals
        # say stays sharp, and only what wide ones leave open is filled in smoothly.
        prior = [sum(map(operator.mul, weights, mass[low:high])) for low, high, weights in kernel]
        prior.append(mass[cells])  # beyond the horizon: one cell, nothing to smooth
        running = [0.0, *itertools.accumulate(prior)]
        steps = [0.0] * (cells + 2)
        for first, stop, share in spans:
            covered = running[stop] - running[first]
            if covered > 0.0:
                steps[first] += share / covered
                steps[stop] -= share / covered
        mass = [
            weight * scale if covers else 0.0
            for weight, scale, covers in zip(
                prior, itertools.accumulate(steps[: cells + 1]), covered_cells, strict=True
            )
        ]
    norm = sum(mass) or 1.0
    return step, [m / norm for m in mass[:cells]], mass[beyond] / norm


def _held_out(
    observations: list[tuple[float, float, float]], step: float, mass: list[float], beyond: float
) -> float:
    """The weighted log-likelihood of ``observations`` under an estimate (:func:`_histogram`'s
    ``step``, ``mass``, ``beyond``); past its horizon the distribution is taken as flat up to
    twice the horizon."""
    below = [0.0, *itertools.accumulate(mass)]
    horizon = step * len(mass)

    def cdf(offset: float) -> float:
        if offset == math.inf:
            return 1.0
        if offset >= horizon:
            return below[-1] + beyond * min(1.0, (offset - horizon) / horizon)
        cell = min(len(mass) - 1, int(offset / step))
        return below[cell] + mass[cell] * (offset / step - cell)

    total = 0.0
    for low, high, weight in observations:
        total += weight * math.log(max(_FLOOR, cdf(high) - cdf(low)))
    return total


def _choose_smoothing(observations: list[tuple[float, float, float]]) -> float:
    """The smoothing of :data:`_SMOOTHINGS` under which each half of the evidence (every
    other task) best predicts the other: wider where the durations are smooth (a long tail,
    whose few tasks then say less by where each happened to fall), narrower where they have
    sharp edges."""
    if not any(high != math.inf for _, high, _ in observations[0::2]) or not any(
        high != math.inf for _, high, _ in observations[1::2]
    ):
        return _SMOOTHING
    halves = (observations[0::2], observations[1::2])
    longest = max(high for _, high, _ in observations if high != math.inf)
    cells = _cells(longest)
    best, pick = -math.inf, _SMOOTHING
    for smoothing in _SMOOTHINGS:
        score = 0.0
        for fitted, held in (halves, halves[::-1]):
            step, mass, beyond = _histogram(fitted, cells, smoothing)
            score += _held_out(held, step, mass, beyond)
        if score > best:
            best, pick = score, smoothing
    return pick


def _edge(observations: list[tuple[float, float, float]], points: list[float]) -> float:
    """Where what is known ends on the grid ``points``: the start of its last cell when the
    tasks still running that were last seen in it (or past it) outnumber those that finished
    in it, else infinity. Counted unweighted: the running tasks are always the newest, and
    by weight alone would outweigh any finished ones."""
    start = points[-2] if len(points) > 1 else 0.0
    running = finished = 0
    for low, high, _ in observations:
        if high == math.inf:
            running += low >= start
        else:
            finished += high > start
    return start if running > finished else math.inf


def _estimated_below(policy: _Policy, offset: float) -> float:
    """The share of tasks ``policy``'s estimate has finished by ``offset``; past its horizon
    (the longest completion seen) what it left unknown thins out as a tail would."""
    if offset == math.inf:
        return 1.0
    horizon = policy.points[-1]
    if offset <= horizon:
        return policy.mass_at(offset)[0]
    return 1.0 - (1.0 - policy.mass_below[-1]) * horizon / offset


def _agreement(record: list[float], policy: _Policy) -> tuple[float, float]:
    """How one task (``[low, high]``, ``high`` infinite while pending) sits with the
    completion times ``policy`` was planned for: its middle's excess over 1/2, and what
    its interval leaves of the variance of a uniform's draw.

    Under the policy's estimate ``F``, each task's ``F(completion)`` would be uniform on
    [0, 1]; known only to lie in its interval, its expectation is the middle of ``[F(low),
    F(high)]`` (a task still running: of ``[F(low), 1]``), and the mean of those over tasks
    alike is 1/2 (the polls that made the intervals stop at each task's completion, which
    its interval already says). Tasks that take longer than planned push the mean up,
    shorter ones down. What the interval tells spreads that middle by ``1/12`` less the
    variance left within the interval, ``(F(high) - F(low))**2 / 12``: a task found in a
    narrow interval says as much as a uniform's draw, one polled once, early, and still
    running next to nothing (counted a whole draw's worth, the young tasks that are most of
    the recent ones drowned the others' disagreement)."""
    below = _estimated_below(policy, record[0])
    above = _estimated_below(policy, record[1])
    return (below + above) / 2.0 - 0.5, (1.0 - (above - below) ** 2) / 12.0


def _changed(recent: list[list[float]], policy: _Policy) -> bool:
    """Whether the tasks of ``recent`` (``[low, high]`` intervals, ``high`` infinite while
    pending) disagree with the completion times ``policy`` was planned for: their middles'
    excess (:func:`_agreement`) beyond ``_CHANGE_Z`` standard errors."""
    return _beyond([_agreement(record, policy) for record in recent])


def _beyond(agreements: list[tuple[float, float]]) -> bool:
    """Whether tasks of these :func:`_agreement` figures, in order, disagree with the plan
    beyond ``_CHANGE_Z`` standard errors (never fewer than ``_RECENT // 2`` tasks)."""
    if len(agreements) < _RECENT // 2:
        return False
    excess = variance = 0.0
    for more, spread in agreements:
        excess += more
        variance += spread
    return _significant(excess, variance)


def _significant(excess: float, variance: float) -> bool:
    """Whether a summed excess of :func:`_agreement`'s middles is beyond ``_CHANGE_Z``
    standard errors of the summed ``variance``."""
    return abs(excess) > _CHANGE_Z * math.sqrt(max(variance, _MIN_VARIANCE))


def _disagreeing(evidence: list[list[float]], policy: _Policy) -> list[list[float]] | None:
    """The recent tasks of ``evidence`` that disagree with ``policy`` (a change of
    durations), or ``None``: the last ``_RECENT``, or else the shortest run of at least
    ``_RECENT // 2`` at the end of the last ``_CHANGE_REACH`` that disagrees as far.

    After a drift to longer tasks, the tasks since the change are the youngest, and each
    says something only once it has been polled where the plan expected many done: among
    the last ``_RECENT`` they are too few to tell for seconds after they could, and a run
    of them alone says it sooner."""
    tail = evidence[-_CHANGE_REACH:]  # the last _RECENT are its last
    agreements = [_agreement(record, policy) for record in tail]
    if _beyond(agreements[-_RECENT:]):
        return tail[-_RECENT:]
    excess = variance = 0.0
    for index in range(len(tail) - 1, -1, -1):
        more, spread = agreements[index]
        excess += more
        variance += spread
        if len(tail) - index >= _RECENT // 2 and _significant(excess, variance):
            return tail[index:]
    return None


def _shift(recent: list[list[float]], policy: _Policy) -> float:
    """The shift ``c`` (seconds, below zero: shorter) under which the tasks of ``recent``
    agree with ``policy``'s estimate moved by it, ``F(t - c)``: the mean of :func:`_changed`'s
    middles is 1/2 again (bisection; the mean falls as ``c`` grows)."""
    horizon = policy.points[-1]
    low, high = -horizon, 2.0 * horizon

    def below(offset: float) -> float:
        return 0.0 if offset <= 0.0 else _estimated_below(policy, offset)

    for _ in range(_SHIFT_ROUNDS):
        shift = (low + high) / 2.0
        total = sum((below(start - shift) + below(end - shift)) / 2.0 for start, end in recent)
        if total > len(recent) / 2.0:
            low = shift  # still longer than the moved estimate says: move it further
        else:
            high = shift
    return (low + high) / 2.0


def _change_start(evidence: list[list[float]], policy: _Policy) -> int:
    """Where the change of durations that :func:`_disagreeing` found at the end of
    ``evidence`` began: of the indexes from ``_CHANGE_REACH`` tasks back to
    ``_RECENT // 2`` from the end, the one from which on the tasks disagree most with
    ``policy``'s estimate (:func:`_agreement`'s middles, their excess over 1/2 summed, in
    standard errors of that sum: each task spread by what its interval tells, as the
    change tests count it).

    The last ``_RECENT`` tasks are the youngest, most of them seen running once or twice;
    the tasks submitted since the change before them (older: some finished, the others seen
    running for longer) say more of how far the durations moved, and left among the tasks
    before the change, they were moved by it as if they were old durations. (Counted a
    whole uniform draw each, the young tasks, which say next to nothing, diluted the run
    since the change, and taking in old tasks on the long side scored higher.)"""
    total = len(evidence)
    first = max(0, total - _CHANGE_REACH)
    best, start = -1.0, max(0, total - _RECENT)
    excess = variance = 0.0
    for index in range(total - 1, first - 1, -1):
        more, spread = _agreement(evidence[index], policy)
        excess += more
        variance += spread
        score = abs(excess) / math.sqrt(max(variance, _MIN_VARIANCE))
        if total - index >= _RECENT // 2 and score > best:
            best, start = score, index
    return start


def _carry_over(before: list[list[float]], recent: list[list[float]], policy: _Policy) -> None:
    """At a change of durations, move the tasks that finished before it (``before``, in
    place) by the :func:`_shift` under which the ``recent`` tasks (those since the change)
    agree with ``policy``'s estimate: until the new durations' own tasks have finished,
    their shape comes from the old ones, moved to where the recent tasks say they now are.
    Without it, a drift to longer tasks is planned as if its tasks finished by the longest
    completion seen before it, and its tasks in flight are polled there, again and again,
    each poll "not done".
    Not when the tasks before the change are few (a plan still learning), or many of them
    still running (a batch draining, whose later tasks wait longer in the provider's
    queue: one batch, not old durations to carry over)."""
    finished = [record for record in before if record[1] != math.inf]
    if (len(before) - len(finished)) * _CARRY_RUNNING > len(finished):
        return
    shift = _shift(recent, policy)
    for record in finished:
        record[0] = max(0.0, record[0] + shift)
        record[1] = max(record[0] + 1e-6, record[1] + shift)


def _windows(points: list[float], longest_gap: float, shortest_gap: float) -> list[range]:
    """For each point but the last, the points a poll there may be followed by: none closer
    than ``shortest_gap`` (but the last point may always follow), none further than
    ``longest_gap`` (but the next point may always follow). The same for every poll cost, so
    :func:`solve_schedules` finds them once for all its dynamic programmes."""
    last = len(points) - 1
    windows = []
    low = high = 1
    for i in range(last):
        here = points[i]
        low = max(low, i + 1)
        while low <= last and points[low] - here < shortest_gap:
            low += 1
        high = max(high, i + 2)
        while high <= last and points[high] - here <= longest_gap:
            high += 1
        if low > last:  # every later point is within shortest_gap: only the last
            windows.append(range(last, last + 1))
        else:
            windows.append(range(low, max(low, high)))
    return windows


def _best_schedule(
    points: list[float],
    below: list[float],
    moment: list[float],
    cost: float,
    windows: list[range],
) -> tuple[list[float], float, list[float]]:
    """Optimal polls among ``points`` for one poll ``cost`` (dynamic programming): the
    schedule, its expected polls per task, and the optimal remaining cost from each point.

    A poll at point ``i`` may be followed by those of ``windows[i]`` (:func:`_windows`).
    The cost from ``i`` with the next poll at ``j``, ``cost x (1 - below[i]) + points[j] x
    (below[j] - below[i]) - (moment[j] - moment[i]) + value[j]`` (the tasks still running
    poll once more, and those finishing before ``j`` wait until ``j``), is computed as
    ``ahead[j] - below[i] x points[j]`` plus what does not depend on ``j``: the inner loop
    is one multiplication and a comparison (the same schedules as the sum written out; a
    re-plan's dynamic programmes took 2.4 times as long that way)."""
    last = len(points) - 1
    value = [0.0] * (last + 1)
    choice = [last] * (last + 1)
    # ahead[j] = points[j] x below[j] - moment[j] + value[j], once value[j] is known.
    ahead = [point * share - part for point, share, part in zip(points, below, moment, strict=True)]
    for i in range(last - 1, -1, -1):
        below_i = below[i]
        best, pick = math.inf, last
        for j in windows[i]:
            candidate = ahead[j] - below_i * points[j]
            if candidate < best:
                best, pick = candidate, j
        value[i] = best + cost * (1.0 - below_i) + moment[i]
        ahead[i] += value[i]
        choice[i] = pick
    schedule: list[float] = []
    polls = 0.0
    i = 0
    while i < last:
        polls += 1.0 - below[i]
        i = choice[i]
        schedule.append(points[i])
    return schedule, polls, value


def solve_schedules(
    observations: list[tuple[float, float, float]],
    budget: float,
    config: PollingConfig,
    *,
    smoothing: float | None = None,
    past_polls: float = 1.0,
) -> tuple[list[float], list[float], float, tuple[float, float], _Policy] | None:
    """The lag-minimising schedules just within and just over ``budget`` polls per task,
    the share of tasks to put on the denser one so that the mean meets the budget, their
    expected polls, and the policy that continues either from any poll (``None``: no
    evidence); each task expected past the schedules' last poll counts ``past_polls``."""
    if not any(high != math.inf for _, high, _ in observations):
        return None
    longest = max(high for _, high, _ in observations if high != math.inf)
    step, mass, beyond = _histogram(observations, _cells(longest), smoothing)
    # The grid ends where all but a sliver of the known mass is: one late detection (a
    # task seen done well after it finished) must not make every schedule end there.
    kept, trimmed = len(mass), 0.0
    while kept > 1 and trimmed + mass[kept - 1] < _SLIVER:
        kept -= 1
        trimmed += mass[kept]
    mass = mass[:kept]
    points = [cell * step for cell in range(len(mass) + 1)]
    below, moment = [0.0], [0.0]
    for cell, share in enumerate(mass):
        below.append(below[-1] + share)
        moment.append(moment[-1] + share * (cell + 0.5) * step)
    windows = _windows(points, config.fallback_interval - config.min_interval, config.min_interval)
    # Polls every schedule spends that the dynamic programme does not see: the exploratory
    # ones, and at least one more for each task past the schedule's last poll (the mass
    # trimmed off the grid, and tasks still running past the longest completion seen):
    # ``past_polls`` each, as many as such tasks were seen to spend (PollPlanner._past).
    unseen = config.explore_share + (trimmed + beyond) * past_polls

    def solve(cost: float) -> tuple[list[float], float, list[float]]:
        schedule, polls, value = _best_schedule(points, below, moment, cost, windows)
        return schedule, polls + unseen, value

    low_cost, high_cost = 0.0, 100.0 * max(points[-1], 1.0)
    # Each solution: (schedule, expected polls per task, remaining cost from each point).
    sparse = solve(high_cost)
    dense = sparse
    if sparse[1] <= budget:  # else even the sparsest schedule is over budget: use it
        dense_found = False
        rounds = 20
        # The first halvings go from a cost no schedule needs down to where the budget
        # binds (a second or two per poll): while a schedule keeps within the budget at a
        # cost, it does at every higher cost, so each of them would only lower high_cost.
        # One programme at the last halving above _PROBE_COST says whether they all do;
        # if so, the bisection goes on from there (the same schedules, a third fewer
        # programmes), else from the start as before.
        skip = 0
        while skip < rounds - 1 and high_cost / 2 ** (skip + 1) >= _PROBE_COST:
            skip += 1
        if skip:
            probe = solve(high_cost / 2**skip)
            if probe[1] <= budget:
                high_cost, sparse, rounds = high_cost / 2**skip, probe, rounds - skip
        for _ in range(rounds):
            middle = (low_cost + high_cost) / 2
            candidate = solve(middle)
            if candidate[1] <= budget:
                high_cost, sparse = middle, candidate
            else:
                low_cost, dense, dense_found = middle, candidate, True
        if not dense_found or dense[1] <= sparse[1]:
            dense = sparse
    (sparse_plan, sparse_polls, sparse_value), (dense_plan, dense_polls, dense_value) = (
        sparse,
        dense,
    )
    share = 0.0
    if dense_polls > sparse_polls:
        share = min(1.0, max(0.0, (budget - sparse_polls) / (dense_polls - sparse_polls)))
    edge = _edge(observations, points)
    seen_running = heapq.nlargest(
        _AT_RISK, (low for low, high, _ in observations if high == math.inf and low > points[-1])
    )
    frontier = seen_running[-1] if len(seen_running) == _AT_RISK else 0.0
    policy = _Policy(
        points, below, moment, sparse_value, dense_value, edge, frontier, trimmed + beyond
    )
    return sparse_plan, dense_plan, share, (sparse_polls, dense_polls), policy
