"""The adaptive request-rate limiter shared by every endpoint of one client.

Written here rather than taken from aiolimiter: we need the rate to change while requests
wait (lowered on a 429, recovered gradually), an injected clock and sleeper so tests never
wait for real, and "one decrease per congestion event" bookkeeping. aiolimiter's leaky bucket
fixes its rate at construction and reads the loop's clock.

The policy is AIMD, as in TCP congestion control:

* sends are spaced ``1 / rate`` apart (no bursts, so a sliding-window server limit holds);
* on ``429 EXCEEDING_LIMITS`` the rate drops to 90 % of the rate that was *succeeding* over
  the last second (the best estimate of the account's limit), or to half if nothing
  succeeded; 429s for requests sent before that drop do not drop it again;
* with no 429s the rate grows back linearly, to the configured ``rate_limit`` if one was
  given, without a ceiling otherwise;
* a ``Retry-After`` pauses every sender, not just the one that was told.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]
Sleeper = Callable[[float], Awaitable[None]]


@runtime_checkable
class RateLimiter(Protocol):
    """What a client's dispatcher needs from a rate limiter (pass one as ``rate_limit=``).

    The dispatcher calls :meth:`acquire` before every API request and reports back: a
    success, or a ``429 EXCEEDING_LIMITS`` for a request that left at ``sent_at`` (the value
    :meth:`acquire` returned, on the limiter's own clock). :class:`AdaptiveRateLimiter` is the
    in-process one; ``ailab_async.redis_limiter.RedisRateLimiter`` shares one budget, and the
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


_WINDOW = 1.0  # seconds of history used to estimate the achievable rate


class AdaptiveRateLimiter:
    """Spaces requests to a rate that adapts to the server's 429 answers."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Clock,
        sleep: Sleeper,
        min_rate: float = 0.2,
        backoff_factor: float = 0.9,
        recovery_fraction: float = 0.02,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("rate_limit must be a positive number of requests per second")
        self._ceiling = rate
        self._clock = clock
        self._sleep = sleep
        self._min_rate = min_rate
        self._backoff_factor = backoff_factor
        self._recovery_fraction = recovery_fraction
        # The rate right after the last decrease, when it happened, and how fast it recovers.
        self._floor_rate: float | None = rate
        self._decreased_at: float | None = None
        self._recovery_per_s = 0.0
        self._next_send_at = float("-inf")
        self._successes: collections.deque[float] = collections.deque()
        self.rate_limited_count = 0

    @property
    def configured_rate(self) -> float | None:
        return self._ceiling

    def current_rate(self, now: float | None = None) -> float | None:
        """Requests per second allowed now (``None``: no limit)."""
        if self._floor_rate is None:
            return None
        if self._decreased_at is None:
            return self._floor_rate
        now = self._clock() if now is None else now
        rate = self._floor_rate + self._recovery_per_s * max(0.0, now - self._decreased_at)
        return rate if self._ceiling is None else min(rate, self._ceiling)

    def reserve(self) -> float:
        """Claim the next send slot; return how long to wait for it (pure bookkeeping)."""
        now = self._clock()
        rate = self.current_rate(now)
        if rate is None:
            wait_until = max(now, self._next_send_at)
        else:
            wait_until = max(now, self._next_send_at)
            self._next_send_at = wait_until + 1.0 / rate
        return wait_until - now

    async def acquire(self) -> float:
        """Wait for the next send slot; return the time the request may go out."""
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)
        return self._clock()

    def on_success(self) -> None:
        now = self._clock()
        self._successes.append(now)
        while self._successes and self._successes[0] < now - _WINDOW:
            self._successes.popleft()

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """Record a ``429 EXCEEDING_LIMITS`` for a request sent at ``sent_at``."""
        self.rate_limited_count += 1
        now = self._clock()
        if retry_after:
            self._next_send_at = max(self._next_send_at, now + retry_after)
        if self._decreased_at is not None and sent_at < self._decreased_at:
            return  # this request left before we slowed down: same congestion event
        while self._successes and self._successes[0] < now - _WINDOW:
            self._successes.popleft()
        succeeding = len(self._successes) / _WINDOW
        current = self.current_rate(now)
        if succeeding > 0:
            new_rate = self._backoff_factor * succeeding
            if current is not None:
                new_rate = min(new_rate, self._backoff_factor * current)
        elif current is not None:
            new_rate = current / 2
        else:
            new_rate = 1.0
        new_rate = max(self._min_rate, new_rate)
        self._floor_rate = new_rate
        self._decreased_at = now
        self._recovery_per_s = max(0.05, self._recovery_fraction * new_rate)
        # Re-space from now at the new rate.
        self._next_send_at = max(self._next_send_at, now + 1.0 / new_rate)
