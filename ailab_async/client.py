"""``AILabClient``: the one object users hold. It wires the parts; the logic lives in them.

The facade: it checks arguments with the rules of :mod:`._config` and :mod:`._endpoints`,
builds each call from its endpoint-table entry (:meth:`AILabClient._send`), and hands it to
the dispatcher; smart-beauty tasks go to the tracker. Its length is the public methods and
their documentation: one cohesive thing, kept in one file so ``help(AILabClient)`` and the
code read alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import aiohttp

from . import _protocol as protocol
from ._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_DEADLINE,
    DEFAULT_TASK_TIMEOUT,
    ClientSettings,
    LoopBinding,
    check_call_seconds,
    check_max_bytes,
    checked_api_key,
    checked_base_url,
)
from ._dispatch import Call, Dispatcher, RetryPolicy
from ._download import DEFAULT_MAX_DOWNLOAD_BYTES, download_to
from ._endpoints import (
    QUERY_CREDITS,
    SMART_BEAUTY,
    SMART_SKIN,
    Endpoint,
    check_api_path,
    check_task_id,
    generic_call,
)
from ._hooks import checked_hooks, hooks_or_none
from ._images import ImageInput, aprepare_image
from ._map import Outcome, map_outcomes
from ._polling import PollingConfig
from ._ratelimit import AdaptiveRateLimiter, RateLimiter
from ._session import SessionManager
from ._tasks import TaskHandle
from ._tracker import TaskTracker
from .errors import ClientClosedError, ConfigurationError, ValidationError
from .events import EventHook
from .models import (
    ClientStats,
    Credits,
    ImageResult,
    RawResult,
    Secret,
    TrackerStats,
    key_fingerprint,
)
from .telemetry import Telemetry, telemetry_hook

__all__ = ["AILabClient"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


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
        backoff_initial: The backoff cap before the first retry, in seconds, doubling for
            each further retry. Full jitter: each wait is drawn uniformly below the cap; a
            ``Retry-After`` is a floor.
        backoff_max: The ceiling of that cap, in seconds.
        dangerously_allow_plain_http: Allow sending the API key over plain ``http://`` to a
            host that is not this machine. Off: only loopback may use plain HTTP.
        task_timeout: Default seconds ``await task`` waits for a smart-beauty result
            (``None``: no limit). The task itself is not affected.
        trust_env: Let the owned session read ``HTTP(S)_PROXY`` and ``~/.netrc`` from the
            environment (off: it costs CPU on every request, and the key is ours to send).
        polling: Knobs of the smart poller (:class:`PollingConfig`): polls per task, the
            share of the rate budget and of the concurrency polls may use, ...
        clock: The monotonic clock (seconds); injectable so tests never wait for real.
        sleep: The coroutine that waits (``asyncio.sleep``); injectable for tests.
        random: The source of jitter (``random.random``); injectable for tests.
        on_event: A function called with each :mod:`event <ailab_async.events>` the client
            reports (a call started, an attempt answered, a retry, a 429, a task polled,
            ...), or a sequence of them. Called synchronously in the event loop: keep it
            quick. One that raises is logged and ignored.
        telemetry: OpenTelemetry spans and metrics (:mod:`ailab_async.telemetry`): ``True``
            records them when ``opentelemetry-api`` is installed and a tracer or meter
            provider is configured; ``False`` never; a :class:`~ailab_async.telemetry.Telemetry`
            gives the providers.
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
        on_event: EventHook | Iterable[EventHook] | None = None,
        telemetry: bool | Telemetry = True,
    ) -> None:
        # From here on the key lives only in a holder whose repr is '***': an error raised
        # below carries this frame, and a traceback rendered with its locals must not show
        # the key.
        secret: Secret[object] = Secret(
            api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        )
        del api_key
        api_key_secret = checked_api_key(secret)
        url = checked_base_url(
            base_url or os.environ.get(BASE_URL_ENV) or protocol.DEFAULT_BASE_URL,
            allow_plain_http=dangerously_allow_plain_http,
        )
        limiter: RateLimiter | None = None
        if isinstance(rate_limit, RateLimiter):
            limiter, rate_limit = rate_limit, None
        settings = ClientSettings(
            max_concurrency=max_concurrency,
            timeout=timeout,
            deadline=deadline,
            task_timeout=task_timeout,
            max_retries=max_retries,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            retry_ambiguous=retry_ambiguous,
            dangerously_allow_plain_http=dangerously_allow_plain_http,
            trust_env=trust_env,
            clock=clock,
            sleep=sleep,
            random=random,
            polling=polling,
            rate_limit=rate_limit,
        )
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ConfigurationError("session must be an aiohttp.ClientSession")
        hooks = checked_hooks(on_event)

        self._api_key = api_key_secret
        self._base_url = url
        self._max_concurrency = max_concurrency
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._rand = random or _random_source()
        # The loop of the first call: sessions, locks and futures belong to one loop.
        self._binding = LoopBinding()
        self._closed = False
        self._maps_feeding = 0  # client.map generators whose input has not run out yet
        self._sessions = SessionManager(session, pool_size=max_concurrency, trust_env=trust_env)
        self._limiter: RateLimiter = limiter or AdaptiveRateLimiter(
            settings.rate_limit, clock=self._clock, sleep=self._sleep
        )
        self._telemetry = otel = telemetry_hook(
            telemetry,
            rate=self._limiter.current_rate,
            server_address=urlsplit(url).hostname or "",
        )
        if otel is not None:
            hooks.append(otel)
        self._dispatcher = Dispatcher(
            self._sessions,
            base_url=self._base_url,
            api_key=self._api_key.reveal(),
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
            hooks=hooks_or_none(hooks),
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

    # The async-with protocol over aclose(), as every closable here spells it (the journal,
    # the Redis limiter, the simulator): protocol, not repeated knowledge.
    async def __aenter__(self) -> AILabClient:
        self._enter()
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

        Close the client in the event loop that used it. Called from another loop after
        that one ended (``asyncio.run`` twice), it closes what still can be closed and
        marks the client closed; while that loop still runs, it raises
        :class:`ConfigurationError`.
        """
        if self._binding.owner_gone(_running_loop()):
            self._closed = True
            # The owning loop is gone: its tasks and connections died with it. Close what
            # can be closed without it (an idle session closes fine) and move on.
            with contextlib.suppress(RuntimeError):
                await self._tracker.aclose()
            with contextlib.suppress(RuntimeError):
                await self._sessions.aclose()
            self._stop_telemetry()
            return
        self._closed = True
        await self._tracker.aclose()
        await self._sessions.aclose()
        self._stop_telemetry()

    def _stop_telemetry(self) -> None:
        """A closed client's limiter is no longer observed (after the tracker reported its
        last tasks)."""
        if self._telemetry is not None:
            self._telemetry.close()

    @property
    def closed(self) -> bool:
        return self._closed or self._sessions.closed

    def __repr__(self) -> str:
        # Safe on a half-built client too: a traceback rendered with frame locals may call it.
        base_url = getattr(self, "_base_url", "?")
        limiter = getattr(self, "_limiter", None)
        rate = None if limiter is None else limiter.configured_rate
        closed = self.closed if hasattr(self, "_sessions") else None
        return (
            f"AILabClient(base_url={base_url!r}, "
            f"max_concurrency={getattr(self, '_max_concurrency', '?')}, "
            f"rate_limit={rate!r}, api_key='***', closed={closed})"
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def key_fingerprint(self) -> str:
        """A fingerprint of the API key (an HMAC, never the key): tells two keys apart, so a
        batch journal can refuse to trust another account's task ids."""
        return key_fingerprint(self._api_key.reveal())

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
        retouch_degree: float | None = None,
        whitening_degree: float | None = None,
        *,
        deadline: float | None = None,
    ) -> ImageResult:
        """AI Skin Beauty: smooth skin (``retouch_degree``) and whiten (``whitening_degree``).

        Both degrees are in [0, 1.5]. A degree left out (``None``) is not sent, and the API
        applies its default, 1.0. The image (JPEG/PNG, at most 6 MiB, sides above 128 and
        below 5000 pixels) is a path, bytes or a binary file object; it is checked before
        upload, and a path is read from disk again for a retry.

        >>> result = await client.smart_skin("face.jpg", retouch_degree=0.6)  # doctest: +SKIP
        >>> data = await client.download(result)  # doctest: +SKIP
        """
        envelope = await self._send(
            SMART_SKIN,
            image,
            deadline,
            retouch_degree=retouch_degree,
            whitening_degree=whitening_degree,
        )
        return protocol.parse_image_result(envelope)

    async def submit_smart_beauty(
        self,
        image: ImageInput,
        beauty_level: float | None = None,
        multi_face: bool = False,
        *,
        deadline: float | None = None,
    ) -> TaskHandle:
        """Smart Beauty: submit the task and return its handle at once.

        ``beauty_level`` is in [0, 1] (left out: not sent, the API applies 1.0);
        ``multi_face=True`` beautifies every face (fewer than 18 recommended), otherwise only
        the largest. The image is JPEG/PNG/BMP, at most 5 MiB, below 4096x4096. Persist
        ``task.task_id``: it is what you paid for.

        >>> task = await client.submit_smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
        >>> save(task.task_id)  # doctest: +SKIP
        >>> result = await task  # or: await task.result(timeout=120)  # doctest: +SKIP
        """
        envelope = await self._send(
            SMART_BEAUTY, image, deadline, beauty_level=beauty_level, multi_face=multi_face
        )
        return self._tracker.track(protocol.parse_task_id(envelope), fresh=True)

    async def smart_beauty(
        self,
        image: ImageInput,
        beauty_level: float | None = None,
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
        check_call_seconds(timeout, "timeout")
        task = await self.submit_smart_beauty(image, beauty_level, multi_face, deadline=deadline)
        return await task.result(timeout)

    def track(self, task_id: str, *, submitted_at: dt.datetime | None = None) -> TaskHandle:
        """Pick up a smart-beauty task submitted earlier (another process, a restart).

        Tracking an id that is already tracked returns the same handle. Give
        ``submitted_at`` (a timezone-aware ``datetime``) when you know it: polls are then
        placed from experience. A time in the future (clocks of two machines disagree)
        counts as "just submitted". Call it from inside the event loop that uses the client.

        >>> task = client.track(saved_task_id)  # doctest: +SKIP
        >>> result = await task  # doctest: +SKIP
        """
        self._enter()
        check_task_id(task_id)
        return self._tracker.track(task_id, submitted_at=submitted_at)  # checks submitted_at

    # -- any other endpoint ---------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        files: Mapping[str, ImageInput] | None = None,
        fields: Mapping[str, str | int | float] | None = None,
        params: Mapping[str, str | int | float] | None = None,
        billed: bool = True,
        deadline: float | None = None,
    ) -> RawResult:
        """Call any endpoint of the API through this client's engine; its payload as JSON.

        The same road as the typed methods: concurrency slots, the rate limiter, retries
        with backoff, the deadline, typed errors. ``billed=True`` (the default: most
        endpoints cost credits) counts a retry after a failure the server may have
        processed as ambiguous, and obeys ``retry_ambiguous``; give ``billed=False`` for a
        free call (a query), which is always safe to retry.

        ``path`` is the endpoint's path under the client's ``base_url`` (``/api/...``): URLs,
        ``//host``, ``..``, escapes and backslashes are refused, so the API key only ever
        goes to the API host. ``files`` holds at most one image (path, bytes or binary file
        object; JPEG/PNG/BMP, checked by its first bytes; a path is read again for a retry);
        ``fields`` are the form fields of a POST, ``params`` the query string; values are
        strings, integers or floats. A GET takes ``params`` only.

        >>> result = await client.call(
        ...     "POST", "/api/cutout/portrait/portrait-background-removal",
        ...     files={"image": "face.jpg"}, fields={"return_form": "mask"},
        ... )  # doctest: +SKIP
        >>> result.data["image_url"], result.request_id  # doctest: +SKIP
        """
        envelope = await self._send_any(
            method, path, files, fields, params, billed, deadline, task=False
        )
        return protocol.parse_raw_result(envelope)

    # Its parameters repeat call()'s on purpose: each public method spells its signature out
    # (help(), the reference, type checkers); both hand them to _send_any at once.
    async def submit_task(
        self,
        method: str,
        path: str,
        *,
        files: Mapping[str, ImageInput] | None = None,
        fields: Mapping[str, str | int | float] | None = None,
        params: Mapping[str, str | int | float] | None = None,
        billed: bool = True,
        deadline: float | None = None,
    ) -> TaskHandle[RawResult]:
        """Submit to any endpoint that answers with a ``task_id``; its handle at once.

        Arguments as for :meth:`call` (give the fields the endpoint needs to run as a
        task, such as ``task_type="async"``). The task is polled by this client's tracker
        (``query-async-task-result``, within the same budget as every other task); awaiting
        the handle gives a :class:`RawResult` of the finished task's answer. Persist
        ``task.task_id``, and pick it up later with :meth:`track_task`.

        >>> task = await client.submit_task(
        ...     "POST", "/api/portrait/effects/smart-beauty",
        ...     files={"image_target": "face.jpg"}, fields={"task_type": "async"},
        ... )  # doctest: +SKIP
        >>> result = await task  # doctest: +SKIP
        """
        envelope = await self._send_any(
            method, path, files, fields, params, billed, deadline, task=True
        )
        return self._tracker.track(protocol.parse_task_id(envelope), fresh=True, endpoint=path)

    def track_task(
        self,
        task_id: str,
        *,
        submitted_at: dt.datetime | None = None,
        path: str | None = None,
    ) -> TaskHandle[RawResult]:
        """Pick up a task of :meth:`submit_task` submitted earlier (another process, a
        restart): like :meth:`track`, with a :class:`RawResult` as its result. ``path``
        (the endpoint that started it) lets its polls follow what this client learned of
        that endpoint's tasks.

        >>> task = client.track_task(saved_task_id)  # doctest: +SKIP
        """
        self._enter()
        check_task_id(task_id)
        endpoint = "" if path is None else check_api_path(path)
        return self._tracker.track(task_id, submitted_at=submitted_at, endpoint=endpoint)

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
        with ``error`` set; it never stops the others. When ``items`` runs out, the rate
        limiter is told (if it can be: see ``RateLimiter``): the pace stops probing for more
        than the server took, as only the requests in progress are left (not while another
        ``map`` on this client still takes input).

        >>> async for outcome in client.map(client.smart_skin, paths, retouch_degree=0.6):
        ...     print(outcome.item, outcome.result or outcome.error)  # doctest: +SKIP
        """
        return self._map(fn, items, concurrency or 2 * self._max_concurrency, ordered, kwargs)

    async def _map(
        self,
        fn: Callable[..., Awaitable[ResultT]],
        items: Iterable[ItemT] | AsyncIterable[ItemT],
        concurrency: int,
        ordered: bool,
        kwargs: dict[str, Any],
    ) -> AsyncGenerator[Outcome[ItemT, ResultT], None]:
        # When the input runs out, a limiter that can tells its pace: no request comes
        # beyond those in progress (see RateLimiter). Not while another map on this client
        # still takes input: its requests are still to come.
        feeding = True
        self._maps_feeding += 1

        def exhausted(in_progress: int) -> None:
            nonlocal feeding
            feeding = False
            self._maps_feeding -= 1
            wind_down = getattr(self._limiter, "wind_down", None)
            if not self._maps_feeding and callable(wind_down):
                wind_down(in_progress)

        outcomes = map_outcomes(
            fn,
            items,
            concurrency=concurrency,
            ordered=ordered,
            kwargs=kwargs,
            on_exhausted=exhausted,
        )
        try:
            async with contextlib.aclosing(outcomes):
                async for outcome in outcomes:
                    yield outcome
        finally:
            if feeding:
                self._maps_feeding -= 1

    @property
    def tracker(self) -> TrackerStats:
        """A snapshot of the task tracker: pending tasks, polls sent, the learned poll plan."""
        return self._tracker.stats()

    async def credits(self, *, deadline: float | None = None) -> Credits:
        """The account's credit balances (``query-credits``; free).

        >>> credits = await client.credits()  # doctest: +SKIP
        >>> credits.balance  # doctest: +SKIP
        1200.0
        """
        envelope = await self._send(QUERY_CREDITS, None, deadline)
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
        response must be an image, and at most ``max_bytes`` are accepted. ``dest`` is a file
        path (missing folders are created); an existing folder, or a path under an existing
        file, is refused before anything is fetched.

        >>> path = await client.download(result, "out/face.png")  # doctest: +SKIP
        """
        self._enter()
        check_max_bytes(max_bytes)
        check_call_seconds(deadline, "deadline")
        target = None if dest is None else _checked_destination(dest)
        return await download_to(
            self._dispatcher, result, target, max_bytes=max_bytes, deadline=deadline
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
        self._enter()
        check_max_bytes(max_bytes)
        check_call_seconds(deadline, "deadline")
        if not callable(destination):
            raise ValidationError(
                "destination must be a function of the content type returning a Path",
                input="destination",
                rule="type",
            )
        written = await download_to(
            self._dispatcher, result, destination, max_bytes=max_bytes, deadline=deadline
        )
        assert isinstance(written, Path)
        return written

    async def _send(
        self, endpoint: Endpoint, image: ImageInput | None, deadline: float | None, **params: Any
    ) -> protocol.Envelope:
        """One API call built from its table entry: every check first, then the request.

        A parameter given as ``None`` is left out: the API applies its default.
        """
        self._enter()
        fields = endpoint.encode(
            {name: value for name, value in params.items() if value is not None}
        )
        check_call_seconds(deadline, "deadline")
        prepared = None
        if endpoint.image_rules is not None:
            # A missing image (None) is refused there, like any other non-image.
            prepared = await aprepare_image(image, endpoint.image_rules)  # type: ignore[arg-type]
        return await self._dispatcher.call(Call(endpoint, fields, prepared), deadline=deadline)

    async def _send_any(
        self,
        method: str,
        path: str,
        files: Mapping[str, ImageInput] | None,
        fields: Mapping[str, str | int | float] | None,
        params: Mapping[str, str | int | float] | None,
        billed: bool,
        deadline: float | None,
        *,
        task: bool,
    ) -> protocol.Envelope:
        """A generic call: every check first (:func:`generic_call`), then the request."""
        self._enter()
        checked = generic_call(
            method, path, files=files, fields=fields, params=params, billed=billed, task=task
        )
        check_call_seconds(deadline, "deadline")
        endpoint = checked.endpoint
        prepared = None
        if endpoint.image_rules is not None:
            prepared = await aprepare_image(checked.file, endpoint.image_rules)  # type: ignore[arg-type]
        call = Call(endpoint, checked.fields, prepared, query=checked.query)
        return await self._dispatcher.call(call, deadline=deadline)

    def _enter(self) -> None:
        """Refuse a call on a closed client or from a foreign loop; bind the first loop."""
        if self.closed:
            raise ClientClosedError("this AILabClient is closed; create a new one")
        self._binding.enter(_running_loop())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _checked_destination(dest: str | os.PathLike[str]) -> Path:
    """``dest`` as a Path, refused early if writing a file there cannot work."""
    if not isinstance(dest, (str, os.PathLike)):
        raise ValidationError(
            f"dest must be a path, got {type(dest).__name__}", input="dest", rule="type"
        )
    path = Path(dest)
    shown = str(path)
    try:
        problem = _destination_problem(path)
    except ValueError:  # a NUL byte, for one
        problem = "is not a valid path"
    if problem is not None:
        raise ValidationError(f"dest {shown!r} {problem}", input=shown, rule="destination")
    return path


def _destination_problem(path: Path) -> str | None:
    try:
        if path.is_dir():
            return "is a directory; give the path of the file to write"
        # The nearest existing ancestor must be a directory: "file.txt/out.png" cannot be
        # created.
        for parent in path.absolute().parents:
            if parent.is_dir():
                return None
            if parent.exists():
                return f"lies under {str(parent)!r}, which is not a directory"
    except OSError:  # unreadable: let the write itself report it
        return None
    return None


def _random_source() -> Callable[[], float]:
    # Jitter needs no cryptographic strength; a private generator keeps user seeds intact.
    return random.Random().random  # noqa: S311
