"""The adaptive request-rate limiter shared by every endpoint of one client.

Written here rather than taken from aiolimiter: we need the rate to change while requests
wait (lowered on a 429, recovered gradually), an injected clock and sleeper so tests never
wait for real, and "one decrease per congestion event" bookkeeping. aiolimiter's leaky bucket
fixes its rate at construction and reads the loop's clock.

The policy is AIMD, as in TCP congestion control:

* sends are spaced ``1 / rate`` apart, in arrival order (no bursts, so even a server that
  allows no burst at all holds); a waiting sender re-reads the rate as it waits, so a rate
  that recovers speeds up the queue at once; a configured ``rate_limit`` is paced at 97 %,
  so send-time jitter does not trip a server that allows no burst;
* on ``429 EXCEEDING_LIMITS`` for a request sent after the last slow-down, the rate drops to
  90 % of the rate that was *succeeding* since sending resumed (the best estimate of the
  account's limit) when there is enough evidence (10 successes), else to 90 % of the rate in
  force when the refused request left; 429s for requests sent before the slow-down are the
  same congestion event and change nothing;
* refused before anything succeeded (an unknown limit), it restarts at one request per
  round trip and doubles every quarter second (slow start) until the next 429, which settles
  it at 90 % of the rate that 429 refused;
* with no 429s the rate grows back linearly (5 % of the lowered rate per second), to the
  configured ``rate_limit`` if one was given, without a ceiling otherwise.

A ``Retry-After`` is honoured by the retry of the refused request (the dispatcher waits at
least that long); it does not stall every other sender, whose pace the lower rate sets.
Limiters take a server's ``Retry-After`` only through :func:`capped_retry_after`: at most
:data:`MAX_RETRY_AFTER` seconds, and nothing if it is not a finite, non-negative number (a
broken or hostile server must not pause a whole deployment for years).
"""

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from ._protocol import MAX_RETRY_AFTER
from .errors import ConfigurationError

Clock = Callable[[], float]
Sleeper = Callable[[float], Awaitable[None]]


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


_WINDOW = 1.0  # seconds of history used to estimate the achievable rate
_MIN_EVIDENCE = 10  # successes needed before the success rate is trusted as an estimate
_RECHECK = 0.05  # a waiting sender re-reads the rate at least this often (seconds)
_SLOW_START_DOUBLING = 0.25  # seconds per doubling while probing an unknown limit
# A configured limit is paced a little under: sends land with jitter, and a server that
# allows no burst refuses a request that arrives a millisecond early.
_HEADROOM = 0.97


def capped_retry_after(retry_after: object) -> float | None:
    """A server's ``Retry-After`` made safe to act on: ``None`` unless it is a finite,
    non-negative number; at most :data:`MAX_RETRY_AFTER`.

    >>> capped_retry_after(3), capped_retry_after(1e9), capped_retry_after(float("nan"))
    (3.0, 120.0, None)
    """
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
        return None
    if not 0 <= retry_after < math.inf:
        return None
    return min(float(retry_after), MAX_RETRY_AFTER)


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
        recovery_fraction: float = 0.05,
    ) -> None:
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf
        ):
            raise ConfigurationError(
                "rate_limit must be a positive, finite number of requests per second "
                "(None: no limit)"
            )
        self._configured = rate
        self._ceiling = None if rate is None else rate * _HEADROOM
        rate = self._ceiling
        self._clock = clock
        self._sleep = sleep
        self._min_rate = min_rate
        self._backoff_factor = backoff_factor
        self._recovery_fraction = recovery_fraction
        # The rate set at the last decrease, when that was, and how it grows from there.
        self._base_rate: float | None = rate
        self._decreased_at: float | None = None
        self._slow_start = False
        self._recovery_per_s = 0.0
        # Successes count as evidence only from here (one round trip after a decrease).
        self._evidence_from = float("-inf")
        self._last_slot = float("-inf")
        self._last_sent = float("-inf")
        self._queue = asyncio.Lock()
        self._successes: collections.deque[float] = collections.deque()
        self.rate_limited_count = 0

    @property
    def configured_rate(self) -> float | None:
        return self._configured

    def current_rate(self, now: float | None = None) -> float | None:
        """Requests per second allowed now (``None``: no limit)."""
        if self._base_rate is None:
            return None
        if self._decreased_at is None:
            return self._base_rate
        now = self._clock() if now is None else now
        elapsed = max(0.0, now - self._decreased_at)
        if self._slow_start:
            rate = self._base_rate * float(2.0 ** min(64.0, elapsed / _SLOW_START_DOUBLING))
        else:
            rate = self._base_rate + self._recovery_per_s * elapsed
        return rate if self._ceiling is None else min(rate, self._ceiling)

    def _take_slot(self, now: float) -> float | None:
        """The slot time if one is free now (and book it); ``None`` if the sender must wait."""
        rate = self.current_rate(now)
        if rate is None:
            self._last_slot = now
            return now
        spacing = 1.0 / rate
        # Keep to the schedule so wake-up delays do not add up, but never send two requests
        # closer than the headroom allows (a catch-up after a late wake-up would trip a
        # server that allows no burst).
        slot = max(self._last_slot + spacing, self._last_sent + spacing * _HEADROOM)
        if slot > now:
            return None
        # Idle for longer than one spacing: start the schedule afresh from now.
        self._last_slot = slot if now - slot < spacing else now
        self._last_sent = now
        return now

    async def acquire(self) -> float:
        """Wait for the next send slot; return the time the request may go out."""
        if self._base_rate is None and not self._queue.locked():
            return self._clock()  # unlimited: the hot path takes no lock and never waits
        async with self._queue:  # senders wait in arrival order
            while True:
                now = self._clock()
                if self._take_slot(now) is not None:
                    return now
                rate = self.current_rate(now)
                assert rate is not None
                spacing = 1.0 / rate
                wait = max(self._last_slot + spacing, self._last_sent + spacing * _HEADROOM) - now
                await self._sleep(min(wait, _RECHECK))

    def on_success(self) -> None:
        now = self._clock()
        self._successes.append(now)
        while self._successes and self._successes[0] < now - _WINDOW:
            self._successes.popleft()

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """Record a ``429 EXCEEDING_LIMITS`` for a request sent at ``sent_at``.

        ``retry_after`` is accepted for the protocol and deliberately ignored: the refused
        request's own retry honours it (capped), the shared pace is set by the lowered rate,
        so no ``Retry-After``, however large, stalls the other senders.
        """
        self.rate_limited_count += 1
        now = self._clock()
        if self._decreased_at is not None and sent_at < self._decreased_at:
            return  # this request left before we slowed down: same congestion event
        in_force = self.current_rate(sent_at)
        since = max(now - _WINDOW, self._evidence_from)
        evidence = [t for t in self._successes if t >= since]
        slow_start = False
        if self._slow_start and in_force is not None:
            # Probing ramped the rate up: successes averaged over the ramp underestimate the
            # limit, the rate that was just refused does not.
            new_rate = self._backoff_factor * in_force
        elif len(evidence) >= _MIN_EVIDENCE and now > since:
            new_rate = self._backoff_factor * len(evidence) / (now - since)
            if in_force is not None:
                new_rate = min(new_rate, self._backoff_factor * in_force)
        elif in_force is not None:
            new_rate = self._backoff_factor * in_force
        else:
            # Refused before we knew anything: one request per round trip, then probe upward.
            new_rate = 1.0 / max(now - sent_at, 0.01)
            slow_start = True
        new_rate = max(self._min_rate, new_rate)
        if self._ceiling is not None:
            new_rate = min(new_rate, self._ceiling)
        self._base_rate = new_rate
        self._decreased_at = now
        self._slow_start = slow_start
        self._recovery_per_s = max(0.05, self._recovery_fraction * new_rate)
        self._evidence_from = now + max(0.0, now - sent_at)
