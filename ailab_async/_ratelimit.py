"""The in-process rate limiter: a store and a waiting room for the AIMD policy.

What rate to send at is decided in :mod:`ailab_async._aimd` (pure, table-tested); this
module does the rest: it holds one :class:`~ailab_async._aimd.AimdPolicy`, reads the clock,
and makes senders wait their turn, in arrival order, sleeping until the policy grants a slot.
It also defines :class:`RateLimiter`, what the dispatcher needs from any limiter (this one,
or ``ailab_async.contrib.redis.RedisRateLimiter``, the other store of the same policy).

Written here rather than taken from aiolimiter: we need the rate to change while requests
wait (lowered on a 429, recovered gradually), an injectable clock and sleeper so tests never
wait for real, and "one decrease per congestion event" bookkeeping. aiolimiter's leaky bucket
fixes its rate at construction and reads the loop's clock.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from ._aimd import (
    DECREASE_FACTOR,
    MIN_RATE,
    RECOVERY_FRACTION,
    AimdPolicy,
    capped_retry_after,
)

__all__ = ["AdaptiveRateLimiter", "Clock", "RateLimiter", "Sleeper"]

Clock = Callable[[], float]
Sleeper = Callable[[float], Awaitable[None]]

# A waiting sender re-reads the rate at least this often (seconds), so a rate that recovers
# while it waits speeds it up at once.
_RECHECK = 0.05


@runtime_checkable
class RateLimiter(Protocol):
    """What a client's dispatcher needs from a rate limiter (pass one as ``rate_limit=``).

    The dispatcher calls :meth:`acquire` before every API request and reports back: a
    success, or a ``429 EXCEEDING_LIMITS`` for a request that left at ``sent_at`` (the value
    :meth:`acquire` returned, on the limiter's own clock). :class:`AdaptiveRateLimiter` is the
    in-process one; ``ailab_async.contrib.redis.RedisRateLimiter`` shares one budget, and the
    slow-down, between processes.
    """

    #: ``429 EXCEEDING_LIMITS`` answers reported so far.
    rate_limited_count: int

    @property
    def configured_rate(self) -> float | None:
        """The ceiling in requests per second (``None``: none)."""
        ...

    def current_rate(self) -> float | None:
        """Requests per second allowed now (``None``: no limit)."""
        ...

    async def acquire(self) -> float:
        """Wait for the next send slot; return the send time on the limiter's clock."""
        ...

    def on_success(self) -> None:
        """A request was answered without a rate-limit error."""
        ...

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """A request sent at ``sent_at`` was answered ``429 EXCEEDING_LIMITS``."""
        ...


class AdaptiveRateLimiter:
    """Spaces requests to a rate that adapts to the server's 429 answers.

    ``rate`` is the account's limit in requests per second (``None``: none until a 429
    says otherwise); the policy is described in :mod:`ailab_async._aimd`. ``clock`` (seconds,
    default :func:`time.monotonic`) and ``sleep`` (default :func:`asyncio.sleep`) are for
    tests; a limiter built for ``rate_limit=`` needs neither::

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
        backoff_factor: float = DECREASE_FACTOR,
        recovery_fraction: float = RECOVERY_FRACTION,
    ) -> None:
        self._policy = AimdPolicy(
            rate,
            min_rate=min_rate,
            decrease_factor=backoff_factor,
            recovery_fraction=recovery_fraction,
        )
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._queue = asyncio.Lock()
        self.rate_limited_count = 0

    @property
    def configured_rate(self) -> float | None:
        return self._policy.configured

    def current_rate(self, now: float | None = None) -> float | None:
        """Requests per second allowed now (``None``: no limit)."""
        return self._policy.rate(self._clock() if now is None else now)

    async def acquire(self) -> float:
        """Wait for the next send slot; return the time the request may go out."""
        if self._policy.unlimited and not self._queue.locked():
            return self._clock()  # unlimited: the hot path takes no lock and never waits
        async with self._queue:  # senders wait in arrival order
            while True:
                now = self._clock()
                wait = self._policy.claim(now)
                if wait <= 0:
                    return now
                await self._sleep(min(wait, _RECHECK))

    def on_success(self) -> None:
        self._policy.on_success(self._clock())

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """Record a ``429 EXCEEDING_LIMITS`` for a request sent at ``sent_at``.

        ``retry_after`` is taken capped (:func:`~ailab_async._aimd.capped_retry_after`) and,
        by this policy, does not slow the other senders: the refused request's retry waits.
        """
        self.rate_limited_count += 1
        self._policy.on_rate_limited(sent_at, self._clock(), capped_retry_after(retry_after))
