"""Where to place polls: a pure planner that learns how long tasks take.

Evidence: each finished task tells us its completion time (seconds after submit) lies in
``(last poll that saw it unfinished, poll that saw it finished]``. The planner keeps the
most recent observations and estimates the completion-time distribution from these
interval-censored data with a few rounds of Turnbull's self-consistency (EM) algorithm on a
time grid, so wide intervals (from the 5 s fallback) do not smear what narrow ones show. It
then solves for the poll schedule that minimises mean detection lag for a budget of polls per task:

    minimise  E[lag] + cost · E[polls]        (dynamic programming over the grid)

with ``cost`` found by bisection. The schedules are discrete, so the two that bracket the
budget are mixed: each task draws its ``lane`` in [0, 1) and follows the denser schedule with
the probability that makes the expected polls per task meet ``target_polls``. Before there is
enough evidence the planner falls back to the provider's advice: poll every 5 seconds.

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
import math

import attrs

from . import _protocol as protocol
from . import errors
from ._protocol import MAX_RETRY_AFTER, UNEXPECTED_REDIRECT
from .models import ImageResult, TaskStatus

FALLBACK_INTERVAL = 5.0
#: ``PROCESSING_FAILURE`` answers to a poll in a row before the task counts as failed: the
#: provider says to retry it "a few times", and repeated about one task it is an answer.
PROCESSING_FAILURE_TRIES = 4
# A few self-consistency rounds: enough to pull wide intervals' mass to where narrow ones
# put it, few enough to keep the estimate smooth (fully converged, Turnbull's estimate is a
# handful of spikes, and schedules fitted to spikes overshoot their poll budget in practice).
_EM_ROUNDS = 3


@attrs.frozen
class PollingConfig:
    """Knobs of the smart poller.

    Attributes:
        target_polls: Polls per task the schedule aims at (mean); fewer polls, more lag.
        fallback_interval: Spacing before there is evidence (the provider suggests 5 s).
        min_observations: Finished tasks needed before the learned schedule is used.
        window: How many recent finished tasks the estimate is built from.
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

    target_polls: float = 1.8
    fallback_interval: float = FALLBACK_INTERVAL
    min_observations: int = 5
    window: int = 200
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
    done_at: float,
    last_not_done: float | None,
    first_due: float,
    config: PollingConfig,
    *,
    fresh: bool,
) -> tuple[float, float] | None:
    """What a task seen finished ``done_at`` seconds after its submit teaches the planner:
    the interval its completion time lies in, or ``None`` when it says nothing worth learning.

    ``last_not_done`` is the offset of the last poll that saw it unfinished (``None``: done
    at its first poll, planned for ``first_due``); ``fresh`` says this client submitted it.

    >>> config = PollingConfig()
    >>> completion_evidence(3.0, 2.0, 1.0, config, fresh=True)
    (2.0, 3.0)
    >>> completion_evidence(5.0, None, 5.0, config, fresh=True)  # done at a first poll on time
    (0.0, 5.0)
    >>> completion_evidence(65.0, None, 5.0, config, fresh=True) is None  # a first poll late
    True
    """
    if not fresh:
        # What the planner learns must be completion times measured from a submit we saw.
        # A task picked up again (a rerun hours later) has a submit time from a journal or
        # another process, and, seen done at its first poll, an interval of (0, hours]: it
        # would teach "tasks take hours" and stretch every new task's polls. Only tasks
        # this client submitted, whose whole life it observed, teach.
        return None
    if last_not_done is not None:
        return last_not_done, done_at  # bounded below by our own poll
    if done_at <= first_due + max(config.min_interval, first_due / 2):
        return 0.0, done_at  # done at a first poll that went out as planned
    # Done at a first poll that came late (a backlog, a Retry-After, failed polls):
    # (0, late] says little, and is read as "in its upper half", i.e. long.
    return None


class PollPlanner:
    """Learns completion times and turns them into a poll schedule (offsets from submit)."""

    def __init__(self, config: PollingConfig | None = None) -> None:
        self.config = config or PollingConfig()
        # (seen unfinished at, seen finished at), offsets from submit
        self._observations: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=self.config.window
        )
        self._plan: list[float] = []  # the sparser schedule (at most target_polls)
        self._dense_plan: list[float] = []  # the denser one (above target_polls)
        self._dense_share = 0.0  # share of tasks that follow the denser schedule
        self._new_since_plan = 0

    @property
    def plan(self) -> tuple[float, ...]:
        """The current schedule: poll offsets in seconds after submit (empty: fallback)."""
        return tuple(self._plan)

    @property
    def observations(self) -> int:
        """How many finished tasks the estimate is built from (at most ``window``)."""
        return len(self._observations)

    @property
    def has_plan(self) -> bool:
        """Whether a learned schedule is in use (else the fallback spacing)."""
        return bool(self._plan)

    def observe(self, not_done_at: float, done_at: float) -> None:
        """A task was seen unfinished at offset ``not_done_at`` and finished at ``done_at``."""
        low = max(0.0, not_done_at)
        high = max(low + 1e-6, done_at)
        self._observations.append((low, high))
        self._new_since_plan += 1
        count = len(self._observations)
        # Re-plan often while learning, then every tenth of the window.
        due = self._new_since_plan >= max(1, min(count // 2, self.config.window // 10))
        if count >= self.config.min_observations and (due or not self._plan):
            self._replan()

    def next_poll(self, age: float, last_not_done: float | None, lane: float = 1.0) -> float:
        """Offset (seconds after submit) of the next poll for a task now ``age`` old.

        ``last_not_done`` is the offset of the last poll that saw it unfinished (``None``
        if never polled); ``lane`` is the task's own draw in [0, 1) that picks its schedule.
        The answer is never earlier than ``age``.
        """
        floor = age if last_not_done is None else max(age, last_not_done + self.config.min_interval)
        if not self._plan:
            start = 0.0 if last_not_done is None else last_not_done
            return max(floor, start + self.config.fallback_interval)
        plan = self._dense_plan if lane < self._dense_share else self._plan
        index = bisect.bisect_right(plan, floor - 1e-9)
        if index < len(plan):
            return plan[index]
        # Outlived every task we have seen: keep looking, at a pace set by what we know.
        tail = min(self.config.fallback_interval, max(1.0, 0.25 * plan[-1]))
        return floor + tail

    # -- the solver ------------------------------------------------------------------------

    def _replan(self) -> None:
        self._new_since_plan = 0
        self._plan, self._dense_plan, self._dense_share = solve_schedules(
            list(self._observations), self.config.target_polls
        )


def _histogram(observations: list[tuple[float, float]], cells: int) -> tuple[float, list[float]]:
    """Completion-time probability per grid cell, from interval-censored observations.

    Turnbull's self-consistency iteration: each observation's unit of probability is shared
    among the cells its interval covers in proportion to the current estimate, until the
    estimate stops changing. Observations are grouped by the cells they cover (polls happen
    at plan points, so there are few distinct groups), which keeps this cheap.
    """
    horizon = max(high for _, high in observations)
    step = horizon / cells
    groups: collections.Counter[tuple[int, int]] = collections.Counter()
    for seen_unfinished, high in observations:
        # Done by the first poll: nothing bounds it from below, and a uniform spread would
        # claim completions right after submit. Assume the upper half: if tasks are shorter,
        # the next, earlier first polls say so and the estimate moves down.
        low = seen_unfinished if seen_unfinished > 0.0 else high / 2
        first = min(cells - 1, int(low / step))
        last = min(cells - 1, max(first, math.ceil(high / step) - 1))
        groups[(first, last)] += 1
    total = len(observations)
    mass = [0.0] * cells
    for (first, last), count in groups.items():  # start: each interval spread evenly
        share = count / (total * (last - first + 1))
        for cell in range(first, last + 1):
            mass[cell] += share
    for _ in range(_EM_ROUNDS):
        updated = [0.0] * cells
        for (first, last), count in groups.items():
            covered = sum(mass[first : last + 1])
            if covered <= 0.0:
                continue
            scale = count / (total * covered)
            for cell in range(first, last + 1):
                updated[cell] += mass[cell] * scale
        change = max(abs(a - b) for a, b in zip(mass, updated, strict=True))
        mass = updated
        if change < 1e-6:
            break
    norm = sum(mass) or 1.0
    return step, [m / norm for m in mass]


def _best_schedule(step: float, mass: list[float], cost: float) -> tuple[list[float], float, float]:
    """Optimal poll grid points for one poll ``cost``; with its expected lag and polls."""
    cells = len(mass)
    # Prefix sums: probability mass and mass-weighted cell midpoints.
    prefix_mass = [0.0] * (cells + 1)
    prefix_mid = [0.0] * (cells + 1)
    for c in range(cells):
        prefix_mass[c + 1] = prefix_mass[c] + mass[c]
        prefix_mid[c + 1] = prefix_mid[c] + mass[c] * (c + 0.5) * step
    survival = [1.0 - prefix_mass[i] for i in range(cells + 1)]
    best = [0.0] * (cells + 1)  # expected remaining cost from grid point i (unnormalised)
    choice = [cells] * (cells + 1)
    for i in range(cells - 1, -1, -1):
        poll_cost = cost * survival[i]
        top = math.inf
        pick = cells
        for j in range(i + 1, cells + 1):
            lag = j * step * (prefix_mass[j] - prefix_mass[i]) - (prefix_mid[j] - prefix_mid[i])
            value = poll_cost + lag + best[j]
            if value < top:
                top, pick = value, j
        best[i], choice[i] = top, pick
    points: list[float] = []
    lag_total = 0.0
    polls = 0.0
    i = 0
    while i < cells:
        j = choice[i]
        polls += survival[i]
        lag_total += j * step * (prefix_mass[j] - prefix_mass[i]) - (prefix_mid[j] - prefix_mid[i])
        points.append(j * step)
        i = j
    return points, lag_total, polls


def solve_schedules(
    observations: list[tuple[float, float]], target_polls: float, cells: int = 60
) -> tuple[list[float], list[float], float]:
    """The lag-minimising schedules just within and just over ``target_polls`` polls per task,
    and the share of tasks to put on the denser one so that the mean meets the budget."""
    if not observations:
        return [], [], 0.0
    step, mass = _histogram(observations, cells)
    low_cost, high_cost = 0.0, 100.0 * max(step * cells, 1.0)
    sparse, _, sparse_polls = _best_schedule(step, mass, high_cost)
    if sparse_polls > target_polls:
        return sparse, sparse, 0.0  # even the sparsest useful schedule is over budget
    dense: list[float] = []
    dense_polls = math.inf
    for _ in range(24):
        middle = (low_cost + high_cost) / 2
        candidate, _, polls = _best_schedule(step, mass, middle)
        if polls <= target_polls:
            high_cost, sparse, sparse_polls = middle, candidate, polls
        else:
            low_cost, dense, dense_polls = middle, candidate, polls
    if not dense or dense_polls <= sparse_polls:
        return sparse, sparse, 0.0
    share = (target_polls - sparse_polls) / (dense_polls - sparse_polls)
    return sparse, dense, min(1.0, max(0.0, share))
