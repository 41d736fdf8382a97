"""``AILabClient``: the one object users hold. It wires the parts; the logic lives in them."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import random
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import aiohttp

from . import _protocol as protocol
from ._dispatch import Call, Dispatcher, RetryPolicy
from ._download import DEFAULT_MAX_DOWNLOAD_BYTES, download_to
from ._map import Outcome, map_outcomes
from ._polling import PollingConfig
from ._ratelimit import AdaptiveRateLimiter, RateLimiter
from ._session import SessionManager
from ._tracker import TaskHandle, TaskTracker
from .errors import ClientClosedError, ConfigurationError
from .images import SMART_BEAUTY_RULES, SMART_SKIN_RULES, ImageInput, aprepare_image
from .models import ClientStats, Credits, ImageResult

__all__ = ["AILabClient"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

API_KEY_ENV = "AILAB_API_KEY"
BASE_URL_ENV = "AILAB_BASE_URL"
DEFAULT_DEADLINE = 300.0
DEFAULT_TASK_TIMEOUT = 600.0


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AILabClient:
    """An asyncio client for the AILabTools portrait-effects API.

    One client holds one HTTP connection pool, one concurrency limit and one rate budget;
    share it across your application (it is safe to use from many tasks at once)::

        async with AILabClient() as client:          # key from AILAB_API_KEY
            result = await client.smart_skin("face.jpg", retouch_degree=0.8)
            await client.download(result, "face-smooth.png")

    Arguments:
        api_key: The API key; defaults to the ``AILAB_API_KEY`` environment variable.
        base_url: Defaults to ``AILAB_BASE_URL``, then ``https://www.ailabapi.com``.
        max_concurrency: Requests in flight at once, at most (polls and downloads included).
        rate_limit: Requests per second across all endpoints; ``None`` starts unlimited.
            Either way the client slows down by itself on ``429 EXCEEDING_LIMITS``. Or a
            :class:`RateLimiter` object, for example a Redis-backed one shared by processes.
        timeout: Seconds one attempt may take.
        max_retries: Retries after transient failures (5xx, connection errors, timeouts).
        session: An ``aiohttp.ClientSession`` to use; it is never closed by the client.
        deadline: Seconds a whole call may take, retries and waiting included.
        retry_ambiguous: Retry billed calls that failed after the request may have been
            processed (a timeout, a reset connection). Such a retry can be billed twice; they
            are counted in :attr:`stats` as ``ambiguous_retries``. Set ``False`` to raise
            instead.
        backoff_initial, backoff_max: The backoff cap before the first retry (doubling for
            each further retry) and its ceiling, in seconds. Full jitter: each wait is drawn
            uniformly below the cap; a ``Retry-After`` is a floor.
        dangerously_allow_plain_http: Allow sending the API key over plain ``http://`` to a
            host that is not this machine. Off: only loopback may use plain HTTP.
        task_timeout: Default seconds ``await task`` waits for a smart-beauty result
            (``None``: no limit). The task itself is not affected.
        trust_env: Let the owned session read ``HTTP(S)_PROXY`` and ``~/.netrc`` from the
            environment (off: it costs CPU on every request, and the key is ours to send).
        polling: Knobs of the smart poller (:class:`PollingConfig`): polls per task, the
            share of the rate budget and of the concurrency polls may use, ...
        clock, sleep, random: Time and chance, injectable so tests never wait for real.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        max_concurrency: int = 8,
        rate_limit: float | RateLimiter | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        session: aiohttp.ClientSession | None = None,
        *,
        deadline: float = DEFAULT_DEADLINE,
        retry_ambiguous: bool = True,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        dangerously_allow_plain_http: bool = False,
        task_timeout: float | None = DEFAULT_TASK_TIMEOUT,
        polling: PollingConfig | None = None,
        trust_env: bool = False,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key or not key.strip():
            raise ConfigurationError(
                f"no API key: pass api_key= or set the {API_KEY_ENV} environment variable"
            )
        url = base_url or os.environ.get(BASE_URL_ENV) or protocol.DEFAULT_BASE_URL
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"base_url must be an http(s) URL, got {url!r}")
        if (
            parts.scheme == "http"
            and not _is_loopback(parts.hostname)
            and not dangerously_allow_plain_http
        ):
            raise ConfigurationError(
                f"refusing to send the API key over plain HTTP to {parts.hostname}; use "
                "https, or pass dangerously_allow_plain_http=True if you really mean it"
            )
        if isinstance(max_concurrency, bool) or not (
            isinstance(max_concurrency, int) and max_concurrency >= 1
        ):
            raise ConfigurationError("max_concurrency must be an integer >= 1")
        if not timeout > 0 or not deadline > 0:
            raise ConfigurationError("timeout and deadline must be positive numbers of seconds")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ConfigurationError("max_retries must be an integer >= 0")
        if not (0 < backoff_initial <= backoff_max):
            raise ConfigurationError("backoff must satisfy 0 < backoff_initial <= backoff_max")
        limiter: RateLimiter | None = None
        if isinstance(rate_limit, RateLimiter):
            limiter, rate_limit = rate_limit, None
        elif rate_limit is not None and (
            isinstance(rate_limit, bool)
            or not isinstance(rate_limit, (int, float))
            or not rate_limit > 0
        ):
            raise ConfigurationError(
                "rate_limit must be a positive number of requests/second or a RateLimiter"
            )

        self._api_key = key.strip()
        self._base_url = url.rstrip("/")
        self._max_concurrency = max_concurrency
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._rand = random or _random_source()
        self._sessions = SessionManager(session, pool_size=max_concurrency, trust_env=trust_env)
        self._limiter: RateLimiter = limiter or AdaptiveRateLimiter(
            rate_limit, clock=self._clock, sleep=self._sleep
        )
        self._dispatcher = Dispatcher(
            self._sessions,
            base_url=self._base_url,
            api_key=self._api_key,
            max_concurrency=max_concurrency,
            limiter=self._limiter,
            timeout=timeout,
            deadline=deadline,
            policy=RetryPolicy(
                max_retries=max_retries,
                base_delay=backoff_initial,
                max_delay=backoff_max,
                retry_ambiguous=retry_ambiguous,
            ),
            clock=self._clock,
            sleep=self._sleep,
            rand=self._rand,
        )
        self._tracker = TaskTracker(
            self._dispatcher,
            self._limiter,
            max_concurrency=max_concurrency,
            config=polling or PollingConfig(),
            clock=self._clock,
            sleep=self._sleep,
            wait_timeout=task_timeout,
            rand=self._rand,
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> AILabClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the task tracker and release the connection pool. Safe to call twice.

        Waiters of smart-beauty tasks still pending get :class:`ClientClosedError`; the
        remote tasks go on and can be tracked again by ``task_id``.
        """
        await self._tracker.aclose()
        await self._sessions.aclose()

    @property
    def closed(self) -> bool:
        return self._sessions.closed

    def __repr__(self) -> str:
        return (
            f"AILabClient(base_url={self._base_url!r}, max_concurrency={self._max_concurrency}, "
            f"rate_limit={self._limiter.configured_rate!r}, api_key='***', "
            f"closed={self.closed})"
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def stats(self) -> ClientStats:
        """What the dispatcher has done so far: attempts, retries, ambiguous retries, ..."""
        return self._dispatcher.stats()

    # -- API calls -----------------------------------------------------------------------

    async def smart_skin(
        self,
        image: ImageInput,
        retouch_degree: float = 1.0,
        whitening_degree: float = 1.0,
        *,
        deadline: float | None = None,
    ) -> ImageResult:
        """AI Skin Beauty: smooth skin (``retouch_degree``) and whiten (``whitening_degree``).

        Both degrees are in [0, 1.5]. The image (JPEG/PNG, at most 6 MB, sides above 128 and
        below 5000 pixels) is a path, bytes or a binary file object; it is checked before
        upload and streamed from disk on every attempt.

        >>> result = await client.smart_skin("face.jpg", retouch_degree=0.6)  # doctest: +SKIP
        >>> data = await client.download(result)  # doctest: +SKIP
        """
        fields = protocol.smart_skin_fields(retouch_degree, whitening_degree)
        self._check_open()
        prepared = await aprepare_image(image, SMART_SKIN_RULES)
        envelope = await self._dispatcher.call(
            Call(protocol.SMART_SKIN, fields, prepared), deadline=deadline
        )
        return protocol.parse_image_result(envelope)

    async def submit_smart_beauty(
        self,
        image: ImageInput,
        beauty_level: float = 1.0,
        multi_face: bool = False,
        *,
        deadline: float | None = None,
    ) -> TaskHandle:
        """Smart Beauty: submit the task and return its handle at once.

        ``beauty_level`` is in [0, 1]; ``multi_face=True`` beautifies every face (fewer than
        18 recommended), otherwise only the largest. The image is JPEG/PNG/BMP, at most 5 MB,
        below 4096x4096. Persist ``task.task_id``: it is what you paid for.

        >>> task = await client.submit_smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
        >>> save(task.task_id)  # doctest: +SKIP
        >>> result = await task  # or: await task.result(timeout=120)  # doctest: +SKIP
        """
        fields = protocol.smart_beauty_fields(beauty_level, multi_face)
        self._check_open()
        prepared = await aprepare_image(image, SMART_BEAUTY_RULES)
        envelope = await self._dispatcher.call(
            Call(protocol.SMART_BEAUTY, fields, prepared), deadline=deadline
        )
        return self._tracker.track(protocol.parse_task_id(envelope), fresh=True)

    async def smart_beauty(
        self,
        image: ImageInput,
        beauty_level: float = 1.0,
        multi_face: bool = False,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> ImageResult:
        """Smart Beauty, submitted and awaited: the finished result.

        ``timeout`` bounds the wait for the result (default: the client's ``task_timeout``);
        on :class:`TaskTimeoutError` the task goes on, and ``error.task_id`` can be tracked.

        >>> result = await client.smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
        """
        task = await self.submit_smart_beauty(image, beauty_level, multi_face, deadline=deadline)
        return await task.result(timeout)

    def track(self, task_id: str, *, submitted_at: dt.datetime | None = None) -> TaskHandle:
        """Pick up a smart-beauty task submitted earlier (another process, a restart).

        Tracking an id that is already tracked returns the same handle. Give
        ``submitted_at`` (UTC) when you know it: polls are then placed from experience.

        >>> task = client.track(saved_task_id)  # doctest: +SKIP
        >>> result = await task  # doctest: +SKIP
        """
        self._check_open()
        if not isinstance(task_id, str) or not task_id.strip():
            raise ValueError("task_id must be a non-empty string")
        return self._tracker.track(task_id.strip(), submitted_at=submitted_at)

    def map(
        self,
        fn: Callable[..., Awaitable[ResultT]],
        items: Iterable[ItemT] | AsyncIterable[ItemT],
        *,
        concurrency: int | None = None,
        ordered: bool = False,
        **kwargs: Any,
    ) -> AsyncGenerator[Outcome[ItemT, ResultT], None]:
        """Run ``fn(item, **kwargs)`` over ``items``; yield an ``Outcome`` per item.

        Works for ``client.smart_skin``, ``client.smart_beauty`` and any coroutine function
        taking an item first. ``items`` may be a sync or async iterable, even an endless one:
        it is consumed lazily, and at most ``concurrency`` items are in progress (default:
        twice ``max_concurrency``; raise it for ``smart_beauty``, whose items mostly wait on
        remote tasks). Outcomes come as items complete, or in input order with
        ``ordered=True`` (through a bounded reorder buffer). A failed item is an outcome
        with ``error`` set; it never stops the others.

        >>> async for outcome in client.map(client.smart_skin, paths, retouch_degree=0.6):
        ...     print(outcome.item, outcome.result or outcome.error)  # doctest: +SKIP
        """
        return map_outcomes(
            fn,
            items,
            concurrency=concurrency or 2 * self._max_concurrency,
            ordered=ordered,
            kwargs=kwargs,
        )

    @property
    def tracker(self) -> TaskTracker:
        """The task tracker (pending count, polls sent, the learned poll plan)."""
        return self._tracker

    async def credits(self, *, deadline: float | None = None) -> Credits:
        """The account's credit balances (``query-credits``; free).

        >>> credits = await client.credits()  # doctest: +SKIP
        >>> credits.balance  # doctest: +SKIP
        1200.0
        """
        self._check_open()
        envelope = await self._dispatcher.call(Call(protocol.QUERY_CREDITS), deadline=deadline)
        return protocol.parse_credits(envelope)

    @overload
    async def download(
        self,
        result: ImageResult | str,
        dest: None = None,
        *,
        max_bytes: int = ...,
        deadline: float | None = ...,
    ) -> bytes: ...

    @overload
    async def download(
        self,
        result: ImageResult | str,
        dest: str | os.PathLike[str],
        *,
        max_bytes: int = ...,
        deadline: float | None = ...,
    ) -> Path: ...

    async def download(
        self,
        result: ImageResult | str,
        dest: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        deadline: float | None = None,
    ) -> bytes | Path:
        """Fetch a result image: its bytes, or, given ``dest``, write it there atomically.

        The API key is never sent to the result host. Only ``http(s)`` URLs are fetched, the
        response must be an image, and at most ``max_bytes`` are accepted.

        >>> path = await client.download(result, "out/face.png")  # doctest: +SKIP
        """
        self._check_open()
        return await download_to(
            self._dispatcher,
            result,
            None if dest is None else Path(dest),
            max_bytes=max_bytes,
            deadline=deadline,
        )

    async def download_to_dir(
        self,
        result: ImageResult | str,
        destination: Callable[[str], Path],
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        deadline: float | None = None,
    ) -> Path:
        """Like :meth:`download` to a file, with the path chosen from the content type.

        ``destination("image/png")`` returns where to write; the batch runner uses it to
        give outputs the extension of what the API actually served.
        """
        self._check_open()
        written = await download_to(
            self._dispatcher, result, destination, max_bytes=max_bytes, deadline=deadline
        )
        assert isinstance(written, Path)
        return written

    def _check_open(self) -> None:
        if self._sessions.closed:
            raise ClientClosedError("this AILabClient is closed; create a new one")


def _random_source() -> Callable[[], float]:
    # Jitter needs no cryptographic strength; a private generator keeps user seeds intact.
    return random.Random().random  # noqa: S311
