"""The request-rate policy (AIMD), as a pure state machine: no clock, no sleeping, no I/O.

Every decision about *how fast* to send lives here; times are passed in, so the policy is
tested with tables of events (``tests/test_aimd.py``) and no event loop. Two stores run it:

* :class:`~ailab_async.AdaptiveRateLimiter` (``_ratelimit.py``) keeps one :class:`AimdPolicy`
  in process memory, reads the clock, and queues and sleeps senders until
  :meth:`AimdPolicy.claim` grants a slot;
* ``ailab_async.contrib.redis`` keeps a state shared by many processes in one Redis hash,
  updated by a Lua script (``contrib/redis/_budget.py``) that receives this module's
  constants as arguments rather than spelling them itself.

The policy is AIMD, as in TCP congestion control:

* sends are spaced ``1 / rate`` apart, in arrival order (no bursts, so even a server that
  allows no burst at all holds); a waiting sender re-reads the rate as it waits, so a rate
  that recovers speeds up the queue at once; a configured ``rate_limit`` is paced at
  :data:`HEADROOM` (97 %), so send-time jitter does not trip a server that allows no burst;
* on ``429 EXCEEDING_LIMITS`` for a request sent after the last slow-down, the rate drops to
  :data:`DECREASE_FACTOR` (90 %) of the rate that was *succeeding* over the last
  :data:`EVIDENCE_WINDOW` since sending resumed (the best estimate of the account's limit)
  when there is enough evidence (:data:`MIN_EVIDENCE` successes), else to 90 % of the rate
  in force when the refused request left; 429s for requests sent before the slow-down are
  the same congestion event and change nothing;
* refused before anything succeeded (an unknown limit), it restarts at one request per
  round trip and doubles every :data:`SLOW_START_DOUBLING` seconds (slow start) until the
  next 429, which settles it at 90 % of the rate that 429 refused;
* with no 429s the rate grows back linearly (:data:`RECOVERY_FRACTION`, 5 % of the lowered
  rate, per second, at least :data:`MIN_RECOVERY_PER_S`), to the configured ``rate_limit``
  if one was given, without a ceiling otherwise.

A ``Retry-After`` is honoured by the retry of the refused request (the dispatcher waits at
least that long); it does not stall every other sender, whose pace the lower rate sets.
Stores take a server's ``Retry-After`` only through :func:`capped_retry_after`: at most
``MAX_RETRY_AFTER`` seconds, and nothing if it is not a finite, non-negative number (a
broken or hostile server must not pause a whole deployment for years).

Where the Redis script's policy still differs from this one (the adaptive-control issue
removes these differences; the shared table of cases in ``tests/test_aimd.py``, run against
both the pure policy and the real script, marks the rows where they show ``xfail``):

1. **No headroom.** The script paces at exactly ``rate``; the local policy at 97 % of it.
2. **Slots reserved ahead.** The script books a slot, possibly in the future, and the
   process sleeps until it: one that wakes late sends closer than a spacing to the next
   one. Locally a slot is granted only when due, and two sends are never closer than
   ``HEADROOM / rate``, even when catching up after a late wake-up. (A matter of the
   waiter, not of the rates: the shared table has no row for it.)
3. **Nothing succeeding: halving.** With no success seen, the script drops to
   :data:`SHARED_UNKNOWN_DECREASE` (half) of the rate in force; the local policy to 90 %
   of it, or, with no limit configured (never the case in Redis), to one request per round
   trip, doubling from there (slow start).
4. **Any success is evidence.** The script trusts the succeeding rate from one success on
   (the local policy from :data:`MIN_EVIDENCE`), counts it in two whole-window buckets
   (the previous one pro rata) rather than exact times, and counts successes from before
   the last decrease too (the local policy only one round trip after it).
5. **Rate in force when refused.** The script caps a decrease at 90 % of the rate *now*;
   the local policy at 90 % of the rate when the refused request *left* (no isolated row
   in the shared table yet: the other differences mask it).
6. **A decrease also pushes the schedule.** The script moves the next free slot to at
   least one new spacing after the 429; the local policy keeps its schedule.
7. **Retry-After pauses everyone.** The script pushes the shared schedule back by the
   (capped) ``Retry-After``; the local policy leaves it to the refused request's retry.
8. **Slower recovery.** The script recovers at :data:`SHARED_RECOVERY_FRACTION` (2 %) of
   the lowered rate per second, the local policy at :data:`RECOVERY_FRACTION` (5 %).
"""

from __future__ import annotations

import collections
import math

from ._protocol import MAX_RETRY_AFTER
from .errors import ConfigurationError

__all__ = [
    "DECREASE_FACTOR",
    "EVIDENCE_WINDOW",
    "HEADROOM",
    "MIN_EVIDENCE",
    "MIN_RATE",
    "MIN_RECOVERY_PER_S",
    "RECOVERY_FRACTION",
    "SHARED_RECOVERY_FRACTION",
    "SHARED_UNKNOWN_DECREASE",
    "SLOW_START_DOUBLING",
    "AimdPolicy",
    "capped_retry_after",
]

#: A configured limit is paced this much under: sends land with jitter, and a server that
#: allows no burst refuses a request that arrives a millisecond early.
HEADROOM = 0.97
#: The rate never drops below this many requests per second.
MIN_RATE = 0.2
#: Multiplicative decrease: a 429 sets the rate to this fraction of the best estimate.
DECREASE_FACTOR = 0.9
#: Seconds of success history used to estimate the achievable rate.
EVIDENCE_WINDOW = 1.0
#: Successes needed in the window before the success rate is trusted as an estimate.
MIN_EVIDENCE = 10
#: Seconds per doubling while probing an unknown limit (slow start).
SLOW_START_DOUBLING = 0.25
#: Additive increase: per second, this fraction of the rate set by the last decrease...
RECOVERY_FRACTION = 0.05
#: ... and at least this many requests per second per second.
MIN_RECOVERY_PER_S = 0.05
#: The shared (Redis) policy's recovery fraction, until the two are unified (difference 8
#: in the module docstring).
SHARED_RECOVERY_FRACTION = 0.02
#: The shared policy's decrease when nothing succeeded yet (difference 3 below).
SHARED_UNKNOWN_DECREASE = 0.5

# Slow start grows 2 ** (elapsed / doubling): capped so a long idle spell cannot overflow.
_MAX_DOUBLINGS = 64.0
# A 429 faster than this is not taken as the round trip (one request per round trip).
_MIN_ROUND_TRIP = 0.01


def capped_retry_after(retry_after: object) -> float | None:
    """A server's ``Retry-After`` made safe to act on: ``None`` unless it is a finite,
    non-negative number; at most ``MAX_RETRY_AFTER``.

    >>> capped_retry_after(3), capped_retry_after(1e9), capped_retry_after(float("nan"))
    (3.0, 120.0, None)
    """
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
        return None
    if not 0 <= retry_after < math.inf:
        return None
    return min(float(retry_after), MAX_RETRY_AFTER)


class AimdPolicy:
    """The local AIMD policy's state and transitions; every method takes the time it is at.

    >>> policy = AimdPolicy(10.0)
    >>> policy.claim(100.0), round(policy.claim(100.0), 4)  # sent; the next one waits
    (0.0, 0.1031)
    >>> policy.on_rate_limited(sent_at=100.0, now=100.2)
    True
    >>> round(policy.rate(100.2), 3)  # 90 % of the 9.7/s in force when it left
    8.73
    """

    def __init__(
        self,
        rate: float | None,
        *,
        min_rate: float = MIN_RATE,
        decrease_factor: float = DECREASE_FACTOR,
        recovery_fraction: float = RECOVERY_FRACTION,
    ) -> None:
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf
        ):
            raise ConfigurationError(
                "rate_limit must be a positive, finite number of requests per second "
                "(None: no limit)"
            )
        #: The configured limit (``None``: none); paced at ``HEADROOM`` of it.
        self.configured = rate
        self._ceiling = None if rate is None else rate * HEADROOM
        self._min_rate = min_rate
        self._decrease_factor = decrease_factor
        self._recovery_fraction = recovery_fraction
        # The rate set at the last decrease, when that was, and how it grows from there.
        self._base_rate: float | None = self._ceiling
        self._decreased_at: float | None = None
        self._slow_start = False
        self._recovery_per_s = 0.0
        # Successes count as evidence only from here (one round trip after a decrease).
        self._evidence_from = -math.inf
        self._last_slot = -math.inf
        self._last_sent = -math.inf
        self._successes: collections.deque[float] = collections.deque()

    @property
    def unlimited(self) -> bool:
        """No limit configured and no 429 seen: every send may go at once."""
        return self._base_rate is None

    def rate(self, now: float) -> float | None:
        """Requests per second allowed at ``now`` (``None``: no limit)."""
        if self._base_rate is None:
            return None
        if self._decreased_at is None:
            return self._base_rate
        elapsed = max(0.0, now - self._decreased_at)
        if self._slow_start:
            doublings = min(_MAX_DOUBLINGS, elapsed / SLOW_START_DOUBLING)
            rate = self._base_rate * float(2.0**doublings)
        else:
            rate = self._base_rate + self._recovery_per_s * elapsed
        return rate if self._ceiling is None else min(rate, self._ceiling)

    def claim(self, now: float) -> float:
        """Book a send at ``now`` and return ``0.0`` if the pace allows one; otherwise book
        nothing and return the seconds until it would (the rate may change meanwhile, so a
        waiter asks again rather than trusting the answer)."""
        rate = self.rate(now)
        if rate is None:
            self._last_slot = now
            return 0.0
        spacing = 1.0 / rate
        # Keep to the schedule so wake-up delays do not add up, but never send two requests
        # closer than the headroom allows (a catch-up after a late wake-up would trip a
        # server that allows no burst).
        slot = max(self._last_slot + spacing, self._last_sent + spacing * HEADROOM)
        if slot > now:
            return slot - now
        # Idle for longer than one spacing: start the schedule afresh from now.
        self._last_slot = slot if now - slot < spacing else now
        self._last_sent = now
        return 0.0

    def on_success(self, now: float) -> None:
        """A request was answered, at ``now``, without a rate-limit error."""
        self._successes.append(now)
        while self._successes and self._successes[0] < now - EVIDENCE_WINDOW:
            self._successes.popleft()

    def on_rate_limited(self, sent_at: float, now: float, retry_after: float | None = None) -> bool:
        """A request sent at ``sent_at`` was answered ``429`` at ``now``; return whether the
        rate was lowered (``False``: the same congestion event as the last decrease).

        ``retry_after`` is accepted for symmetry with the shared store and deliberately
        ignored: the refused request's own retry honours it (capped), the shared pace is set
        by the lowered rate, so no ``Retry-After``, however large, stalls the other senders.
        """
        del retry_after  # see the docstring: not this policy's business
        if self._decreased_at is not None and sent_at < self._decreased_at:
            return False  # this request left before we slowed down: same congestion event
        in_force = self.rate(sent_at)
        since = max(now - EVIDENCE_WINDOW, self._evidence_from)
        evidence = sum(1 for t in self._successes if t >= since)
        slow_start = False
        if self._slow_start and in_force is not None:
            # Probing ramped the rate up: successes averaged over the ramp underestimate the
            # limit, the rate that was just refused does not.
            new_rate = self._decrease_factor * in_force
        elif evidence >= MIN_EVIDENCE and now > since:
            new_rate = self._decrease_factor * evidence / (now - since)
            if in_force is not None:
                new_rate = min(new_rate, self._decrease_factor * in_force)
        elif in_force is not None:
            new_rate = self._decrease_factor * in_force
        else:
            # Refused before we knew anything: one request per round trip, then probe upward.
            new_rate = 1.0 / max(now - sent_at, _MIN_ROUND_TRIP)
            slow_start = True
        new_rate = max(self._min_rate, new_rate)
        if self._ceiling is not None:
            new_rate = min(new_rate, self._ceiling)
        self._base_rate = new_rate
        self._decreased_at = now
        self._slow_start = slow_start
        self._recovery_per_s = max(MIN_RECOVERY_PER_S, self._recovery_fraction * new_rate)
        self._evidence_from = now + max(0.0, now - sent_at)
        return True
