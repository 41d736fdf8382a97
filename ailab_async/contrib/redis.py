"""A rate budget shared by every process that uses one API key, kept in Redis.

An account has one request limit, but a deployment runs many processes on it (web-server
workers, a batch job). Each process limiting itself cannot hold the account's limit; this
limiter makes them share one budget and one slow-down::

    from ailab_async import AILabClient
    from ailab_async.contrib.redis import RedisRateLimiter

    async with RedisRateLimiter("redis://127.0.0.1:6379/0", name="acct", rate=20) as limiter:
        async with AILabClient(rate_limit=limiter) as client:
            await client.smart_skin("face.jpg")

The policy is :class:`~ailab_async.AdaptiveRateLimiter`'s AIMD, with its state in one Redis
hash that a Lua script reads and writes atomically, on Redis's own clock (so the processes'
clocks never have to agree):

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

Why a hand-written script and not the ``limits`` library: ``limits`` offers fixed and
sliding windows with a fixed rate. We need a rate that every process lowers together on a
429 and that recovers over time, and spacing (no bursts) rather than a window count.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Coroutine
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .._ratelimit import AdaptiveRateLimiter, Sleeper, capped_retry_after
from ..errors import ClientClosedError, ConfigurationError
from ..models import Secret

__all__ = ["RedisRateLimiter"]

logger = logging.getLogger("ailab_async")

T = TypeVar("T")

#: What "Redis is unavailable" looks like: redis-py's errors (connection, timeout, auth,
#: a script or server error), the OS's, and our own deadline around each call.
_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)

# One script for every operation, so the state is only ever touched atomically, on Redis's
# clock. KEYS[1] is the budget's hash. ARGV: op, now ('' = Redis TIME; tests pass a value),
# ceiling, successes to add, sent_at, retry_after, min_rate, backoff_factor,
# recovery_fraction, min_recovery_per_s, ttl_seconds.
# Hash fields: next (next free send slot), floor / decreased_at / recovery (the rate right
# after the last decrease, when, and its linear recovery per second), ok_sec / ok_cur /
# ok_prev (successes in the current and the previous whole second of Redis time).
# Returns strings (Lua numbers would be truncated to integers): {wait, send_at, rate, now,
# decreased}.
_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local ceiling = tonumber(ARGV[3])
local successes = tonumber(ARGV[4])
local sent_at = tonumber(ARGV[5])
local retry_after = tonumber(ARGV[6])
local min_rate = tonumber(ARGV[7])
local backoff_factor = tonumber(ARGV[8])
local recovery_fraction = tonumber(ARGV[9])
local min_recovery = tonumber(ARGV[10])
local ttl = tonumber(ARGV[11])

local function num(v) if v then return tonumber(v) end return nil end
local s = redis.call('HMGET', key, 'next', 'floor', 'decreased_at', 'recovery',
                     'ok_sec', 'ok_cur', 'ok_prev')
local next_at = num(s[1]) or now
local floor = num(s[2])
local decreased_at = num(s[3])
local recovery = num(s[4]) or 0
local ok_sec = num(s[5])
local ok_cur = num(s[6]) or 0
local ok_prev = num(s[7]) or 0

local function rate_at(t)
  if not floor or not decreased_at then return ceiling end
  return math.min(ceiling, floor + recovery * math.max(0, t - decreased_at))
end

-- Roll the success counters to the current second, then add the new successes.
local sec = math.floor(now)
if not ok_sec then
  ok_sec, ok_cur, ok_prev = sec, 0, 0
elseif sec == ok_sec + 1 then
  ok_sec, ok_prev, ok_cur = sec, ok_cur, 0
elseif sec > ok_sec + 1 then
  ok_sec, ok_prev, ok_cur = sec, 0, 0
end
ok_cur = ok_cur + successes

local wait, send_at, decreased = 0, now, 0
if op == 'acquire' then
  local rate = rate_at(now)
  send_at = math.max(now, next_at)
  wait = send_at - now
  next_at = send_at + 1 / rate
elseif op == 'limited' then
  if retry_after > 0 then next_at = math.max(next_at, now + retry_after) end
  -- A request sent before the last decrease belongs to the congestion event already handled.
  if not (decreased_at and sent_at < decreased_at) then
    -- Successes over the last second: all of this second's, and the part of the previous
    -- second's that still lies within one second of now.
    local succeeding = ok_prev * (1 - (now - sec)) + ok_cur
    local current = rate_at(now)
    local new_rate
    if succeeding > 0 then
      new_rate = math.min(backoff_factor * succeeding, backoff_factor * current)
    else
      new_rate = current / 2
    end
    new_rate = math.max(min_rate, new_rate)
    floor, decreased_at = new_rate, now
    recovery = math.max(min_recovery, recovery_fraction * new_rate)
    next_at = math.max(next_at, now + 1 / new_rate)
    decreased = 1
  end
end

if op ~= 'peek' then
  local function f(x) return string.format('%.17g', x) end
  local fields = {'next', f(next_at), 'recovery', f(recovery),
                  'ok_sec', f(ok_sec), 'ok_cur', f(ok_cur), 'ok_prev', f(ok_prev)}
  if floor then
    table.insert(fields, 'floor'); table.insert(fields, f(floor))
    table.insert(fields, 'decreased_at'); table.insert(fields, f(decreased_at))
  end
  redis.call('HSET', key, unpack(fields))
  -- Abandoned budgets vanish; a budget paused by a long Retry-After outlives the pause.
  local ttl_ms = math.ceil((math.max(0, next_at - now) + ttl) * 1000)
  redis.call('PEXPIRE', key, ttl_ms)
end
local function g(x) return string.format('%.17g', x) end
return {g(wait), g(send_at), g(rate_at(now)), g(now), tostring(decreased)}
"""


@attrs.frozen
class Decision:
    """What the shared budget answered: how long to wait for the slot, and the state."""

    #: Seconds to wait before sending (``acquire``; 0 otherwise).
    wait: float
    #: The reserved send time, on Redis's clock (``acquire``; ``now`` otherwise).
    send_at: float
    #: The shared rate now, in requests per second.
    rate: float
    #: Redis's clock when the script ran, in seconds since the epoch.
    now: float
    #: Whether a ``429`` report lowered the shared rate (``limited`` only).
    decreased: bool = False


def _parse(reply: Any) -> Decision:
    wait, send_at, rate, now, decreased = (_text(item) for item in reply)
    return Decision(float(wait), float(send_at), float(rate), float(now), decreased == "1")


def _text(item: Any) -> str:
    return item.decode() if isinstance(item, bytes) else str(item)


class SharedBudget:
    """The shared state's operations: one atomic script call each, nothing else.

    ``now`` overrides Redis's clock (tests of the script's decisions); leave it ``None``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        *,
        ceiling: float,
        min_rate: float = 0.2,
        backoff_factor: float = 0.9,
        recovery_fraction: float = 0.02,
        min_recovery_per_s: float = 0.05,
        ttl: float = 300.0,
    ) -> None:
        self.key = key
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._ceiling = ceiling
        self._min_rate = min_rate
        self._backoff_factor = backoff_factor
        self._recovery_fraction = recovery_fraction
        self._min_recovery = min_recovery_per_s
        self._ttl = ttl

    async def _run(
        self,
        op: str,
        *,
        successes: int = 0,
        sent_at: float = 0.0,
        retry_after: float | None = None,
        now: float | None = None,
    ) -> Decision:
        args = [
            op,
            "" if now is None else repr(now),
            repr(self._ceiling),
            str(successes),
            repr(sent_at),
            # Capped here too: SharedBudget may be driven directly, and the pause is shared.
            repr(capped_retry_after(retry_after) or 0.0),
            repr(self._min_rate),
            repr(self._backoff_factor),
            repr(self._recovery_fraction),
            repr(self._min_recovery),
            repr(self._ttl),
        ]
        reply = await self._script(keys=[self.key], args=args, client=self._client)
        return _parse(reply)

    async def reserve(self, *, successes: int = 0, now: float | None = None) -> Decision:
        """Claim the next shared send slot (adding ``successes`` first)."""
        return await self._run("acquire", successes=successes, now=now)

    async def add_successes(self, successes: int, *, now: float | None = None) -> Decision:
        """Count ``successes`` towards the account's succeeding rate."""
        return await self._run("success", successes=successes, now=now)

    async def rate_limited(
        self,
        sent_at: float,
        retry_after: float | None = None,
        *,
        successes: int = 0,
        now: float | None = None,
    ) -> Decision:
        """Report a ``429`` for a request sent at ``sent_at`` (Redis time)."""
        return await self._run(
            "limited", successes=successes, sent_at=sent_at, retry_after=retry_after, now=now
        )

    async def peek(self, *, now: float | None = None) -> Decision:
        """The shared rate now, changing nothing (also the reconnection probe)."""
        return await self._run("peek", now=now)


def redact_redis_url(url: str) -> str:
    """``url`` without credentials or query (which may hold a password), for logs and reprs.

    >>> redact_redis_url("redis://user:s3cret@cache.internal:6379/2?password=x")
    'redis://***@cache.internal:6379/2'
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # malformed (an unclosed IPv6 bracket): show no more than the scheme
        return url.partition("://")[0] + "://***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_SCHEMES = ("redis", "rediss", "unix")


@attrs.frozen
class _Connection:
    client: aioredis.Redis
    owned: bool
    #: Where Redis is, for logs and reprs (no credentials).
    where: str
    #: Spellings of the password, scrubbed from logged error texts.
    secrets: list[str] = attrs.field(repr=False)


def _connect(target: Secret[object], timeout: float) -> _Connection | str:
    """A Redis client for ``target`` (a URL or a client), or what is wrong with it.

    Never raises (an error raised here would carry the URL, password and all, in this
    frame's locals); the message returned never quotes the password.
    """
    redis = target.reveal()
    if isinstance(redis, aioredis.Redis):
        kwargs = redis.connection_pool.connection_kwargs
        return _Connection(
            redis,
            owned=False,
            where="redis://{}:{}/{}".format(
                kwargs.get("host", "?"), kwargs.get("port", "?"), kwargs.get("db", 0)
            ),
            secrets=[str(kwargs["password"])] if kwargs.get("password") else [],
        )
    if not isinstance(redis, str):
        return (
            "redis must be a redis://, rediss:// or unix:// URL or a redis.asyncio.Redis, "
            f"got {type(redis).__name__}"
        )
    shown = redact_redis_url(redis)
    try:
        parts = urlsplit(redis)
        password = parts.password
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        return f"the Redis URL {shown!r} is malformed"
    if parts.scheme not in _SCHEMES:
        return f"the Redis URL {shown!r} must start with redis://, rediss:// or unix://"
    try:
        client = aioredis.Redis.from_url(
            redis,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry: a pooled connection may be stale after Redis restarts.
            retry=Retry(NoBackoff(), 1),
        )
    except (ValueError, TypeError):
        # redis-py's own complaint may quote parts of the URL: say it in our words.
        return f"the Redis URL {shown!r} is not one redis-py accepts"
    return _Connection(
        client,
        owned=True,
        where=shown,
        # Redis gets the percent-decoded password; scrub both spellings.
        secrets=[password, unquote(password)] if password else [],
    )


def _settings_problem(
    *,
    name: object,
    rate: object,
    fallback_rate: object,
    expected_processes: object,
    timeout: object,
    reconnect_interval: object,
    state_ttl: object,
    min_rate: object,
    backoff_factor: object,
    recovery_fraction: object,
) -> str | None:
    """What is wrong with a RedisRateLimiter's settings, or ``None``."""
    if not isinstance(name, str) or not name:
        return "name must be a non-empty string"
    if not _positive_number(rate):
        return "rate must be a positive, finite number of requests per second"
    if isinstance(expected_processes, bool) or not (
        isinstance(expected_processes, int) and expected_processes >= 1
    ):
        return "expected_processes must be an integer >= 1"
    if fallback_rate is not None and not _positive_number(fallback_rate):
        return "fallback_rate must be a positive, finite number"
    for setting, value in (
        ("timeout", timeout),
        ("reconnect_interval", reconnect_interval),
        ("state_ttl", state_ttl),
        ("min_rate", min_rate),
        ("recovery_fraction", recovery_fraction),
    ):
        if not _positive_number(value):
            return f"{setting} must be a positive, finite number"
    if not _positive_number(backoff_factor, below=1.0):
        return "backoff_factor must be a number between 0 and 1"
    return None


def _positive_number(value: object, *, below: float = math.inf) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < below


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
        min_rate, backoff_factor, recovery_fraction: The AIMD policy, as in
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
        min_rate: float = 0.2,
        backoff_factor: float = 0.9,
        recovery_fraction: float = 0.02,
    ) -> None:
        # A URL may carry a password: from here on it lives only in a holder whose repr is
        # '***', so a traceback rendered with frame locals never shows it.
        target: Secret[object] = Secret(redis)
        del redis
        problem = _settings_problem(
            name=name,
            rate=rate,
            fallback_rate=fallback_rate,
            expected_processes=expected_processes,
            timeout=timeout,
            reconnect_interval=reconnect_interval,
            state_ttl=state_ttl,
            min_rate=min_rate,
            backoff_factor=backoff_factor,
            recovery_fraction=recovery_fraction,
        )
        if problem is not None:
            raise ConfigurationError(problem)
        connection = _connect(target, timeout)
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
            ceiling=self._rate,
            min_rate=min_rate,
            backoff_factor=backoff_factor,
            recovery_fraction=recovery_fraction,
            ttl=state_ttl,
        )
        # Redis time minus local wall time, so that the fallback's clock (and the send times
        # it hands out) stays on the timeline of Redis's, which on_rate_limited compares.
        self._clock_offset = 0.0
        self._fallback = AdaptiveRateLimiter(
            self._fallback_rate,
            clock=self._local_clock,
            sleep=sleep,
            min_rate=min_rate,
            backoff_factor=backoff_factor,
            recovery_fraction=recovery_fraction,
        )
        self._using_redis = True
        self._shared_rate = self._rate
        self._pending_successes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._reports: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Times Redis became unreachable / reachable again (for health checks and tests).
        self.degraded_count = 0
        self.recovered_count = 0

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
        if self._using_redis:
            successes, self._pending_successes = self._pending_successes, 0
            try:
                decision = await self._call(self._budget.reserve(successes=successes))
            except _UNAVAILABLE as exc:
                self._degrade(exc)
            else:
                self._observe(decision)
                if decision.wait > 0:
                    await self._sleep(decision.wait)
                return decision.send_at
        return await self._fallback.acquire()

    def on_success(self) -> None:
        """Count a success; it reaches Redis with the next reservation, or within 0.1 s."""
        # The fallback keeps its own window warm, so a 429 right after a switch is judged
        # against what was really succeeding.
        self._fallback.on_success()
        if not self._using_redis or self._closed:
            return
        self._pending_successes += 1
        if self._flusher is None:
            self._flusher = self._spawn(self._flush_soon())

    def on_rate_limited(self, sent_at: float, retry_after: float | None = None) -> None:
        """Report a ``429`` to every process sharing the budget (in the background).

        A ``Retry-After`` pauses every process, so it is taken capped (at most
        :data:`~ailab_async._protocol.MAX_RETRY_AFTER` seconds; ignored unless a finite,
        non-negative number): one broken answer must not stall a deployment for years.
        """
        retry_after = capped_retry_after(retry_after)
        self.rate_limited_count += 1
        if self._using_redis and not self._closed:
            successes, self._pending_successes = self._pending_successes, 0
            task = self._spawn(self._report_rate_limited(sent_at, retry_after, successes))
            if task is not None:
                return
        self._fallback.on_rate_limited(sent_at, retry_after)

    # -- lifecycle ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send pending success counts and wait for the 429 reports in flight."""
        if self._using_redis and self._pending_successes and not self._closed:
            successes, self._pending_successes = self._pending_successes, 0
            await self._send_successes(successes)
        while self._reports:
            await asyncio.gather(*self._reports, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish the reports in flight, stop reconnecting, close the pool if it is ours."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        for task in (self._flusher, self._reconnector):
            if task is not None:
                task.cancel()
        pending = [t for t in (self._flusher, self._reconnector, *self._reports) if t]
        await asyncio.gather(*pending, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

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

    def _local_clock(self) -> float:
        return time.time() + self._clock_offset

    async def _call(self, operation: Awaitable[T]) -> T:
        # redis-py disconnects a connection whose command is cancelled, so this deadline is
        # safe; with our own pool the socket timeouts fire first.
        return await asyncio.wait_for(operation, self._call_deadline)

    def _observe(self, decision: Decision) -> None:
        self._shared_rate = decision.rate
        self._clock_offset = decision.now - time.time()

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

    async def _flush_soon(self) -> None:
        try:
            # Under load the next reservation carries the count; this covers idle spells.
            await asyncio.sleep(0.1)
        finally:
            self._flusher = None
        successes, self._pending_successes = self._pending_successes, 0
        if successes and self._using_redis and not self._closed:
            await self._send_successes(successes)

    async def _send_successes(self, successes: int) -> None:
        try:
            self._observe(await self._call(self._budget.add_successes(successes)))
        except _UNAVAILABLE as exc:
            self._degrade(exc)

    async def _report_rate_limited(
        self, sent_at: float, retry_after: float | None, successes: int
    ) -> None:
        try:
            decision = await self._call(
                self._budget.rate_limited(sent_at, retry_after, successes=successes)
            )
        except _UNAVAILABLE as exc:
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
