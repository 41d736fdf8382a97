"""The Redis-shared rate limiter: the shared budget's store, and this process's fallback.

:class:`RedisRateLimiter` does the moving parts around :class:`~._budget.SharedBudget`
(whose transactions run the policy of :mod:`ailab_async._aimd` on the shared state): it
turns each ``acquire`` into a reservation of a slot a little ahead and a local sleep (one
booker per process makes the reservations, in turn, for the senders queued in it: however
many senders a process runs, it has one transaction in flight, so the processes' optimistic
transactions do not keep undoing each other), batches success and release reports into the
next call, reports 429s in the background,
and, while Redis is unreachable, hands the same calls to a local
:class:`~ailab_async.AdaptiveRateLimiter` at ``fallback_rate``, probing Redis in the
background until it can switch back. Data flows: dispatcher -> this limiter -> one
transaction (or the fallback) -> a send time back to the dispatcher.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import attrs
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..._aimd import BACKOFF, MIN_RATE, capped_retry_after
from ..._ratelimit import AdaptiveRateLimiter, Sleeper
from ...errors import ClientClosedError, ConfigurationError
from ...models import Secret
from ._budget import Decision, Report, SharedBudget
from ._connection import connect, settings_problem

__all__ = ["RedisRateLimiter"]

logger = logging.getLogger("ailab_async")

T = TypeVar("T")

#: What "Redis is unavailable" looks like: redis-py's errors (connection, timeout, auth,
#: a script or server error), the OS's, and our own deadline around each call.
_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)
#: How far ahead a sender books its slot (seconds): a reservation costs a round trip, so it
#: is made a little before the slot is due, and the sender sleeps until then.
_HORIZON = 0.1
#: A shared window that is full (a request in flight must be released first, by any
#: process) is looked at again after this long (a look reads, and writes only now and then:
#: see SharedBudget.reserve); a release of this process's own wakes its booker at once. A
#: slot not yet within the horizon is asked for again after at least this long too.
_LOOK_AGAIN = 0.01
#: Answers not yet told to Redis go with this process's next call, or after this long
#: (seconds) when it makes none ...
_FLUSH_AFTER = 0.1
#: ... but a release goes at once, when no sender of this process is queued (whose booking
#: would carry it), if the shared window held a sender back this recently (seconds, as
#: this process last saw the state): another process may be waiting for that release.
_WINDOW_RECENT = 1.0
#: A process holding requests booked on Redis (not yet released) tells Redis it is alive at
#: least this often (seconds), with nothing else to tell if need be: a process silent for
#: five minutes is taken for dead, and the requests it holds are forgotten (see
#: ``_budget._BOOKED_TTL``), while one request of a live process may take longer than that.
_KEEP_ALIVE = 60.0
#: What the keeper sleeps with between those (tests replace it).
_idle_sleep: Sleeper = asyncio.sleep
#: A booked slot handed to a sender: its time on Redis's clock (``None``: no slot; Redis
#: went away or the limiter closed).
_Slot = float | None
#: How far this machine's clock may drift from Redis's, in seconds per second: a reading of
#: their offset is taken to lose this much precision a second (100 ppm, a poor quartz's).
_DRIFT = 1e-4


@attrs.define
class _ClockOffset:
    """Redis's clock minus this machine's wall clock, as the most precise recent reading
    says: a reading (see :class:`~._budget.Decision`) is good to half the round trip of the
    ``TIME`` command, and loses :data:`_DRIFT` of a second a second; one that disagrees with
    the kept one by more than both their errors (this machine's clock was set) replaces it.

    A send slot is on Redis's clock: a sender sleeps until it by this machine's, so what
    comes after Redis read its clock (the rest of the transaction, the hand-off to the
    sender, each a loaded machine's few milliseconds, and never the same) does not make
    it late. Senders of several processes that miss their slots by different amounts arrive
    closer together than the pace now and then: a server that allows no burst refuses them.
    """

    offset: float = 0.0
    error: float = math.inf
    read_at: float = -math.inf

    def observe(self, offset: float, error: float, read_at: float) -> None:
        """Take the reading ``offset`` (good to ``error``), made at ``read_at`` (this
        machine's clock), if it is better than the one kept, aged, or contradicts it."""
        aged = self.error + _DRIFT * max(0.0, read_at - self.read_at)
        if error <= aged or abs(offset - self.offset) > error + aged:
            self.offset, self.error, self.read_at = offset, error, read_at


class RedisRateLimiter:
    """A :class:`~ailab_async.RateLimiter` whose budget every process with ``name`` shares.

    Arguments:
        redis: A ``redis://`` / ``rediss://`` / ``unix://`` URL (the limiter then owns the
            connection pool, with ``timeout`` socket timeouts and one immediate retry), or a
            ``redis.asyncio.Redis`` you own (give it short socket timeouts: a call that
            takes longer than ``4 * timeout`` counts as Redis being down anyway).
        name: The budget's name: processes using the same name on the same Redis share one
            budget. Use one name per API key. The state lives in the key
            ``{name}:ailab-rate`` (hash-tagged: one cluster slot), expiring after
            ``state_ttl`` seconds unused.
        rate: The account's limit in requests per second, shared by all the processes.
        fallback_rate: This process's own limit while Redis is unreachable. Default
            ``rate / expected_processes``.
        expected_processes: How many processes usually share the budget (sizes the default
            ``fallback_rate``).
        timeout: Socket timeout for Redis, in seconds, when built from a URL.
        reconnect_interval: Seconds between attempts to reach Redis again while degraded.
        state_ttl: Seconds an unused budget survives in Redis.
        sleep: The sleeper used to wait for send slots (tests inject a fake one).
        min_rate, backoff_factor: The rate policy, as in
            :class:`~ailab_async.AdaptiveRateLimiter`.

    Use it as an async context manager, or call :meth:`aclose`; the client that uses it
    does not close it (several clients may share one).
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        name: str,
        rate: float,
        fallback_rate: float | None = None,
        expected_processes: int = 4,
        timeout: float = 0.2,
        reconnect_interval: float = 1.0,
        state_ttl: float = 300.0,
        sleep: Sleeper = asyncio.sleep,
        min_rate: float = MIN_RATE,
        backoff_factor: float = BACKOFF,
    ) -> None:
        # A URL may carry a password: from here on it lives only in a holder whose repr is
        # '***', so a traceback rendered with frame locals never shows it.
        target: Secret[object] = Secret(redis)
        del redis
        problem = settings_problem(
            name=name,
            rate=rate,
            fallback_rate=fallback_rate,
            expected_processes=expected_processes,
            timeout=timeout,
            reconnect_interval=reconnect_interval,
            state_ttl=state_ttl,
            min_rate=min_rate,
            backoff_factor=backoff_factor,
        )
        if problem is not None:
            raise ConfigurationError(problem)
        connection = connect(target, timeout)
        if isinstance(connection, str):
            raise ConfigurationError(connection)
        del target

        self.rate_limited_count = 0
        self._expected_processes = expected_processes
        self._name = name
        self._rate = float(rate)
        self._fallback_rate = float(
            rate / expected_processes if fallback_rate is None else fallback_rate
        )
        self._reconnect_interval = reconnect_interval
        self._call_deadline = 4 * timeout
        self._sleep = sleep
        self._client = connection.client
        self._owns_client = connection.owned
        self._where = connection.where
        self._secrets = connection.secrets
        self._budget = SharedBudget(
            self._client,
            f"{{{name}}}:ailab-rate",
            rate=self._rate,
            min_rate=min_rate,
            backoff_factor=backoff_factor,
            horizon=_HORIZON,
            ttl=state_ttl,
        )
        # Redis time minus local wall time, so that the fallback's clock (and the send times
        # it hands out) stays on the timeline of Redis's, which on_rate_limited compares,
        # and senders sleep until their slots by it.
        self._clock = _ClockOffset()
        self._clock_offset = 0.0
        self._fallback = AdaptiveRateLimiter(
            self._fallback_rate,
            clock=self._local_clock,
            sleep=sleep,
            min_rate=min_rate,
            backoff_factor=backoff_factor,
        )
        self._using_redis = True
        self._shared_rate = self._rate
        # How late a sender may send on its slot, as last seen (see Decision.late_limit).
        self._late_limit = math.inf
        # When the shared window last held a sender back, as last seen (Redis's clock).
        self._window_bound_at = -math.inf
        # Answers not yet told to Redis: (sent_at, answered_at) successes, release times.
        self._pending_successes: list[tuple[float, float]] = []
        self._pending_releases: list[float] = []
        # Send times of the requests let out on a slot booked on Redis and not yet released:
        # only theirs are released on Redis (a request the fallback let out was never counted
        # there), and theirs are, even when answered while Redis is unreachable (it hears
        # once back: a release lost keeps a request in the shared count, see SharedBudget).
        self._booked: collections.Counter[float] = collections.Counter()
        self._flusher: asyncio.Task[None] | None = None
        # Tells Redis this process is alive while it holds requests (see _KEEP_ALIVE).
        self._keeper: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        # Senders waiting for a slot, in arrival order, and the task booking them one by one.
        self._waiting: collections.deque[asyncio.Future[_Slot]] = collections.deque()
        self._booker: asyncio.Task[None] | None = None
        # Set when this process releases a slot booked on Redis: wakes the booker's look.
        self._released = asyncio.Event()
        self._reports: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Times Redis became unreachable / reachable again (for health checks and tests).
        self.degraded_count = 0
        self.recovered_count = 0
        #: Slots given back by senders that woke too late for them (see Decision.late_limit).
        self.late_slots_given_back = 0

    # -- the RateLimiter protocol ----------------------------------------------------------

    @property
    def configured_rate(self) -> float:
        """The shared ceiling in requests per second."""
        return self._rate

    @property
    def fallback_rate(self) -> float:
        """This process's limit while Redis is unreachable."""
        return self._fallback_rate

    @property
    def using_redis(self) -> bool:
        """``True`` while the shared budget is in use, ``False`` while degraded to local."""
        return self._using_redis

    @property
    def key(self) -> str:
        """The Redis key holding the shared state."""
        return self._budget.key

    def current_rate(self) -> float:
        """The rate this process gets now: the shared one as last seen, or the fallback's."""
        if self._using_redis:
            return self._shared_rate
        rate = self._fallback.current_rate()
        return self._fallback_rate if rate is None else rate

    def local_rate(self) -> float:
        """The part of the budget this process can count on (the tracker caps its polls to
        a share of this, not of the whole account's rate)."""
        if self._using_redis:
            return self._shared_rate / self._expected_processes
        return self.current_rate()

    async def acquire(self) -> float:
        """Wait for the next send slot; return its time on Redis's clock (seconds)."""
        if self._closed:
            raise ClientClosedError("the Redis rate limiter is closed")
        given_back = False
        while self._using_redis:
            send_at = await self._queue_for_slot(first=given_back)
            if send_at is None:
                break
            wait = send_at - self._local_clock()  # see _ClockOffset
            if wait > 0:
                try:
                    await self._sleep(wait)
                except asyncio.CancelledError:
                    self._unbook()  # booked, never sent: not in flight
                    raise
            if not given_back and self._local_clock() - send_at > self._late_limit:
                # Woke too late for it (a server that allows no burst would refuse the next
                # process's send, on time, after this one): given back, and booked again,
                # first in this process's queue. Once per send: an event loop too busy to
                # wake on time for any slot would otherwise never send at all.
                given_back = True
                self.late_slots_given_back += 1
                self._unbook()
                continue
            self._booked[send_at] += 1
            if self._keeper is None:
                self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())
                self._keeper.add_done_callback(self._report_done)  # a bug in it is logged
            return send_at
        if self._closed:
            raise ClientClosedError("the Redis rate limiter is closed")
        return await self._fallback.acquire()

    def on_success(self, sent_at: float) -> None:
        """Count a success; it reaches Redis with the next call, or within 0.1 s."""
        # The fallback learns too, so a 429 right after a switch is judged against what was
        # really succeeding.
        self._fallback.on_success(sent_at)
        self._queue_report(successes=[(sent_at, self._local_clock())])

    def release(self, sent_at: float) -> None:
        """The request sent at ``sent_at`` is over; Redis hears it with the next call (at
        once, if the shared window held a sender back lately and no sender here is queued)."""
        booked = self._booked.get(sent_at, 0)
        if not booked:  # the fallback let it out: over in its count only
            self._fallback.release(sent_at)
            return
        # Let out on a slot booked on Redis: over there (the fallback never counted it).
        if booked == 1:
            del self._booked[sent_at]
        else:
            self._booked[sent_at] = booked - 1
        self._queue_report(releases=[self._local_clock()])
        self._released.set()  # room, maybe: the booker looks at once

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """Report a ``429`` to every process sharing the budget (in the background).

        A ``Retry-After`` pauses every process, so it is taken capped (at most
        :data:`~ailab_async._protocol.MAX_RETRY_AFTER` seconds; ignored unless a finite,
        non-negative number): one broken answer must not stall a deployment for years.
        """
        retry_after = capped_retry_after(retry_after)
        self.rate_limited_count += 1
        if self._using_redis and not self._closed:
            report = self._take_report()
            task = self._spawn(self._report_rate_limited(sent_at, retry_after, report))
            if task is not None:
                return
            self._keep(report)
        self._fallback.on_rate_limited(sent_at, retry_after)

    # -- lifecycle ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send pending reports and wait for the 429 reports in flight."""
        if self._using_redis and not self._closed:
            report = self._take_report()
            if report.successes or report.releases or self._budget.in_doubt:
                await self._send_report(report)
        while self._reports:
            await asyncio.gather(*self._reports, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish the reports in flight, release on Redis what this process still holds
        (slots booked, requests in flight), stop reconnecting, close the pool if it is
        ours."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        background = (self._flusher, self._reconnector, self._booker, self._keeper)
        for task in background:
            if task is not None:
                task.cancel()
        pending = [t for t in (*background, *self._reports) if t]
        await asyncio.gather(*pending, return_exceptions=True)
        self._wake_waiting()  # a booker cancelled before it ran woke no one
        if self._using_redis:
            # Else they stay counted until the budget forgets a silent process's slots.
            report = self._take_report()
            with contextlib.suppress(*_UNAVAILABLE):
                await self._call(self._budget.leave(report))
        if self._owns_client:
            await self._client.aclose()

    # The async-with protocol over aclose(), the same few lines as every closable class
    # here (the journal, the client, the simulator): protocol, not repeated knowledge.
    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        # Safe on a half-built limiter too: a traceback rendered with frame locals calls it.
        fields = ("_where", "_name", "_rate", "_fallback_rate", "_using_redis")
        where, name, rate, fallback, using = (getattr(self, f, "?") for f in fields)
        return (
            f"RedisRateLimiter(redis={where!r}, name={name!r}, rate={rate!r}, "
            f"fallback_rate={fallback!r}, using_redis={using})"
        )

    # -- internals ---------------------------------------------------------------------------

    async def _queue_for_slot(self, *, first: bool = False) -> _Slot:
        """Wait in this process's queue (at its head if ``first``: a sender that gave its
        slot back) for the booker to reserve a slot for this sender."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Slot] = loop.create_future()
        if first:
            self._waiting.appendleft(waiter)
        else:
            self._waiting.append(waiter)
        if self._booker is None:
            self._booker = loop.create_task(self._book())
            self._booker.add_done_callback(self._report_done)  # a bug in it is logged
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self._unbook()  # handed a slot as it was cancelled: give it back
            raise

    async def _book(self) -> None:
        """Reserve slots for the queued senders, first come first served, one transaction
        at a time (Redis's optimistic transactions, many at once on one key, mostly run
        again: sixteen senders a process, four processes, and calls took 0.1-0.8 s, past the
        deadline that counts Redis as down); hand each its slot as soon as it is booked."""
        try:
            while self._using_redis and not self._closed:
                if self._next_waiting() is None:
                    return
                self._released.clear()  # a release from here on wakes the next look
                report = self._take_report()
                try:
                    decision = await self._call(self._budget.reserve(report))
                except _UNAVAILABLE as exc:  # its report is the budget's to settle
                    self._degrade(exc)
                    return
                self._observe(decision)
                if decision.booked:
                    waiter = self._next_waiting()
                    if waiter is None:  # its sender went meanwhile: the slot is not used
                        self._unbook()
                    else:
                        self._waiting.popleft()
                        waiter.set_result(decision.send_at)
                    continue
                if math.isinf(decision.wait):
                    # The shared window is full: look again shortly (a release may come from
                    # any process), or at once on a release of this process's own.
                    await self._look_again()
                    continue
                # Not yet: ask again when the slot is within the horizon.
                await self._sleep(max(_LOOK_AGAIN, decision.wait - _HORIZON / 2))
        finally:
            self._wake_waiting()

    async def _look_again(self) -> None:
        """Wait ``_LOOK_AGAIN``, or less: until this process releases a request (its booker
        then tells the release and books in one transaction)."""
        released = asyncio.ensure_future(self._released.wait())
        sleeper = asyncio.ensure_future(self._sleep(_LOOK_AGAIN))
        try:
            await asyncio.wait({released, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            sleeper.cancel()

    def _next_waiting(self) -> asyncio.Future[_Slot] | None:
        """The first sender still queued (those cancelled meanwhile are dropped), if any."""
        while self._waiting and self._waiting[0].done():
            self._waiting.popleft()
        return self._waiting[0] if self._waiting else None

    def _unbook(self) -> None:
        """A slot booked and never sent (its sender was cancelled): Redis hears that it is
        not in flight with the next call, as of a request released now."""
        self._queue_report(releases=[self._local_clock()])
        self._released.set()

    def _wake_waiting(self) -> None:
        """Redis went away or the limiter closed: nothing is booked for the senders still
        queued; they go to the fallback, or raise :class:`ClientClosedError`."""
        self._booker = None
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _local_clock(self) -> float:
        return time.time() + self._clock_offset

    async def _call(self, operation: Awaitable[T]) -> T:
        # redis-py disconnects a connection whose command is cancelled, so this deadline is
        # safe; with our own pool the socket timeouts fire first.
        return await asyncio.wait_for(operation, self._call_deadline)

    def _observe(self, decision: Decision) -> None:
        self._shared_rate = decision.rate
        self._late_limit = decision.late_limit
        self._window_bound_at = max(self._window_bound_at, decision.window_bound_at)
        if decision.read_at is None:  # Redis's clock given (tests): read at its answer
            now = time.time()
            self._clock.observe(decision.now - now, math.inf, now)
        else:
            self._clock.observe(
                decision.now - decision.read_at, decision.read_error, decision.read_at
            )
        self._clock_offset = self._clock.offset

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: nothing to run it on
            work.close()
            return None
        task = loop.create_task(work)
        self._reports.add(task)
        task.add_done_callback(self._report_done)
        return task

    def _report_done(self, task: asyncio.Task[None]) -> None:
        self._reports.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Unavailability is handled inside; anything else is a bug worth a traceback.
            logger.error(
                "shared rate limit %r: a background report failed", self._name, exc_info=exc
            )

    def _queue_report(
        self,
        *,
        successes: list[tuple[float, float]] | None = None,
        releases: list[float] | None = None,
    ) -> None:
        if self._closed:
            return
        # Releases wait out an outage (each is a request Redis counts in flight: lost, it
        # stays in the shared count, and the stale reset needs ten seconds without a
        # release from any process); successes only teach the round trip, and are dropped.
        self._pending_releases += releases or []
        if not self._using_redis:
            return
        self._pending_successes += successes or []
        if (
            releases
            and self._booker is None
            and self._local_clock() - self._window_bound_at < _WINDOW_RECENT
        ):
            report = self._take_report()
            if self._spawn(self._send_report(report)) is None:
                self._keep(report)
        elif self._flusher is None:
            self._flusher = self._spawn(self._flush_soon())

    def _keep(self, report: Report) -> None:
        """``report`` was taken for a call that could not start (no event loop to run it
        on): its releases go with the next call. (A call that started and failed leaves
        its report to the budget, which knows whether Redis applied it: see
        :class:`~._budget.SharedBudget`.)"""
        if not self._closed:
            self._pending_releases[:0] = report.releases

    def _take_report(self) -> Report:
        report = Report(self._pending_successes, self._pending_releases)
        self._pending_successes, self._pending_releases = [], []
        return report

    async def _flush_soon(self) -> None:
        try:
            # Under load the next reservation carries the reports; this covers idle spells.
            await asyncio.sleep(_FLUSH_AFTER)
        finally:
            self._flusher = None
        if not self._using_redis or self._closed:
            return  # the releases pending wait for Redis to be back
        report = self._take_report()
        if report.successes or report.releases or self._budget.in_doubt:
            await self._send_report(report)

    async def _keep_alive(self) -> None:
        """While this process holds requests booked on Redis, tell Redis every
        :data:`_KEEP_ALIVE` seconds (what is pending, or nothing: the transaction notes that
        this process still holds them)."""
        try:
            while self._booked and not self._closed:
                await _idle_sleep(_KEEP_ALIVE)
                if self._booked and self._using_redis and not self._closed:
                    await self._send_report(self._take_report())
        finally:
            self._keeper = None

    async def _send_report(self, report: Report) -> None:
        try:
            self._observe(await self._call(self._budget.report(report)))
        except _UNAVAILABLE as exc:  # its report is the budget's to settle
            self._degrade(exc)

    async def _report_rate_limited(
        self, sent_at: float, retry_after: float | None, report: Report
    ) -> None:
        try:
            decision = await self._call(self._budget.rate_limited(sent_at, retry_after, report))
        except _UNAVAILABLE as exc:  # its report is the budget's to settle
            self._degrade(exc)
            self._fallback.on_rate_limited(sent_at, retry_after)
        else:
            self._observe(decision)

    def _degrade(self, exc: BaseException) -> None:
        if not self._using_redis or self._closed:
            return
        self._using_redis = False
        self.degraded_count += 1
        logger.warning(
            "shared rate limit %r: Redis at %s is unreachable (%s); limiting this process "
            "alone to %.3g requests/s until it is back",
            self._name,
            self._where,
            self._describe(exc),
            self._fallback_rate,
        )
        self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(self._reconnect_interval)
            try:
                decision = await self._call(self._budget.peek())
            except _UNAVAILABLE:
                continue
            self._observe(decision)
            self._using_redis = True
            self.recovered_count += 1
            self._reconnector = None
            # The releases kept through the outage, and the calls left in doubt: told and
            # settled soon.
            self._queue_report()
            logger.warning(
                "shared rate limit %r: Redis at %s is reachable again; using the shared "
                "budget (%.3g requests/s now)",
                self._name,
                self._where,
                decision.rate,
            )
            return

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
