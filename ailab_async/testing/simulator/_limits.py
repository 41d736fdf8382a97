"""Server-side request limits, one class per shape of the limiter zoo.

Pure: no I/O and no clock.  Every call is given the time (``now``, any monotonic scale), so
the same sequence of calls always gives the same answers; tests drive the shapes with plain
numbers.  :func:`server_limit` builds the shape a :class:`~._config.RateLimit` describes; the
simulator keeps one per API key (and one more, server-wide, for ``concurrency_limit``).

A changing rate (``RateLimit.schedule``) is read on the limit's own timeline, which starts at
the first request it sees.  Only accepted requests count toward any limit.

>>> limit = server_limit(RateLimit(2, shape="sliding-window"), random.Random(0))
>>> [limit.admit(t) for t in (0.0, 0.1, 0.2, 1.0)]
[None, None, 0.8, None]
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from ._config import RateLimit

__all__ = ["ServerLimit", "server_limit"]

# Float sums of rate x time land a hair below whole numbers (0.1 * 10 == 0.9999999999999999).
_EPSILON = 1e-9


class ServerLimit(Protocol):
    """One limit as the server applies it to a stream of requests."""

    def admit(self, now: float) -> float | None:
        """Count a request arriving at ``now``.

        ``None``: accepted.  Otherwise refused, and the answer is the seconds after which a
        request would be accepted (``math.inf`` if unknown), the ground for ``Retry-After``.
        """
        ...

    def done(self, now: float) -> None:
        """An *accepted* request finished (only the concurrency shape keeps count)."""
        ...


def server_limit(limit: RateLimit, rng: random.Random) -> ServerLimit:
    """A fresh limiter of ``limit.shape``.

    ``rng`` is for shapes that draw at random; none of the current shapes does, so every
    shape is deterministic given the arrival times.

    >>> bucket = server_limit(RateLimit(1, burst=2), random.Random(0))
    >>> [bucket.admit(0.0), bucket.admit(0.0), bucket.admit(0.0), bucket.admit(0.5)]
    [None, None, 1.0, 0.5]
    """
    del rng  # reserved for randomised shapes
    if limit.shape == "token-bucket":
        return _TokenBucket(limit, limit.burst)
    if limit.shape == "leaky-bucket":
        # A queue-free leaky bucket admits one request per 1/rate: the meter of a token bucket
        # that holds a single token.
        return _TokenBucket(limit, 1)
    if limit.shape == "sliding-window":
        return _SlidingWindow(limit)
    if limit.shape == "fixed-window":
        return _FixedWindow(limit)
    if limit.max_in_flight is None:  # pragma: no cover - RateLimit validates this
        raise ValueError("the concurrency shape needs max_in_flight")
    return _Concurrency(limit.max_in_flight)


class _Timeline:
    """A rate limit's clock and schedule: elapsed time since the first request."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._origin: float | None = None

    def elapsed(self, now: float) -> float:
        """Seconds since the first request (the first call starts the timeline)."""
        if self._origin is None:
            self._origin = now
        return max(0.0, now - self._origin)

    def segments(self, start: float, end: float = math.inf) -> Iterator[tuple[float, float, float]]:
        """``(from, to, rate)`` pieces of constant rate covering ``[start, end)`` (elapsed)."""
        edges = [at for at, _ in self.limit.schedule if start < at < end]
        for low, high in zip([start, *edges], [*edges, end], strict=True):
            if high > low:
                yield low, high, self.limit.rate_at(low)

    def time_to_earn(self, elapsed: float, amount: float) -> float:
        """Seconds from ``elapsed`` until the rate has added up to ``amount`` requests."""
        for low, high, rate in self.segments(elapsed):
            if rate > 0 and rate * (high - low) >= amount - _EPSILON:
                return low - elapsed + max(0.0, amount) / rate
            amount -= rate * (high - low)
        return math.inf

    def until_positive_rate(self, elapsed: float) -> float:
        """Seconds from ``elapsed`` until the rate is above zero (``inf``: never again)."""
        for low, _, rate in self.segments(elapsed):
            if rate > 0:
                return low - elapsed
        return math.inf

    def allowed_per_window(self, elapsed: float) -> int:
        """How many requests a window shape accepts per window at this moment."""
        return math.floor(self.limit.rate_at(elapsed) * self.limit.window + _EPSILON)

    def done(self, now: float) -> None:
        """Rate shapes do not track requests in flight."""


class _TokenBucket(_Timeline):
    """Refills at the (scheduled) rate up to its capacity; each request takes one token.

    ``capacity`` ``None`` follows the rate: ``ceil(rate)`` at each moment.  The bucket starts
    full.
    """

    def __init__(self, limit: RateLimit, capacity: int | None) -> None:
        super().__init__(limit)
        self._capacity = capacity
        self._tokens = 0.0
        self._updated: float | None = None

    def _size(self, rate: float) -> float:
        return float(self._capacity if self._capacity is not None else max(1, math.ceil(rate)))

    def admit(self, now: float) -> float | None:
        elapsed = self.elapsed(now)
        if self._updated is None:
            self._tokens = self._size(self.limit.rate_at(elapsed))
        else:
            for low, high, rate in self.segments(self._updated, elapsed):
                self._tokens = min(self._size(rate), self._tokens + (high - low) * rate)
        self._tokens = min(self._size(self.limit.rate_at(elapsed)), self._tokens)
        self._updated = elapsed
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return None
        return self.time_to_earn(elapsed, 1.0 - self._tokens)


class _SlidingWindow(_Timeline):
    """At most ``floor(rate * window)`` accepted requests in any ``window`` seconds."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__(limit)
        self._accepted: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        elapsed = self.elapsed(now)
        window = self.limit.window
        accepted = self._accepted
        while accepted and accepted[0] <= elapsed - window + _EPSILON:
            accepted.popleft()
        allowed = self.allowed_per_window(elapsed)
        if len(accepted) < allowed:
            accepted.append(elapsed)
            return None
        if allowed == 0:
            return self.until_positive_rate(elapsed)
        # Wait until enough of the oldest acceptances leave the window to make room for one.
        return accepted[len(accepted) - allowed] + window - elapsed


class _FixedWindow(_Timeline):
    """At most ``floor(rate * window)`` accepted requests per window; the counter resets at
    every whole multiple of ``window`` since the first request."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__(limit)
        self._window_index = 0
        self._count = 0

    def admit(self, now: float) -> float | None:
        elapsed = self.elapsed(now)
        window = self.limit.window
        index = math.floor(elapsed / window + _EPSILON)
        if index != self._window_index:
            self._window_index, self._count = index, 0
        if self._count < self.allowed_per_window(elapsed):
            self._count += 1
            return None
        next_window = (index + 1) * window - elapsed
        return max(next_window, self.until_positive_rate(elapsed))


class _Concurrency:
    """At most ``max_in_flight`` accepted requests not yet done."""

    def __init__(self, max_in_flight: int) -> None:
        self._max_in_flight = max_in_flight
        self._in_flight = 0

    def admit(self, now: float) -> float | None:
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            return None
        return math.inf  # depends on when the others finish: unknown

    def done(self, now: float) -> None:
        self._in_flight = max(0, self._in_flight - 1)
