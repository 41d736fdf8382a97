"""Where the shared budget's Redis is, and whether a limiter's settings make sense.

Pure checks and construction, no network I/O (a client is built here, not connected): the
Redis target (a URL or a client) is turned into a client plus what may be shown of it in
logs, never the password; the settings are validated into one message. Both answer with a
message rather than raising, so that no frame holding the URL ends up in a traceback.
"""

from __future__ import annotations

import math
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...models import Secret

__all__ = ["Connection", "connect", "redact_redis_url", "settings_problem"]


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
class Connection:
    """A Redis client for the budget, whether the limiter owns it, and how to show it."""

    client: aioredis.Redis
    owned: bool
    #: Where Redis is, for logs and reprs (no credentials).
    where: str
    #: Spellings of the password, scrubbed from logged error texts.
    secrets: list[str] = attrs.field(repr=False)


def connect(target: Secret[object], timeout: float) -> Connection | str:
    """A Redis client for ``target`` (a URL or a client), or what is wrong with it.

    Never raises (an error raised here would carry the URL, password and all, in this
    frame's locals); the message returned never quotes the password.
    """
    redis = target.reveal()
    if isinstance(redis, aioredis.Redis):
        kwargs = redis.connection_pool.connection_kwargs
        return Connection(
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
    return Connection(
        client,
        owned=True,
        where=shown,
        # Redis gets the percent-decoded password; scrub both spellings.
        secrets=[password, unquote(password)] if password else [],
    )


def settings_problem(
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
    ):
        if not _positive_number(value):
            return f"{setting} must be a positive, finite number"
    if not _positive_number(backoff_factor, below=1.0):
        return "backoff_factor must be a number between 0 and 1"
    return None


def _positive_number(value: object, *, below: float = math.inf) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < below
