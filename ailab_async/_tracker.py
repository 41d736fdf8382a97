"""The async task tracker: one scheduler polls every pending smart-beauty task.

One asyncio task (the scheduler) knows each pending task's next poll time (a heap). When
polls fall due it sends them concurrently through the client's dispatcher, so polls share
the concurrency and rate budget with everything else; a configurable share caps how much of
that budget polls may take. It starts with the first tracked task, ends when none are left,
and :meth:`TaskTracker.aclose` stops it and answers every waiter.

Each tracked task has one shared future; any number of waiters await it through
``asyncio.shield``, so cancelling one waiter cancels only that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import weakref
from collections.abc import Callable, Generator
from typing import Any

from . import _protocol as protocol
from . import errors
from ._dispatch import Call, Dispatcher
from ._polling import PollingConfig, PollPlanner
from ._ratelimit import Clock, RateLimiter, Sleeper
from .models import ImageResult, TaskStatus

logger = logging.getLogger("ailab_async")

_POLL_DEADLINE = 30.0  # one poll, retries included; a slow poll is simply re-scheduled
_RETRY_POLL_AFTER = 5.0  # after a transient poll failure


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

        Raises :class:`~ailab_async.TaskFailedError` if the task failed, and
        :class:`~ailab_async.TaskTimeoutError` (keeping ``task_id``) if waiting gave up;
        the task itself goes on and can be awaited again.
        """
        limit = self._timeout if timeout is None else timeout
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

    def __await__(self) -> Generator[Any, None, ImageResult]:
        return self.result().__await__()

    def __repr__(self) -> str:
        status = self.status
        shown = status.name.lower() if isinstance(status, TaskStatus) else status
        return f"TaskHandle(task_id={self.task_id!r}, status={shown})"


class _Tracked:
    """The tracker's record of one pending task."""

    __slots__ = (
        "future",
        "lane",
        "last_not_done",
        "next_poll_at",
        "planned",
        "polls",
        "status",
        "submitted_at",
        "task_id",
        "timed",
    )

    def __init__(self, task_id: str, submitted_at: float, *, timed: bool, lane: float) -> None:
        self.task_id = task_id
        #: The task's draw in [0, 1) that picks its poll schedule (see PollPlanner).
        self.lane = lane
        #: Whether its polls were placed by a learned plan (not the fallback spacing).
        self.planned = False
        self.submitted_at = submitted_at
        #: Whether ``submitted_at`` is known (fresh submit, or given): only then we learn.
        self.timed = timed
        self.status = TaskStatus.QUEUED
        self.last_not_done: float | None = None
        self.next_poll_at = 0.0
        self.polls = 0
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
        """The handle of ``task_id``, tracking it if it is not tracked yet."""
        if self._closed:
            raise errors.ClientClosedError("this AILabClient is closed; create a new one")
        handle = self._handles.get(task_id)
        if handle is not None and (task_id in self._pending or handle.done()):
            return handle
        now = self._clock()
        if submitted_at is not None:
            age = (dt.datetime.now(dt.timezone.utc) - submitted_at).total_seconds()
            started = now - max(0.0, age)
        else:
            started = now
        tracked = _Tracked(
            task_id, started, timed=fresh or submitted_at is not None, lane=self._rand()
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
            first = self._planner.next_poll(now - started, None, tracked.lane)
            self._schedule(tracked, started + first)
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
        while self._pending:
            self._wakeup.clear()
            now = self._clock()
            wait = self._launch_due(now)
            if not self._pending:
                break
            await self._idle(wait)
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
        task_id = tracked.task_id
        tracked.polls += 1
        self.polls_sent += 1
        outcome: TaskStatus | errors.AILabError
        envelope: protocol.Envelope | None = None
        # The server looked at the task some time between now and the answer: "unfinished"
        # is dated to now and "finished" to the answer, so the interval always holds the
        # true completion time, however long the poll queued.
        poll_started = self._clock()
        try:
            envelope = await self._dispatcher.call(
                Call(protocol.QUERY_TASK, [("task_id", task_id)]), deadline=_POLL_DEADLINE
            )
            outcome = protocol.parse_task_status(envelope, task_id=task_id)
        except errors.AILabError as exc:
            outcome = exc
        if tracked.future.done() or self._pending.get(task_id) is not tracked:
            return
        now = self._clock()
        if isinstance(outcome, TaskStatus):
            if outcome is TaskStatus.SUCCEEDED:
                assert envelope is not None
                self._succeed(tracked, envelope, now)
                return
            if now - tracked.submitted_at > self._config.give_up_after:
                self._give_up(tracked)
                return
            tracked.status = outcome
            tracked.last_not_done = poll_started - tracked.submitted_at
            age = now - tracked.submitted_at
            offset = self._planner.next_poll(age, tracked.last_not_done, tracked.lane)
            self._schedule(tracked, tracked.submitted_at + offset)
            return
        if outcome.retryable and not isinstance(outcome, errors.TaskFailedError):
            logger.info(
                "poll of task %s failed transiently (%s); polling again later",
                task_id,
                type(outcome).__name__,
            )
            self._schedule(tracked, now + _RETRY_POLL_AFTER)
            return
        self._fail(tracked, outcome)

    def _succeed(self, tracked: _Tracked, envelope: protocol.Envelope, now: float) -> None:
        try:
            result = protocol.parse_image_result(envelope, task_id=tracked.task_id)
        except errors.MalformedResponseError as exc:
            self._fail(tracked, exc)
            return
        del self._pending[tracked.task_id]
        tracked.future.set_result(result)
        if tracked.timed:
            # Finished between the last "not done" poll (or the submit) and now: learn.
            had_plan = self._planner.has_plan
            self._planner.observe(
                tracked.last_not_done or 0.0, now - tracked.submitted_at, planned=tracked.planned
            )
            if not had_plan and self._planner.has_plan:
                self._replace_fallback_polls(now)

    def _replace_fallback_polls(self, now: float) -> None:
        """The first learned plan is in: bring forward polls placed by the 5 s fallback."""
        for pending in self._pending.values():
            if not pending.timed or pending.next_poll_at == float("inf"):
                continue  # unknown submit time, or a poll in flight
            age = now - pending.submitted_at
            offset = self._planner.next_poll(age, pending.last_not_done, pending.lane)
            if pending.submitted_at + offset < pending.next_poll_at:
                self._schedule(pending, pending.submitted_at + offset)

    def _give_up(self, tracked: _Tracked) -> None:
        del self._pending[tracked.task_id]
        tracked.future.set_exception(
            errors.TaskTimeoutError(
                f"task {tracked.task_id} still unfinished after "
                f"{self._config.give_up_after:g}s; stopped polling it",
                task_id=tracked.task_id,
            )
        )

    def _fail(self, tracked: _Tracked, error: errors.AILabError) -> None:
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
        else:
            failure = errors.TaskFailedError(
                str(error), task_id=tracked.task_id, status=0, code=type(error).__name__
            )
        failure.__cause__ = error if failure is not error else None
        del self._pending[tracked.task_id]
        tracked.future.set_exception(failure)
