"""The async task tracker: one scheduler polls every pending smart-beauty task.

One asyncio task (the scheduler) knows each pending task's next poll time (a heap). When
polls fall due it sends them concurrently through the client's dispatcher, so polls share
the concurrency and rate budget with everything else; a configurable share caps how much of
that budget polls may take. It starts with the first tracked task, ends when none are left,
and :meth:`TaskTracker.aclose` stops it and answers every waiter.

Each tracked task has one shared future; any number of waiters await it through
``asyncio.shield``, so cancelling one waiter cancels only that wait.

Polls are free; the tasks behind them were paid for. So a task ends only on a definite
answer about it (a result, ``task_status`` outside 0-2, an error about the task such as
``ERROR_NO_FACE_IN_FILE`` or an unknown id): transient poll failures are retried until the
task's give-up time, and a task ended for a reason that is not its own (a bad key, give-up,
the client closing, a bug) answers its waiters with that error, never ``TaskFailedError``,
and can be tracked again. What a failed poll means is decided in :mod:`._polling`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import math
import traceback
import weakref
from collections.abc import Callable, Generator
from typing import Any

from . import _protocol as protocol
from . import errors
from ._dispatch import Call, Dispatcher
from ._polling import (
    PollingConfig,
    PollPlanner,
    PollVerdict,
    classify_poll_error,
    poll_retry_delay,
    retry_after_of,
)
from ._ratelimit import Clock, RateLimiter, Sleeper
from .models import ImageResult, TaskStatus

logger = logging.getLogger("ailab_async")

_POLL_DEADLINE = 30.0  # one poll, retries included; a slow poll is simply re-scheduled


def _timeout_problem(value: object) -> str | None:
    """Why ``value`` is not a usable timeout (seconds >= 0, or ``None``); ``None`` if it is."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds or None, got {type(value).__name__}"
    if math.isnan(value) or value < 0:
        return f"must be >= 0 seconds (0: check without waiting), got {value!r}"
    return None


def _check_submitted_at(submitted_at: object) -> dt.datetime | None:
    if submitted_at is None:
        return None
    if not isinstance(submitted_at, dt.datetime):
        raise errors.ValidationError(
            f"submitted_at must be a timezone-aware datetime, got {type(submitted_at).__name__}",
            input="submitted_at",
            rule="type",
        )
    if submitted_at.utcoffset() is None:
        raise errors.ValidationError(
            "submitted_at must be timezone-aware (for example datetime.now(timezone.utc)); "
            "a naive datetime is ambiguous",
            input="submitted_at",
            rule="timezone",
        )
    return submitted_at


def _describe(error: errors.AILabError) -> str:
    """A poll failure for the log: its type, status and code; never its message (a
    message can quote what the server sent)."""
    if isinstance(error, errors.APIError):
        return f"{type(error).__name__} HTTP {error.status}" + (
            f" {error.code}" if error.code else ""
        )
    return type(error).__name__


def _frames(exc: BaseException) -> str:
    """Where ``exc`` was raised, without its message (which may quote a result URL)."""
    return "".join(traceback.format_tb(exc.__traceback__))


class TaskHandle:
    """A smart-beauty task: await it for its :class:`~ailab_async.ImageResult`.

    ``task_id`` is what you paid for: persist it, and pick the task up later with
    ``client.track(task_id)`` if your process stops.

    >>> task = await client.submit_smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
    >>> result = await task  # doctest: +SKIP
    """

    __slots__ = ("__weakref__", "_future", "_sleep", "_timeout", "_tracked", "task_id")

    def __init__(self, tracked: _Tracked, timeout: float | None, sleep: Sleeper) -> None:
        self.task_id = tracked.task_id
        self._tracked = tracked
        self._future = tracked.future
        self._timeout = timeout
        self._sleep = sleep

    @property
    def status(self) -> TaskStatus | str:
        """``QUEUED``/``PROCESSING``/``SUCCEEDED`` as last polled, or ``"failed"``."""
        if self._future.done():
            if self._future.cancelled() or self._future.exception() is not None:
                return "failed"
            return TaskStatus.SUCCEEDED
        return self._tracked.status

    def done(self) -> bool:
        """Whether the task has a result or has failed."""
        return self._future.done()

    async def result(self, timeout: float | None = None) -> ImageResult:
        """Wait for the result, at most ``timeout`` seconds (default: the client's).

        ``timeout=0`` checks without waiting: the result if the task is known to be done,
        else :class:`~ailab_async.TaskTimeoutError`. ``None`` (or infinity) with no client
        default waits as long as it takes.

        Raises :class:`~ailab_async.TaskFailedError` if the task failed, and
        :class:`~ailab_async.TaskTimeoutError` (keeping ``task_id``) if waiting gave up;
        the task itself goes on and can be awaited again. A task the tracker stopped
        polling for another reason raises that reason (``AuthenticationError``,
        ``ClientClosedError``, ...); track it again with ``client.track(task_id)``.
        """
        problem = _timeout_problem(timeout)
        if problem is not None:
            raise errors.ValidationError(f"timeout {problem}", input="timeout", rule="range")
        limit = self._timeout if timeout is None else float(timeout)
        if limit is not None and math.isinf(limit):
            limit = None
        if limit == 0:
            if self._future.done():
                return self._future.result()
            raise errors.TaskTimeoutError(
                f"task {self.task_id} not finished yet (checked without waiting)",
                task_id=self.task_id,
            )
        # shield: cancelling this wait must not cancel the shared future other waiters use.
        waiter = asyncio.shield(self._future)
        if limit is None:
            return await waiter
        timer: asyncio.Future[None] = asyncio.ensure_future(self._sleep(limit))
        racers: set[asyncio.Future[Any]] = {waiter, timer}
        try:
            await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (waiter, timer):
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved: no "exception was never retrieved" at GC
        if self._future.done():
            return self._future.result()
        raise errors.TaskTimeoutError(
            f"task {self.task_id} not finished after {limit:g}s; it may still finish: "
            "track it again with client.track(task_id)",
            task_id=self.task_id,
        )

    def _final(self) -> bool:
        """Whether the task's outcome is settled for good: a result, or the server's word
        that it failed. Anything else (give-up, a bad key, a closed client, a bug) ended
        only our tracking, and tracking it again starts afresh."""
        if not self._future.done() or self._future.cancelled():
            return False
        error = self._future.exception()
        return error is None or isinstance(error, errors.TaskFailedError)

    def __await__(self) -> Generator[Any, None, ImageResult]:
        return self.result().__await__()

    def __repr__(self) -> str:
        status = self.status
        shown = status.name.lower() if isinstance(status, TaskStatus) else status
        return f"TaskHandle(task_id={self.task_id!r}, status={shown})"


class _Tracked:
    """The tracker's record of one pending task."""

    __slots__ = (
        "failure_code",
        "failures",
        "first_due",
        "fresh",
        "future",
        "lane",
        "last_error",
        "last_not_done",
        "next_poll_at",
        "planned",
        "polls",
        "same_code_failures",
        "status",
        "submitted_at",
        "task_id",
        "timed",
        "tracked_at",
    )

    def __init__(
        self,
        task_id: str,
        submitted_at: float,
        *,
        tracked_at: float,
        timed: bool,
        fresh: bool,
        lane: float,
    ) -> None:
        self.task_id = task_id
        #: The task's draw in [0, 1) that picks its poll schedule (see PollPlanner).
        self.lane = lane
        #: Whether its polls were placed by a learned plan (not the fallback spacing).
        self.planned = False
        self.submitted_at = submitted_at
        #: When this tracker took it on: the give-up clock runs from here, not from submit.
        self.tracked_at = tracked_at
        #: Whether ``submitted_at`` is known (fresh submit, or given): polls are placed by plan.
        self.timed = timed
        #: Submitted by this client just now: its whole life is ours to observe, so only
        #: its evidence teaches the planner.
        self.fresh = fresh
        #: Offset (after submit) its first poll was planned at.
        self.first_due = 0.0
        self.status = TaskStatus.QUEUED
        self.last_not_done: float | None = None
        self.next_poll_at = 0.0
        self.polls = 0
        #: Transient poll failures in a row, and the last one (for the give-up message).
        self.failures = 0
        self.last_error: str | None = None
        #: The API code of those failures, and how many in a row carried it.
        self.failure_code = ""
        self.same_code_failures = 0
        self.future: asyncio.Future[ImageResult] = asyncio.get_running_loop().create_future()
        # Retrieve a stored exception so a task nobody awaits never warns "never retrieved".
        self.future.add_done_callback(_consume_exception)


def _consume_exception(future: asyncio.Future[ImageResult]) -> None:
    if not future.cancelled():
        future.exception()


class TaskTracker:
    """Schedules and sends the polls of every pending task of one client."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        limiter: RateLimiter,
        *,
        max_concurrency: int,
        config: PollingConfig,
        clock: Clock,
        sleep: Sleeper,
        wait_timeout: float | None,
        rand: Callable[[], float],
    ) -> None:
        problem = _timeout_problem(wait_timeout)
        if problem is not None:
            raise errors.ConfigurationError(f"the default task timeout {problem}")
        if wait_timeout is not None and math.isinf(wait_timeout):
            wait_timeout = None
        self._rand = rand
        self._dispatcher = dispatcher
        self._limiter = limiter
        self._config = config
        self._planner = PollPlanner(config)
        self._clock = clock
        self._sleep = sleep
        self._wait_timeout = wait_timeout
        self._pending: dict[str, _Tracked] = {}
        self._handles: weakref.WeakValueDictionary[str, TaskHandle] = weakref.WeakValueDictionary()
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._wakeup = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()
        self._max_polls_in_flight = max(1, int(max_concurrency * config.poll_share))
        self._next_poll_slot = float("-inf")
        self._closed = False
        self.polls_sent = 0

    # -- public ----------------------------------------------------------------------------

    @property
    def planner(self) -> PollPlanner:
        return self._planner

    @property
    def pending(self) -> int:
        return len(self._pending)

    def track(
        self, task_id: str, *, submitted_at: dt.datetime | None = None, fresh: bool = False
    ) -> TaskHandle:
        """The handle of ``task_id``, tracking it if it is not tracked yet.

        A task already tracked, or settled for good (a result, or the server's word that it
        failed), keeps its handle. One whose tracking ended otherwise (gave up, a bad key,
        a closed client, a bug) is tracked afresh: a new handle, polled again.

        ``submitted_at`` (timezone-aware; a time in the future counts as now) places its
        polls; ``fresh`` says this client submitted it just now.
        """
        if self._closed:
            raise errors.ClientClosedError("this AILabClient is closed; create a new one")
        if not isinstance(task_id, str) or not task_id.strip():
            raise errors.ValidationError(
                "task_id must be a non-empty string", input="task_id", rule="type"
            )
        submitted = _check_submitted_at(submitted_at)
        handle = self._handles.get(task_id)
        if handle is not None and (task_id in self._pending or handle._final()):
            return handle
        now = self._clock()
        age = 0.0
        if submitted is not None:
            age = max(0.0, (dt.datetime.now(dt.timezone.utc) - submitted).total_seconds())
        started = now - age
        tracked = _Tracked(
            task_id,
            started,
            tracked_at=now,
            timed=fresh or submitted is not None,
            fresh=fresh,
            lane=self._rand(),
        )
        self._pending[task_id] = tracked
        handle = TaskHandle(tracked, self._wait_timeout, self._sleep)
        self._handles[task_id] = handle
        # Once nobody holds the handle, nobody can ever read the result: stop polling.
        weakref.finalize(handle, self._forget, tracked)
        # A task submitted just now is placed by the learned plan; one picked up again
        # (unknown or old submit time) is polled at once.
        if tracked.timed:
            tracked.planned = self._planner.has_plan
            tracked.first_due = self._planner.next_poll(age, None, tracked.lane)
            self._schedule(tracked, started + tracked.first_due)
        else:
            self._schedule(tracked, now)
        self._ensure_scheduler()
        return handle

    async def aclose(self) -> None:
        """Stop polling; every pending waiter gets a clear error naming its task."""
        self._closed = True
        tasks = [t for t in (self._scheduler, *self._polls) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for tracked in self._pending.values():
            if not tracked.future.done():
                tracked.future.set_exception(
                    errors.ClientClosedError(
                        f"the client was closed while task {tracked.task_id} was pending; "
                        "the task goes on remotely: track it again with a new client"
                    )
                )
        self._pending.clear()
        self._heap.clear()

    def _forget(self, tracked: _Tracked) -> None:
        if self._pending.get(tracked.task_id) is tracked:
            del self._pending[tracked.task_id]  # its heap entry goes stale
            tracked.future.cancel()
            self._wakeup.set()

    # -- scheduling --------------------------------------------------------------------------

    def _schedule(self, tracked: _Tracked, at: float) -> None:
        tracked.next_poll_at = at
        heapq.heappush(self._heap, (at, next(self._sequence), tracked.task_id))
        if self._heap[0][2] == tracked.task_id:
            self._wakeup.set()

    def _ensure_scheduler(self) -> None:
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = asyncio.get_running_loop().create_task(
                self._run(), name="ailab-async task tracker"
            )

    def _poll_spacing(self) -> float:
        """Seconds between poll launches so polls keep to their share of the rate limit.

        A limiter shared by processes may say which part of the budget is this process's
        (``local_rate()``); polls take their share of that, not of the whole account's.
        """
        local_rate = getattr(self._limiter, "local_rate", None)
        rate = local_rate() if callable(local_rate) else self._limiter.current_rate()
        if rate is None:
            return 0.0
        return 1.0 / (rate * self._config.poll_share)

    async def _run(self) -> None:
        try:
            while self._pending:
                self._wakeup.clear()
                now = self._clock()
                wait = self._launch_due(now)
                if not self._pending:
                    break
                await self._idle(wait)
        except Exception as exc:  # a bug (or a custom limiter's): nobody would poll any more
            self._crash_all(exc)
        finally:
            self._scheduler = None

    def _launch_due(self, now: float) -> float | None:
        """Start every poll that is due and allowed; return seconds until the next one."""
        spacing = self._poll_spacing()
        while self._heap:
            at, _, task_id = self._heap[0]
            tracked = self._pending.get(task_id)
            if tracked is None or tracked.next_poll_at != at:
                heapq.heappop(self._heap)  # stale entry: finished or re-scheduled
                continue
            if at > now:
                return at - now
            if len(self._polls) >= self._max_polls_in_flight:
                return None  # a finishing poll wakes us
            if spacing and self._next_poll_slot > now:
                return self._next_poll_slot - now
            heapq.heappop(self._heap)
            tracked.next_poll_at = float("inf")  # in flight: not in the heap
            self._next_poll_slot = max(now, self._next_poll_slot) + spacing
            poll = asyncio.get_running_loop().create_task(self._poll(tracked))
            self._polls.add(poll)
            poll.add_done_callback(self._poll_done)
        return None

    def _poll_done(self, poll: asyncio.Task[None]) -> None:
        self._polls.discard(poll)
        self._wakeup.set()
        if not poll.cancelled() and poll.exception() is not None:  # pragma: no cover - bug
            logger.error("task poll crashed", exc_info=poll.exception())

    async def _idle(self, wait: float | None) -> None:
        """Sleep until ``wait`` passes or something changes (a new task, a finished poll)."""
        waker = asyncio.ensure_future(self._wakeup.wait())
        if wait is None:
            await waker
            return
        sleeper = asyncio.ensure_future(self._sleep(wait))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (waker, sleeper):
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending

    # -- one poll ------------------------------------------------------------------------------

    async def _poll(self, tracked: _Tracked) -> None:
        try:
            await self._poll_once(tracked)
        except Exception as exc:  # a bug: answer the waiters now, not at their timeout
            self._crash(tracked, exc)

    async def _poll_once(self, tracked: _Tracked) -> None:
        task_id = tracked.task_id
        tracked.polls += 1
        self.polls_sent += 1
        outcome: ImageResult | TaskStatus | errors.AILabError
        # The server looked at the task some time between now and the answer: "unfinished"
        # is dated to now and "finished" to the answer, so the interval always holds the
        # true completion time, however long the poll queued.
        poll_started = self._clock()
        try:
            envelope = await self._dispatcher.call(
                Call(protocol.QUERY_TASK, [("task_id", task_id)]), deadline=_POLL_DEADLINE
            )
        except errors.AILabError as exc:
            outcome = exc
        else:
            outcome = _read_poll(envelope, task_id)
        if not self._tracking(tracked):
            return
        now = self._clock()
        if isinstance(outcome, ImageResult):
            self._succeed(tracked, outcome, now)
        elif isinstance(outcome, TaskStatus):
            self._not_done(tracked, outcome, poll_started, now)
        else:
            self._poll_failed(tracked, outcome, now)

    def _tracking(self, tracked: _Tracked) -> bool:
        return not tracked.future.done() and self._pending.get(tracked.task_id) is tracked

    def _give_up_at(self, tracked: _Tracked) -> float:
        return tracked.tracked_at + self._config.give_up_after

    def _not_done(
        self, tracked: _Tracked, status: TaskStatus, poll_started: float, now: float
    ) -> None:
        tracked.failures = tracked.same_code_failures = 0
        tracked.status = status
        tracked.last_not_done = poll_started - tracked.submitted_at
        if now >= self._give_up_at(tracked):
            self._give_up(tracked)
            return
        age = now - tracked.submitted_at
        offset = self._planner.next_poll(age, tracked.last_not_done, tracked.lane)
        self._schedule(tracked, tracked.submitted_at + offset)

    def _poll_failed(self, tracked: _Tracked, error: errors.AILabError, now: float) -> None:
        code = error.code if isinstance(error, errors.APIError) else ""
        if code and code == tracked.failure_code:
            tracked.same_code_failures += 1
        else:
            tracked.failure_code, tracked.same_code_failures = code, 1
        verdict = classify_poll_error(error, in_a_row=tracked.same_code_failures)
        if verdict is PollVerdict.TASK_FAILED:
            self._fail(tracked, error)
            return
        if verdict is PollVerdict.STOP:
            logger.warning(
                "stopped polling task %s: %s (not the task's failure; track it again later)",
                tracked.task_id,
                _describe(error),
            )
            self._end(tracked, error)
            return
        tracked.failures += 1
        tracked.last_error = _describe(error)
        if now >= self._give_up_at(tracked):
            self._give_up(tracked)
            return
        delay = poll_retry_delay(
            tracked.failures, retry_after_of(error), self._rand(), self._config
        )
        logger.info(
            "poll of task %s failed transiently (%s); polling again in %.1fs",
            tracked.task_id,
            tracked.last_error,
            delay,
        )
        # Never past the give-up time: the last poll there decides.
        self._schedule(tracked, min(now + delay, self._give_up_at(tracked)))

    def _succeed(self, tracked: _Tracked, result: ImageResult, now: float) -> None:
        del self._pending[tracked.task_id]
        tracked.future.set_result(result)
        if not tracked.fresh:
            # What the planner learns must be completion times measured from a submit we
            # saw. A task picked up again (a rerun hours later) has a submit time from a
            # journal or another process, and, seen done at its first poll, an interval of
            # (0, hours]: it would teach "tasks take hours" and stretch every new task's
            # polls. Only tasks this client submitted, whose whole life it observed, teach.
            return
        done_at = now - tracked.submitted_at
        if tracked.last_not_done is not None:
            low = tracked.last_not_done  # bounded below by our own poll
        elif done_at <= tracked.first_due + max(self._config.min_interval, tracked.first_due / 2):
            low = 0.0  # done at a first poll that went out as planned
        else:
            # Done at a first poll that came late (a backlog, a Retry-After, failed polls):
            # (0, late] says little, and is read as "in its upper half", i.e. long.
            return
        had_plan = self._planner.has_plan
        self._planner.observe(low, done_at, planned=tracked.planned)
        if not had_plan and self._planner.has_plan:
            self._replace_fallback_polls(now)

    def _replace_fallback_polls(self, now: float) -> None:
        """The first learned plan is in: bring forward polls placed by the 5 s fallback."""
        for pending in self._pending.values():
            if not pending.timed or pending.next_poll_at == float("inf") or pending.failures:
                continue  # unknown submit time, a poll in flight, or backing off
            age = now - pending.submitted_at
            offset = self._planner.next_poll(age, pending.last_not_done, pending.lane)
            if pending.submitted_at + offset < pending.next_poll_at:
                if pending.polls == 0:
                    pending.first_due = offset
                self._schedule(pending, pending.submitted_at + offset)

    def _end(self, tracked: _Tracked, error: BaseException) -> None:
        del self._pending[tracked.task_id]
        tracked.future.set_exception(error)

    def _give_up(self, tracked: _Tracked) -> None:
        last = f" (last poll error: {tracked.last_error})" if tracked.failures else ""
        self._end(
            tracked,
            errors.TaskTimeoutError(
                f"task {tracked.task_id} still unfinished after "
                f"{self._config.give_up_after:g}s of polling; stopped polling it{last}. "
                "It may still finish: track it again with client.track(task_id)",
                task_id=tracked.task_id,
            ),
        )

    def _fail(self, tracked: _Tracked, error: errors.AILabError) -> None:
        """The server's definite answer: the task failed."""
        if isinstance(error, errors.TaskFailedError):
            failure = error
        elif isinstance(error, errors.APIError):
            failure = errors.TaskFailedError(
                error.message,
                task_id=tracked.task_id,
                status=error.status,
                code=error.code,
                request_id=error.request_id,
                log_id=error.log_id,
                retryable=False,
            )
        else:  # pragma: no cover - classify_poll_error sends only API errors here
            failure = errors.TaskFailedError(
                str(error), task_id=tracked.task_id, status=0, code=type(error).__name__
            )
        failure.__cause__ = error if failure is not error else None
        self._end(tracked, failure)

    def _crash(self, tracked: _Tracked, exc: Exception) -> None:
        logger.error(
            "poll of task %s crashed (%s); its waiters get the error\n%s",
            tracked.task_id,
            type(exc).__name__,
            _frames(exc),
        )
        if self._tracking(tracked):
            self._end(tracked, _internal_error(tracked.task_id, exc))

    def _crash_all(self, exc: Exception) -> None:
        logger.error(
            "the task tracker crashed (%s); every pending task's waiters get the error\n%s",
            type(exc).__name__,
            _frames(exc),
        )
        pending = list(self._pending.values())
        self._pending.clear()
        self._heap.clear()
        for tracked in pending:
            if not tracked.future.done():
                tracked.future.set_exception(_internal_error(tracked.task_id, exc))


def _read_poll(
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


def _internal_error(task_id: str, exc: Exception) -> errors.AILabError:
    error = errors.AILabError(
        f"polling task {task_id} failed unexpectedly ({type(exc).__name__}); this is a "
        "bug, please report it. The task goes on remotely: track it again with "
        "client.track(task_id)"
    )
    error.__cause__ = exc
    error.retryable = True  # tracking it again may well work; the paid task is not lost
    return error
