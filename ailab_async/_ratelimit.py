"""The in-process rate limiter: a store and a waiting room for the rate policy.

What rate to send at is decided in :mod:`ailab_async._aimd` (pure, table-tested); this
module does the rest: it holds one :class:`~ailab_async._aimd.AimdPolicy`, reads the clock,
and makes senders wait their turn, in arrival order, sleeping until the policy grants a slot.
It also defines :class:`RateLimiter`, what the dispatcher needs from any limiter (this one,
or ``ailab_async.contrib.redis.RedisRateLimiter``, the other store of the same policy), and
:func:`limiter_reports`, which lets limiters written for the earlier, smaller protocol keep
working.

Written here rather than taken from aiolimiter: we need the rate to change while requests
wait (cut on a 429, grown back), a window of requests in flight beside it, an injectable clock
and sleeper so tests never wait for real, and a state one policy can share through Redis.
aiolimiter's leaky bucket fixes its rate at construction and reads the loop's clock.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from ._aimd import BACKOFF, MIN_RATE, AimdPolicy, capped_retry_after

__all__ = ["AdaptiveRateLimiter", "Clock", "RateLimiter", "Sleeper", "limiter_reports"]

Clock = Callable[[], float]
Sleeper = Callable[[float], Awaitable[None]]

# A waiting sender re-reads the rate at least this often (seconds), so a rate that grows
# while it waits speeds it up at once.
_RECHECK = 0.05


@runtime_checkable
class RateLimiter(Protocol):
    """What a client's dispatcher needs from a rate limiter (pass one as ``rate_limit=``).

    The dispatcher calls :meth:`acquire` before every API request and reports back, with the
    send time :meth:`acquire` returned (on the limiter's own clock): a success, or a ``429
    EXCEEDING_LIMITS``. A limiter may also define ``release(sent_at)``, called once the
    request is over whatever its outcome (the in-process and Redis limiters use it to keep a
    window of requests in flight); an ``on_success()`` without the send time still works.
    It may define ``try_acquire()`` too: the send time if a slot is free at once, without
    waiting, else ``None`` (the dispatcher then awaits :meth:`acquire`). And it may define
    ``wind_down(requests)``: ``client.map`` calls it once, when its input runs out (the last
    input of the client's maps running at once), with the number of its items still in
    progress (no request will come beyond those and their retries);
    :class:`AdaptiveRateLimiter` then stops probing for more. The Redis limiter has none:
    its budget is shared, and one process's end is not the others'.
    :class:`AdaptiveRateLimiter` is the in-process limiter;
    ``ailab_async.contrib.redis.RedisRateLimiter`` shares one budget between processes.
    """

    #: ``429 EXCEEDING_LIMITS`` answers reported so far.
    rate_limited_count: int

    @property
    def configured_rate(self) -> float | None:
        """The ceiling in requests per second (``None``: none)."""
        ...

    def current_rate(self) -> float | None:
        """Requests per second allowed now (``None``: no limit known)."""
        ...

    async def acquire(self) -> float:
        """Wait for the next send slot; return the send time on the limiter's clock."""
        ...

    def on_success(self, sent_at: float) -> None:
        """The request sent at ``sent_at`` was answered without a rate-limit error."""
        ...

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """The request sent at ``sent_at`` was answered ``429 EXCEEDING_LIMITS``."""
        ...


def limiter_reports(
    limiter: RateLimiter,
) -> tuple[Callable[[float], None], Callable[[float], None]]:
    """``limiter``'s success report and release, both taking the send time.

    A limiter written for the earlier protocol (``on_success()`` without the send time, no
    ``release``) gets adapters, so it keeps working unchanged.
    """
    on_success: Callable[..., None] = limiter.on_success
    try:
        inspect.signature(on_success).bind(0.0)
    except TypeError:
        old_success = on_success

        def on_success(sent_at: float) -> None:
            del sent_at
            old_success()

    except ValueError:  # no signature to read (a builtin): call it as the protocol says
        pass
    release: Callable[[float], None] | None = getattr(limiter, "release", None)
    if not callable(release):

        def release(sent_at: float) -> None:
            del sent_at

    return on_success, release


class AdaptiveRateLimiter:
    """Spaces requests to a rate that adapts to the server's 429 answers.

    ``rate`` is the account's limit in requests per second (``None``: unknown, found from
    the server's answers); the policy is described in :mod:`ailab_async._aimd`. ``clock``
    (seconds, default :func:`time.monotonic`) and ``sleep`` (default :func:`asyncio.sleep`)
    are for tests; a limiter built for ``rate_limit=`` needs neither::

        limiter = AdaptiveRateLimiter(10)
        async with AILabClient(rate_limit=limiter) as client: ...
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Clock | None = None,
        sleep: Sleeper | None = None,
        min_rate: float = MIN_RATE,
        backoff_factor: float = BACKOFF,
    ) -> None:
        self._policy = AimdPolicy(rate, min_rate=min_rate, backoff_factor=backoff_factor)
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._queue = asyncio.Lock()
        self._released: asyncio.Event | None = None
        self.rate_limited_count = 0

    @property
    def configured_rate(self) -> float | None:
        return self._policy.configured

    @property
    def policy(self) -> AimdPolicy:
        """The policy and its state (read it; the limiter drives it)."""
        return self._policy

    def current_rate(self, now: float | None = None) -> float | None:
        """Requests per second allowed now (``None``: no limit known yet, still probing)."""
        if self._policy.configured is None and not self._policy.state.cut:
            return None
        return self._policy.rate(self._clock() if now is None else now)

    def pace(self) -> float:
        """The pace requests are sent at now, probing included (requests per second)."""
        return self._policy.rate(self._clock())

    def try_acquire(self) -> float | None:
        """The send time if the pace allows a request at once (nobody waiting before it),
        else ``None``: then :meth:`acquire` waits for the slot."""
        if self._queue.locked():
            return None
        now = self._clock()
        return now if self._policy.claim(now) <= 0 else None

    async def acquire(self) -> float:
        """Wait for the next send slot; return the time the request may go out."""
        free = self.try_acquire()
        if free is not None:
            return free  # the pace allows it at once: no lock, no wait
        async with self._queue:  # senders wait in arrival order
            while True:
                now = self._clock()
                wait = self._policy.claim(now)
                if wait <= 0:
                    return now
                if math.isinf(wait):
                    await self._until_released()
                else:
                    await self._sleep(min(wait, _RECHECK))

    def release(self, sent_at: float) -> None:
        """The request sent at ``sent_at`` is over (whatever its outcome)."""
        del sent_at
        self._policy.release(self._clock())
        if self._released is not None:
            self._released.set()

    def on_success(self, sent_at: float) -> None:
        self._policy.on_success(sent_at, self._clock())

    def wind_down(self, requests: int) -> None:
        """The batch's input ran out with ``requests`` in progress (``client.map`` calls
        this): the pace stops growing until they are accepted, and comes down to what the
        server took if it was well above it (:meth:`~ailab_async._aimd.AimdPolicy.wind_down`).
        """
        self._policy.wind_down(self._clock(), requests)

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """Record a ``429 EXCEEDING_LIMITS`` for a request sent at ``sent_at``.

        ``retry_after`` is taken capped (:func:`~ailab_async._aimd.capped_retry_after`); the
        policy pauses the pace for the part of it that is certain.
        """
        self.rate_limited_count += 1
        self._policy.on_rate_limited(sent_at, self._clock(), capped_retry_after(retry_after))

    async def _until_released(self) -> None:
        """Wait until a request in flight is released (or ``_RECHECK``, to look again)."""
        if self._released is None:
            self._released = asyncio.Event()
        released = self._released
        released.clear()
        waiter = asyncio.ensure_future(released.wait())
        sleeper = asyncio.ensure_future(self._sleep(_RECHECK))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
