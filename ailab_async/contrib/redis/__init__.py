"""A rate budget shared by every process that uses one API key, kept in Redis.

An account has one request limit, but a deployment runs many processes on it (web-server
workers, a batch job). Each process limiting itself cannot hold the account's limit; this
limiter makes them share one budget and one slow-down::

    from ailab_async import AILabClient
    from ailab_async.contrib.redis import RedisRateLimiter

    async with RedisRateLimiter("redis://127.0.0.1:6379/0", name="acct", rate=20) as limiter:
        async with AILabClient(rate_limit=limiter) as client:
            await client.smart_skin("face.jpg")

The policy is :class:`~ailab_async.AdaptiveRateLimiter`'s, the very same code
(:mod:`ailab_async._aimd`), run on one state kept in a Redis hash: every operation reads the
state, applies the policy on Redis's clock (so the processes' clocks never have to agree) and
writes it back in one optimistic transaction (``WATCH``/``MULTI``/``EXEC``, run again when
another process wrote first):

* every ``acquire`` books the next slot of the *shared* schedule when it is due within 0.1 s
  (else it sleeps and asks again), and sleeps locally until the slot; a process's senders
  queue for one booker, so a process has one transaction in flight however many it runs;
* a ``429 EXCEEDING_LIMITS`` from any process cuts the shared pace, once per cluster of
  429s, to 95 % of what the whole account was accepting; the pace grows back along the
  policy's recovery curve, never above ``rate``; a cap on requests in flight is shared too;
* the certain part of a ``Retry-After`` pauses every process.

Successes and releases are counted locally and sent with the next reservation (or within
``0.1 s`` when idle), so a request costs one transaction, not three.

If Redis cannot be reached (connection refused, a 0.2 s socket timeout, any Redis error), the
limiter logs one WARNING and limits this process alone with a local
:class:`~ailab_async.AdaptiveRateLimiter` at ``fallback_rate`` (default ``rate /
expected_processes``); it retries Redis every ``reconnect_interval`` seconds in the
background and switches back, logging the recovery. ``acquire`` never raises because Redis
is down. See ``docs/scale-out.md``.

The parts: ``_budget.py`` (:class:`SharedBudget`: the state's transactions, one per
operation), ``_limiter.py`` (:class:`RedisRateLimiter`: sleeping, batching, the local
fallback), ``_connection.py`` (the Redis target and the settings, checked without leaking a
password).

Why not the ``limits`` library: it offers fixed and sliding windows with a fixed rate. We
need one pace that every process lowers together on a 429 and that grows back, and spacing
(no bursts) rather than a window count; and one policy with the in-process limiter.
"""

from __future__ import annotations

# The parts below the public name stay importable from here (tests and tools drive the
# shared state directly), without being promised by __all__.
from ._budget import Decision as Decision
from ._budget import Report as Report
from ._budget import SharedBudget as SharedBudget
from ._connection import redact_redis_url as redact_redis_url
from ._limiter import RedisRateLimiter

__all__ = ["RedisRateLimiter"]
