"""What travels in the task graph (never a secret): how workers build their client, and what
to do with a partition.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..._config import API_KEY_ENV
from ..._ratelimit import RateLimiter
from ...batch import Operation
from ...client import AILabClient
from ...errors import ConfigurationError
from ._shards import JOURNAL_SHARDS

__all__ = [
    "DEFAULT_PLUGIN_NAME",
    "PartitionJob",
    "RedisLimiterFactory",
    "WorkerClientConfig",
    "aclose_limiter",
]

#: The name :func:`run_on_cluster` registers its :class:`AILabWorkerPlugin` under.
DEFAULT_PLUGIN_NAME = "ailab-async"


@attrs.frozen
class RedisLimiterFactory:
    """Builds a ``RedisRateLimiter``: one request budget shared by every worker process.

    A plain, picklable value (unlike a lambda it compares equal after a trip to a worker).
    The URL travels to the workers in the task graph: if it holds a password, pass
    ``url=None`` instead and set ``AILAB_REDIS_URL`` (or the variable ``url_env`` names) in
    the workers' environment.

    >>> factory = RedisLimiterFactory("redis://127.0.0.1:6379/0", rate=20.0, name="photos")
    >>> limiter = factory()  # on a worker, on the client's loop  # doctest: +SKIP
    """

    url: str | None
    #: The account's limit, in requests per second, shared by every worker process.
    rate: float
    #: Processes sharing the budget; while Redis is unreachable each one falls back to
    #: ``rate / expected_processes`` on its own.
    expected_processes: int = 4
    #: The budget's name in Redis: one per API key.
    name: str = "ailab-async"
    #: Where a worker finds the URL when ``url`` is ``None``.
    url_env: str = "AILAB_REDIS_URL"

    def __call__(self) -> RateLimiter:
        # Imported here: only the processes that build a limiter need the ``redis`` extra.
        from ..redis import RedisRateLimiter  # noqa: PLC0415

        url = self.url or os.environ.get(self.url_env)
        if not url:
            raise ConfigurationError(
                f"no Redis URL on this worker: pass url= or set {self.url_env} in its environment"
            )
        return RedisRateLimiter(
            url,
            name=self.name,
            rate=self.rate,
            expected_processes=self.expected_processes,
        )


@attrs.frozen
class WorkerClientConfig:
    """How every worker process builds its one :class:`~ailab_async.AILabClient`.

    Arguments:
        base_url: The API (default: ``AILAB_BASE_URL`` on the worker, then the real API).
        api_key_env: The environment variable the worker reads its API key from. The key
            itself is never part of this object, so it never enters the task graph.
        max_concurrency: Requests in flight at once per worker process.
        rate_limit: Requests per second per worker process, when there is no
            ``limiter_factory`` (divide the account's rate by the number of processes).
        limiter_factory: Called once per worker process, on the client's event loop, to
            build a shared limiter (see :class:`RedisLimiterFactory`). Must be picklable.
        client_options: Further keyword arguments for ``AILabClient`` (``timeout``, ...).
    """

    base_url: str | None = None
    api_key_env: str = API_KEY_ENV
    max_concurrency: int = 8
    rate_limit: float | None = None
    limiter_factory: Callable[[], RateLimiter] | None = None
    client_options: Mapping[str, Any] = attrs.field(factory=dict)

    async def open_client(self) -> tuple[AILabClient, RateLimiter | None]:
        """Build the client (and the shared limiter, if any) on the running loop."""
        api_key = os.environ.get(self.api_key_env)
        if not api_key:
            raise ConfigurationError(
                f"no API key on this worker: set {self.api_key_env} in the worker's environment"
            )
        limiter = self.limiter_factory() if self.limiter_factory is not None else None
        try:
            client = AILabClient(
                api_key=api_key,
                base_url=self.base_url,
                max_concurrency=self.max_concurrency,
                rate_limit=limiter if limiter is not None else self.rate_limit,
                **self.client_options,
            )
        except BaseException:
            await aclose_limiter(limiter)
            raise
        return client, limiter


@attrs.frozen
class PartitionJob:
    """What to do with every photo of a partition, and where results go."""

    operation: Operation
    params: Mapping[str, Any]
    #: Shared by every worker; outputs mirror the inputs' relative paths inside it.
    out_dir: Path = attrs.field(converter=Path)
    #: The :data:`JOURNAL_SHARDS` SQLite journals are kept here (default
    #: ``out_dir/.journals``).
    journal_dir: Path | None = None
    retry_failed: bool = False
    #: Photos of one partition in progress at once (default: as ``run_batch`` chooses).
    concurrency: int | None = None
    #: The :class:`AILabWorkerPlugin` that owns the worker's client.
    plugin_name: str = DEFAULT_PLUGIN_NAME

    def journal_file(self, shard: int) -> Path:
        """The journal of one shard (see :func:`shard_of`)."""
        name = f"shard-{shard:02d}-of-{JOURNAL_SHARDS:02d}.sqlite3"
        return (self.journal_dir or self.out_dir / ".journals") / name


async def aclose_limiter(limiter: RateLimiter | None) -> None:
    # Clients never close the limiter they were given; a Redis one holds a connection pool.
    aclose = getattr(limiter, "aclose", None)
    if aclose is not None:
        await aclose()
