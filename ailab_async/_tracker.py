"""The async task tracker: one scheduler polls every pending task (smart-beauty, or a task
of any other endpoint submitted with ``AILabClient.submit_task``).

One asyncio task (the scheduler) knows each pending task's next poll time (a heap). When
polls fall due (on the real clock, a timer handle launches them without waking it) a few
long-lived worker tasks send them concurrently through the client's dispatcher (no task per
poll), so polls share the concurrency and rate budget with everything else; a configurable
share caps how much of that budget polls may take. It starts with the first tracked task,
ends when none are left, and :meth:`TaskTracker.aclose` stops it and answers every waiter.

Polls are free; the tasks behind them were paid for. So a task ends only on a definite
answer about it (a result, ``task_status`` outside 0-2, an error about the task such as
``ERROR_NO_FACE_IN_FILE`` or an unknown id): transient poll failures are retried until the
task's give-up time, and a task ended for a reason that is not its own (a bad key, give-up,
the client closing, a bug) answers its waiters with that error, never ``TaskFailedError``,
and can be tracked again.

This module does the moving (the heap, the scheduler task, sending polls, settling
futures). Every decision about a poll (what an answer means, when to poll next, what a
finished task teaches) is made by the pure functions of :mod:`._polling`; the handle and the
per-task record live in :mod:`._tasks`. Data flows: ``track()`` -> a record in the heap ->
a poll through the dispatcher -> the record's reader (:func:`~._polling.read_poll`, or
:func:`~._polling.read_raw_poll` for other endpoints) -> the record's future, which the
handle's waiters await. Each kind of task (smart-beauty; each other endpoint) has its own
planner, since each takes its own time; all share the one scheduler and poll budget.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import logging
import math
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from . import errors, events
from ._aio import cancel_and_wait
from ._config import checked_submitted_at
from ._dispatch import Dispatcher
from ._polling import (
    PollingConfig,
    PollPlanner,
    PollVerdict,
    classify_poll_error,
    completion_evidence,
    poll_retry_delay,
    poll_spacing,
    read_poll,
    read_raw_poll,
    retry_after_of,
    task_failure,
)
from ._ratelimit import Clock, RateLimiter, Sleeper
from ._tasks import TaskHandle, TrackedTask, timeout_problem, wait_or_sleep
from .models import TaskStatus, TrackerStats

__all__ = ["TaskTracker"]

logger = logging.getLogger("ailab_async")

_POLL_DEADLINE = 30.0  # one poll, retries included; a slow poll is simply re-scheduled
# On the real clock, polls due this soon go out with the ones due now: one timer and one
# event-loop turn for a group of polls a few hundredths of a second apart, not one for each.
# Polls launched together are next due together, so a crowd of tasks whose first polls were
# spread out (by the rate limiter's start) settles into a few groups, and each poll costs
# less CPU (``bench_overhead``'s polling part: 50 ms cost 8-23 % less CPU per poll than
# 25 ms with 200 tasks polled twice a second). A poll goes at most this much early, never
# late: against detection lags of about a second, a twentieth of one.
_LAUNCH_SLACK = 0.05
#: Planners kept for tasks of other endpoints (one per path); past this, they share one.
_MAX_PLANNERS = 64


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
        problem = timeout_problem(wait_timeout)
        if problem is not None:
            raise errors.ConfigurationError(f"the default task timeout {problem}")
        if wait_timeout is not None and math.isinf(wait_timeout):
            wait_timeout = None
        self._rand = rand
        self._dispatcher = dispatcher
        self._hooks = dispatcher.hooks
        self._limiter = limiter
        self._config = config
        self._planner = PollPlanner(config)  # smart-beauty's (the one ``stats`` reports)
        self._other_planners: dict[str, PollPlanner] = {}
        self._clock = clock
        self._sleep = sleep
        self._wait_timeout = wait_timeout
        self._pending: dict[str, TrackedTask] = {}
        self._handles: weakref.WeakValueDictionary[str, TaskHandle] = weakref.WeakValueDictionary()
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._wakeup = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Fake clocks in tests see every poll at its exact time.
        self._slack = _LAUNCH_SLACK if sleep is asyncio.sleep else 0.0
        # Polls run on long-lived workers (not a task per poll): a due poll is handed to an
        # idle worker through the future it waits on (``None``: stop), or starts a new one,
        # up to the cap. A future each, not a queue: one C call to hand over a poll.
        self._workers: set[asyncio.Task[None]] = set()
        self._idle_workers: list[asyncio.Future[TrackedTask | None]] = []
        self._polls_in_flight = 0
        self._max_polls_in_flight = max(1, int(max_concurrency * config.poll_share))
        self._next_poll_slot = float("-inf")
        self._closed = False
        self.polls_sent = 0

    # -- the client's calls -------------------------------------------------------------------

    @property
    def planner(self) -> PollPlanner:
        """The poll planner (benchmarks seed it with evidence)."""
        return self._planner

    @property
    def pending(self) -> int:
        """Tasks being polled now."""
        return len(self._pending)

    def stats(self) -> TrackerStats:
        """A snapshot for ``client.tracker``: pending tasks, polls sent, the learned plan."""
        return TrackerStats(
            pending=len(self._pending),
            polls_sent=self.polls_sent,
            plan=self._planner.plan,
            observations=self._planner.observations,
        )

    def track(
        self,
        task_id: str,
        *,
        submitted_at: dt.datetime | None = None,
        fresh: bool = False,
        endpoint: str | None = None,
    ) -> TaskHandle[Any]:
        """The handle of ``task_id``, tracking it if it is not tracked yet.

        A task already tracked, or settled for good (a result, or the server's word that it
        failed), keeps its handle. One whose tracking ended otherwise (gave up, a bad key,
        a closed client, a bug) is tracked afresh: a new handle, polled again.

        ``submitted_at`` (timezone-aware; a time in the future counts as now) places its
        polls; ``fresh`` says this client submitted it just now. ``endpoint``: ``None`` for
        a smart-beauty task, else the path of the endpoint that started it (``""`` if not
        known), whose result is a :class:`~ailab_async.RawResult`.
        """
        if self._closed:
            raise errors.ClientClosedError("this AILabClient is closed; create a new one")
        if not isinstance(task_id, str) or not task_id.strip():
            raise errors.ValidationError(
                "task_id must be a non-empty string", input="task_id", rule="type"
            )
        wall_now = dt.datetime.now(dt.timezone.utc)
        submitted = None if submitted_at is None else checked_submitted_at(submitted_at, wall_now)
        read = read_poll if endpoint is None else read_raw_poll
        handle = self._handles.get(task_id)
        if handle is not None and handle._tracked.read is not read:
            raise errors.ValidationError(
                f"task {task_id} is already tracked as "
                + ("a smart-beauty task" if endpoint is not None else "a task of another endpoint"),
                input="task_id",
                rule="kind",
            )
        if handle is not None and (task_id in self._pending or handle._settled()):
            return handle
        now = self._clock()
        age = 0.0 if submitted is None else (wall_now - submitted).total_seconds()
        started = now - age
        tracked = TrackedTask(
            task_id=task_id,
            submitted_at=started,
            tracked_at=now,
            timed=fresh or submitted is not None,
            fresh=fresh,
            lane=self._rand(),
            read=read,
            planner=self._planner if endpoint is None else self._planner_for(endpoint),
        )
        self._pending[task_id] = tracked
        handle = TaskHandle(tracked, self._wait_timeout, self._sleep)
        self._handles[task_id] = handle
        # Once nobody holds the handle, nobody can ever read the result: stop polling.
        weakref.finalize(handle, self._forget, tracked)
        # A task submitted just now is placed by the learned plan; one picked up again
        # (unknown or old submit time) is polled at once.
        if fresh:
            tracked.planner.submitted(task_id)
            tracked.expected_polls = tracked.planner.expected_polls(tracked.lane)
        if tracked.timed:
            self._schedule(tracked, started + tracked.planner.next_poll(age, None, tracked.lane))
        else:
            self._schedule(tracked, now)
        self._ensure_scheduler()
        if self._hooks is not None:
            self._hooks.emit(events.TaskTracked(task_id, fresh))
        return handle

    def _planner_for(self, endpoint: str) -> PollPlanner:
        """The planner of another endpoint's tasks (created on first use)."""
        if endpoint not in self._other_planners and len(self._other_planners) >= _MAX_PLANNERS:
            endpoint = ""
        planner = self._other_planners.get(endpoint)
        if planner is None:
            planner = self._other_planners[endpoint] = PollPlanner(self._config)
        return planner

    async def aclose(self) -> None:
        """Stop polling; every pending waiter gets a clear error naming its task."""
        self._closed = True
        await cancel_and_wait(self._scheduler, *self._workers)
        for tracked in self._pending.values():
            if not tracked.future.done():
                tracked.future.set_exception(
                    errors.ClientClosedError(
                        f"the client was closed while task {tracked.task_id} was pending; "
                        "the task goes on remotely: track it again with a new client"
                    )
                )
            self._finished(tracked, "closed", "ClientClosedError")
        for task_id, tracked in self._pending.items():
            tracked.planner.dropped(task_id)
        self._pending.clear()
        self._heap.clear()

    def _forget(self, tracked: TrackedTask) -> None:
        if self._pending.get(tracked.task_id) is tracked:
            del self._pending[tracked.task_id]  # its heap entry goes stale
            tracked.planner.dropped(tracked.task_id)
            tracked.future.cancel()
            self._wakeup.set()
            self._finished(tracked, "abandoned")

    # -- scheduling --------------------------------------------------------------------------

    def _schedule(self, tracked: TrackedTask, at: float) -> None:
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
        return poll_spacing(rate, self._config)

    async def _run(self) -> None:
        try:
            while self._pending and not self._closed:
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
            self._release_idle_workers()

    def _launch_due(self, now: float) -> float | None:
        """Start every poll that is due and allowed; return seconds until the next one."""
        spacing = self._poll_spacing()
        while self._heap:
            at, _, task_id = self._heap[0]
            tracked = self._pending.get(task_id)
            if tracked is None or tracked.next_poll_at != at:
                heapq.heappop(self._heap)  # stale entry: finished or re-scheduled
                continue
            if at > now + self._slack:
                return at - now
            if self._polls_in_flight >= self._max_polls_in_flight:
                return None  # a finishing poll wakes us
            if spacing and self._next_poll_slot > now:
                return self._next_poll_slot - now
            heapq.heappop(self._heap)
            tracked.next_poll_at = float("inf")  # in flight: not in the heap
            self._next_poll_slot = max(now, self._next_poll_slot) + spacing
            self._polls_in_flight += 1
            self._hand_over(tracked)
        return None

    def _hand_over(self, tracked: TrackedTask) -> None:
        """Give a due poll to an idle worker, or to a new one."""
        while self._idle_workers:
            idle = self._idle_workers.pop()  # the last to finish: its frames are warm
            if not idle.done():  # (done: its worker was cancelled)
                idle.set_result(tracked)
                return
        worker = asyncio.get_running_loop().create_task(
            self._work(tracked), name="ailab-async task poller"
        )
        self._workers.add(worker)
        worker.add_done_callback(self._worker_done)

    async def _work(self, tracked: TrackedTask | None) -> None:
        """One worker: send the polls handed to it one after another, waiting idle between
        them, until handed ``None``."""
        loop = asyncio.get_running_loop()
        while tracked is not None:
            try:
                await self._poll_once(tracked)
            except Exception as exc:  # a bug: answer the waiters now, not at their timeout
                self._crash(tracked, exc)
            self._polls_in_flight -= 1
            if self._scheduler is None:
                return  # the scheduler stopped while this poll ran: nothing left to wait for
            if (
                self._polls_in_flight == self._max_polls_in_flight - 1
                or not self._pending
                or self._closed
            ):
                self._wakeup.set()  # the scheduler waits for a free slot, or has no work
            idle: asyncio.Future[TrackedTask | None] = loop.create_future()
            self._idle_workers.append(idle)
            tracked = await idle

    def _on_timer(self) -> None:
        """The real clock's timer (see :meth:`_idle`): launch what is due, set the next."""
        self._timer = None
        try:
            wait = self._launch_due(self._clock())
        except Exception:  # a bug: the scheduler task meets it again and answers everyone
            self._wakeup.set()
            return
        if wait is not None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)

    def _release_idle_workers(self) -> None:
        """The scheduler stopped: idle workers end (busy ones end after their poll)."""
        for idle in self._idle_workers:
            if not idle.done():
                idle.set_result(None)
        self._idle_workers.clear()

    def _worker_done(self, worker: asyncio.Task[None]) -> None:
        self._workers.discard(worker)
        if not worker.cancelled() and worker.exception() is not None:  # pragma: no cover - bug
            logger.error("task poll worker crashed", exc_info=worker.exception())

    async def _idle(self, wait: float | None) -> None:
        """Sleep until ``wait`` passes or something changes (a new task, a finished poll)."""
        if wait is None:
            await self._wakeup.wait()
        elif self._sleep is asyncio.sleep:
            # The real clock: a timer handle launches the due polls itself (no task to
            # create, cancel or switch to); this task wakes only when something changes.
            self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)
            try:
                await self._wakeup.wait()
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
        else:  # an injected sleeper (a fake clock in tests) must do the waiting
            await wait_or_sleep(asyncio.ensure_future(self._wakeup.wait()), wait, self._sleep)

    # -- one poll ------------------------------------------------------------------------------

    async def _poll_once(self, tracked: TrackedTask) -> None:
        task_id = tracked.task_id
        tracked.polls += 1
        self.polls_sent += 1
        outcome: object  # the task's result, its state, or an AILabError
        # The server looked at the task some time between now and the answer: "unfinished"
        # is dated to now and "finished" to the answer, so the interval always holds the
        # true completion time, however long the poll queued.
        poll_started = self._clock()
        try:
            envelope = await self._dispatcher.call(
                tracked.poll, deadline=_POLL_DEADLINE, task_id=task_id
            )
        except errors.AILabError as exc:
            outcome = exc
        else:
            outcome = tracked.read(envelope, task_id)
        if not self._tracking(tracked):
            return
        now = self._clock()
        if self._hooks is not None:
            self._hooks.emit(_polled(tracked, outcome))
        if isinstance(outcome, TaskStatus):
            self._not_done(tracked, outcome, poll_started, now)
        elif isinstance(outcome, errors.AILabError):
            self._poll_failed(tracked, outcome, now)
        else:
            self._succeed(tracked, outcome, now)

    def _tracking(self, tracked: TrackedTask) -> bool:
        return not tracked.future.done() and self._pending.get(tracked.task_id) is tracked

    def _give_up_at(self, tracked: TrackedTask) -> float:
        return tracked.tracked_at + self._config.give_up_after

    def _not_done(
        self, tracked: TrackedTask, status: TaskStatus, poll_started: float, now: float
    ) -> None:
        tracked.failures = tracked.same_code_failures = 0
        tracked.status = status
        tracked.last_not_done = poll_started - tracked.submitted_at
        if tracked.fresh:
            tracked.planner.not_done(tracked.task_id, tracked.last_not_done)
        if now >= self._give_up_at(tracked):
            self._give_up(tracked)
            return
        age = now - tracked.submitted_at
        offset = tracked.planner.next_poll(age, tracked.last_not_done, tracked.lane)
        self._schedule(tracked, tracked.submitted_at + offset)

    def _poll_failed(self, tracked: TrackedTask, error: errors.AILabError, now: float) -> None:
        code = error.code if isinstance(error, errors.APIError) else ""
        if code and code == tracked.failure_code:
            tracked.same_code_failures += 1
        else:
            tracked.failure_code, tracked.same_code_failures = code, 1
        verdict = classify_poll_error(error, in_a_row=tracked.same_code_failures)
        if verdict is PollVerdict.TASK_FAILED:
            self._end(tracked, task_failure(error, tracked.task_id))
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

    def _succeed(self, tracked: TrackedTask, result: object, now: float) -> None:
        del self._pending[tracked.task_id]
        tracked.future.set_result(result)
        evidence = completion_evidence(
            now - tracked.submitted_at, tracked.last_not_done, fresh=tracked.fresh
        )
        if self._hooks is not None:
            lag = None if evidence is None else evidence[1] - evidence[0]
            self._finished(tracked, "succeeded", now=now, detection_lag=lag)
        if evidence is not None and tracked.planner.finished(
            tracked.task_id, evidence[1], tracked.polls, tracked.expected_polls
        ):
            self._replace_pending(now, tracked.planner)

    def _replace_pending(self, now: float, planner: PollPlanner) -> None:
        """A new plan is in: move every pending poll it places to where it now belongs
        (earlier or later), so no task keeps a poll placed by what it knew before."""
        for pending in self._pending.values():
            if pending.planner is not planner:
                continue  # another kind of task: its plan has not changed
            if not pending.timed or pending.next_poll_at == float("inf") or pending.failures:
                continue  # unknown submit time, a poll in flight, or backing off
            if pending.next_poll_at <= now + self._slack:
                # Due already, held back by the poll rate or the slots for polls: it goes as
                # soon as they allow, as the plan that placed it counted. Re-placed from now,
                # it would move to the new plan's next poll after now, and in a burst (many
                # polls due at once, a re-plan every few finishes) each task's schedule would
                # thin out below what the plans expected.
                continue
            age = now - pending.submitted_at
            offset = planner.next_poll(age, pending.last_not_done, pending.lane)
            if pending.submitted_at + offset != pending.next_poll_at:
                self._schedule(pending, pending.submitted_at + offset)

    def _end(self, tracked: TrackedTask, error: BaseException) -> None:
        del self._pending[tracked.task_id]
        tracked.planner.dropped(tracked.task_id)
        tracked.future.set_exception(error)
        self._finished(tracked, _ended_how(error), type(error).__name__)

    def _finished(
        self,
        tracked: TrackedTask,
        outcome: str,
        error_type: str | None = None,
        *,
        now: float | None = None,
        detection_lag: float | None = None,
    ) -> None:
        """Report that ``tracked`` is no longer tracked (only when hooks are installed)."""
        if self._hooks is None:
            return
        duration = (self._clock() if now is None else now) - tracked.submitted_at
        self._hooks.emit(
            events.TaskFinished(
                tracked.task_id,
                outcome,
                tracked.polls,
                duration,
                detection_lag=detection_lag,
                error_type=error_type,
            )
        )

    def _give_up(self, tracked: TrackedTask) -> None:
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

    def _crash(self, tracked: TrackedTask, exc: Exception) -> None:
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
        for tracked in pending:
            tracked.planner.dropped(tracked.task_id)
        self._pending.clear()
        self._heap.clear()
        for tracked in pending:
            if not tracked.future.done():
                tracked.future.set_exception(_internal_error(tracked.task_id, exc))
            self._finished(tracked, "stopped", type(exc).__name__)


def _polled(tracked: TrackedTask, outcome: object) -> events.TaskPolled:
    """The event for a poll's answer: the state seen, or the failure's type (any other
    answer is the task's result)."""
    if isinstance(outcome, TaskStatus):
        return events.TaskPolled(tracked.task_id, tracked.polls, outcome.name.lower())
    if isinstance(outcome, errors.AILabError):
        return events.TaskPolled(tracked.task_id, tracked.polls, "error", type(outcome).__name__)
    return events.TaskPolled(tracked.task_id, tracked.polls, "succeeded")


def _ended_how(error: BaseException) -> str:
    """A ``TaskFinished`` outcome for a task ended by ``error``."""
    if isinstance(error, errors.TaskFailedError):
        return "failed"
    if isinstance(error, errors.TaskTimeoutError):
        return "gave_up"
    return "stopped"


def _internal_error(task_id: str, exc: Exception) -> errors.AILabError:
    error = errors.AILabError(
        f"polling task {task_id} failed unexpectedly ({type(exc).__name__}); this is a "
        "bug, please report it. The task goes on remotely: track it again with "
        "client.track(task_id)"
    )
    error.__cause__ = exc
    error.retryable = True  # tracking it again may well work; the paid task is not lost
    return error
