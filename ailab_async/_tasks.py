"""A task as users hold it (:class:`TaskHandle`) and as the tracker keeps it.

A smart-beauty task's handle gives an :class:`~ailab_async.ImageResult`; a task of any
other endpoint (``AILabClient.submit_task``), a :class:`~ailab_async.RawResult`: the handle
is generic in its result, and the record carries the function that reads a poll's answer.

:class:`TrackedTask` is the task tracker's record of one pending task: its poll schedule
state and the one shared future every waiter awaits. :class:`TaskHandle` is the user's view
of that record: its state, and waiting for its result with a timeout on the client's
(injectable) sleeper. The tracker (:mod:`._tracker`) writes the record; the handle only reads
it. Waiters await the future through ``asyncio.shield``, so cancelling one waiter cancels only
that wait.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Generator
from typing import Any, Generic

import attrs
from typing_extensions import TypeVar

from . import errors
from ._aio import cancel_and_wait
from ._dispatch import Call
from ._endpoints import QUERY_TASK
from ._polling import PollPlanner
from ._protocol import Envelope
from ._ratelimit import Sleeper
from .models import ImageResult, TaskStatus

#: What a task gives when it succeeds (a bare ``TaskHandle`` is a smart-beauty one).
ResultT = TypeVar("ResultT", default=ImageResult)

#: Reads a successful poll answer: the task's result, its state, or what is wrong with it.
PollReader = Callable[[Envelope, str], object]


def timeout_problem(value: object) -> str | None:
    """Why ``value`` is not a usable wait timeout (seconds >= 0, or ``None``); ``None`` if
    it is. Zero means "check without waiting"; infinity, "no limit".

    >>> timeout_problem(0), timeout_problem(None), timeout_problem(-1)
    (None, None, 'must be >= 0 seconds (0: check without waiting), got -1')
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds or None, got {type(value).__name__}"
    if math.isnan(value) or value < 0:
        return f"must be >= 0 seconds (0: check without waiting), got {value!r}"
    return None


async def wait_or_sleep(awaited: asyncio.Future[Any], seconds: float, sleep: Sleeper) -> None:
    """Return once ``awaited`` is done or ``sleep(seconds)`` has returned, whichever is
    first; the other is cancelled (so pass a future of your own: a shield, a waiter task).

    Not ``asyncio.wait_for``: the sleeper is the client's, which tests replace with a fake
    clock, so no test ever waits for real time.
    """
    timer: asyncio.Future[None] = asyncio.ensure_future(sleep(seconds))
    try:
        await asyncio.wait({awaited, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Never ``suppress(CancelledError)`` around these awaits: it would swallow a
        # cancellation aimed at the caller (see _aio.cancel_and_wait).
        await cancel_and_wait(awaited, timer)
        if awaited.done() and not awaited.cancelled():
            awaited.exception()  # retrieved: no "exception was never retrieved" at GC


def _new_future() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    # Retrieve a stored exception so a task nobody awaits never warns "never retrieved".
    future.add_done_callback(_consume_exception)
    return future


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@attrs.define(eq=False, kw_only=True)
class TrackedTask:
    """The tracker's record of one pending task (create it inside the event loop)."""

    task_id: str
    #: When it was submitted, on the tracker's clock (taken as now if unknown).
    submitted_at: float
    #: When this tracker took it on: the give-up clock runs from here, not from submit.
    tracked_at: float
    #: Whether ``submitted_at`` is known (fresh submit, or given): polls are placed by plan.
    timed: bool
    #: Submitted by this client just now: its whole life is ours to observe, so only its
    #: evidence teaches the planner.
    fresh: bool
    #: The task's draw in [0, 1) that picks its poll schedule (see PollPlanner).
    lane: float
    #: Reads its poll answers (``_polling.read_poll`` for smart-beauty).
    read: PollReader
    #: Places its polls and learns from it: one per kind of task (endpoint).
    planner: PollPlanner
    #: Polls the plan that placed it expected it to take (``None``: placed by no plan).
    expected_polls: float | None = None
    #: Its state as last polled.
    status: TaskStatus = TaskStatus.QUEUED
    #: Offset (after submit) of the last poll that saw it unfinished.
    last_not_done: float | None = None
    #: When its next poll is due (infinity while a poll is in flight).
    next_poll_at: float = 0.0
    polls: int = 0
    #: Transient poll failures in a row, and the last one (for the give-up message).
    failures: int = 0
    last_error: str | None = None
    #: The API code of those failures, and how many in a row carried it.
    failure_code: str = ""
    same_code_failures: int = 0
    #: The outcome every waiter awaits.
    future: asyncio.Future[Any] = attrs.field(init=False, factory=_new_future)
    #: Its poll (the id as the server gave it, not re-validated: a task we paid for must be
    #: pollable whatever its id looks like), made once.
    poll: Call = attrs.field(init=False)

    @poll.default
    def _poll(self) -> Call:
        return Call(QUERY_TASK, (("task_id", self.task_id),))


class TaskHandle(Generic[ResultT]):
    """A task: await it for its result. A smart-beauty task gives an
    :class:`~ailab_async.ImageResult`; one of :meth:`AILabClient.submit_task`
    (``TaskHandle[RawResult]``), a :class:`~ailab_async.RawResult`.

    ``task_id`` is what you paid for: persist it, and pick the task up later with
    ``client.track(task_id)`` (``client.track_task(task_id)`` for other endpoints) if your
    process stops.

    >>> task = await client.submit_smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
    >>> result = await task  # doctest: +SKIP
    """

    __slots__ = ("__weakref__", "_future", "_sleep", "_timeout", "_tracked", "task_id")

    def __init__(self, tracked: TrackedTask, timeout: float | None, sleep: Sleeper) -> None:
        self.task_id = tracked.task_id
        self._tracked = tracked
        self._future = tracked.future
        self._timeout = timeout
        self._sleep = sleep

    @property
    def status(self) -> TaskStatus:
        """``QUEUED``/``PROCESSING`` as last polled, ``SUCCEEDED``, or ``FAILED`` once it
        ended without a result (await the handle for the reason)."""
        if self._future.done():
            if self._future.cancelled() or self._future.exception() is not None:
                return TaskStatus.FAILED
            return TaskStatus.SUCCEEDED
        return self._tracked.status

    def done(self) -> bool:
        """Whether the task has a result or has failed."""
        return self._future.done()

    async def result(self, timeout: float | None = None) -> ResultT:
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
        problem = timeout_problem(timeout)
        if problem is not None:
            raise errors.ValidationError(f"timeout {problem}", input="timeout", rule="range")
        limit = self._timeout if timeout is None else float(timeout)
        if limit is not None and math.isinf(limit):
            limit = None
        if limit == 0:
            if self._future.done():
                return self._outcome()
            raise errors.TaskTimeoutError(
                f"task {self.task_id} not finished yet (checked without waiting)",
                task_id=self.task_id,
            )
        # shield: cancelling this wait must not cancel the shared future other waiters use.
        waiter = asyncio.shield(self._future)
        if limit is None:
            await waiter
            return self._outcome()
        await wait_or_sleep(waiter, limit, self._sleep)
        if self._future.done():
            return self._outcome()
        raise errors.TaskTimeoutError(
            f"task {self.task_id} not finished after {limit:g}s; it may still finish: "
            "track it again with client.track(task_id)",
            task_id=self.task_id,
        )

    def _outcome(self) -> ResultT:
        """The settled future's result (or its error, raised), typed as this handle's."""
        result: ResultT = self._future.result()
        return result

    def _settled(self) -> bool:
        """Whether the task's outcome is settled for good (for the tracker): a result, or
        the server's word that it failed. Anything else (give-up, a bad key, a closed
        client, a bug) ended only our tracking, and tracking it again starts afresh."""
        if not self._future.done() or self._future.cancelled():
            return False
        error = self._future.exception()
        return error is None or isinstance(error, errors.TaskFailedError)

    def __await__(self) -> Generator[Any, None, ResultT]:
        return self.result().__await__()

    def __repr__(self) -> str:
        return f"TaskHandle(task_id={self.task_id!r}, status={self.status.name.lower()})"
