"""A rate budget shared by every process that uses one API key, kept in Redis.

An account has one request limit, but a deployment runs many processes on it (web-server
workers, a batch job). Each process limiting itself cannot hold the account's limit; this
limiter makes them share one budget and one slow-down::

    from ailab_async import AILabClient
    from ailab_async.contrib.redis import RedisRateLimiter

    async with RedisRateLimiter("redis://127.0.0.1:6379/0", name="acct", rate=20) as limiter:
        async with AILabClient(rate_limit=limiter) as client:
            await client.smart_skin("face.jpg")

The policy is :class:`~ailab_async.AdaptiveRateLimiter`'s AIMD (its constants in
:mod:`ailab_async._aimd`, which also lists where this store still applies it differently),
with its state in one Redis hash that a Lua script reads and writes atomically, on Redis's
own clock (so the processes' clocks never have to agree):

* every ``acquire`` reserves the next send slot of the *shared* schedule
  (``slot = max(now, next); next = slot + 1 / rate``) and sleeps locally until it comes;
* a ``429 EXCEEDING_LIMITS`` from any process drops the shared rate to 90 % of the rate the
  whole account was succeeding at over the last second (half if unknown), once per congestion
  event; every process then gets slots at the new rate; it recovers linearly to ``rate``;
* a ``Retry-After`` pushes the shared schedule back, pausing every process.

Successes are counted locally and added to the shared counter with the next reservation (or
within ``0.1 s`` when idle), so a request costs one Redis round trip, not two.

If Redis cannot be reached (connection refused, a 0.2 s socket timeout, any Redis error), the
limiter logs one WARNING and limits this process alone with a local
:class:`~ailab_async.AdaptiveRateLimiter` at ``fallback_rate`` (default ``rate /
expected_processes``); it retries Redis every ``reconnect_interval`` seconds in the
background and switches back, logging the recovery. ``acquire`` never raises because Redis
is down. See ``docs/scale-out.md``.

The parts: ``_budget.py`` (the script and :class:`SharedBudget`, one call per operation),
``_limiter.py`` (:class:`RedisRateLimiter`: sleeping, batching, the local fallback),
``_connection.py`` (the Redis target and the settings, checked without leaking a password).

Why a hand-written script and not the ``limits`` library: ``limits`` offers fixed and
sliding windows with a fixed rate. We need a rate that every process lowers together on a
429 and that recovers over time, and spacing (no bursts) rather than a window count.
"""

from __future__ import annotations

# The parts below the public name stay importable from here (tests and tools drive the
# script directly), without being promised by __all__.
from ._budget import Decision as Decision
from ._budget import SharedBudget as SharedBudget
from ._connection import redact_redis_url as redact_redis_url
from ._limiter import RedisRateLimiter

__all__ = ["RedisRateLimiter"]
