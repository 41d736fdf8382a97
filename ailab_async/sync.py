"""The blocking facade: the SDK for code that is not async (scripts, Django/Flask views,
Celery workers, plain notebooks).

:class:`AILabClient` here is :class:`ailab_async.AILabClient` behind blocking methods: it
runs one event loop in a background thread (:mod:`._portal`, anyio's blocking portal) and
each method runs the async client's call there and waits for it. So the two behave alike —
the same arguments and checks, the same typed errors (the very exception objects), the same
limits, retries and task tracking — and this module holds only what blocking adds: the
wrapping, a handle whose :meth:`TaskHandle.result` blocks, and ``map`` as a plain iterator.

>>> from ailab_async.sync import AILabClient
>>> with AILabClient() as client:  # doctest: +SKIP
...     result = client.smart_skin("face.jpg", retouch_degree=0.6)
...     client.download(result, "face-smooth.png")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import math
import os
import threading
import warnings
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Generator,
    Iterable,
    Mapping,
)
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

import anyio
import anyio.to_thread

from . import client as _async
from ._config import DEFAULT_DEADLINE, DEFAULT_TASK_TIMEOUT
from ._download import DEFAULT_MAX_DOWNLOAD_BYTES
from ._images import ImageInput
from ._map import Outcome
from ._polling import PollingConfig
from ._portal import LoopThread
from ._ratelimit import RateLimiter
from ._tasks import ResultT
from ._tasks import TaskHandle as _AsyncTaskHandle
from ._threads import to_thread
from .errors import ClientClosedError, ConfigurationError, ValidationError
from .events import EventHook
from .models import ClientStats, Credits, ImageResult, RawResult, TaskStatus, TrackerStats
from .telemetry import Telemetry

__all__ = ["AILabClient", "TaskHandle"]

_ItemT = TypeVar("_ItemT")
_ResultT = TypeVar("_ResultT")

#: Facade methods ``map`` runs as their async twins, in the loop (no thread per item).
_MAPPED_AS_ASYNC = frozenset({"smart_skin", "smart_beauty"})


class AILabClient:
    """A blocking client for the AILabTools portrait-effects API.

    The same client as :class:`ailab_async.AILabClient`, for code without an event loop:
    every method blocks until its call is done. It runs its own event loop in a background
    thread; close it (``with``, or :meth:`close`) to stop that thread::

        from ailab_async.sync import AILabClient

        with AILabClient() as client:                # key from AILAB_API_KEY
            result = client.smart_skin("face.jpg", retouch_degree=0.8)
            client.download(result, "face-smooth.png")

    Share one client across your threads (a web server's, a worker's): it is thread-safe,
    and its connection pool, concurrency limit and rate budget are shared by all of them.

    The arguments are those of :class:`ailab_async.AILabClient`, without ``session`` (an
    aiohttp session belongs to one event loop; this client makes its own). ``sleep`` and a
    :class:`RateLimiter` object run in the client's loop thread, and so do ``on_event`` hooks.

    Errors are the async client's, unchanged. A thread interrupted while it waits
    (``KeyboardInterrupt``) cancels its call; a call that hangs is bounded by ``deadline``
    (and smart-beauty waits by ``task_timeout``). :meth:`close` ends calls still in
    progress in other threads with :class:`~ailab_async.ClientClosedError`.
    """

    # Deliberately the async client's signature repeated, minus ``session``: users read
    # (and their editors complete) the parameters here. test_sync checks both stay alike.
    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        max_concurrency: int = 8,
        rate_limit: float | RateLimiter | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
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
        # Every setting is checked here, before a thread is started for a client that
        # cannot work.
        self._client = _async.AILabClient(
            api_key,
            base_url,
            max_concurrency,
            rate_limit,
            timeout,
            max_retries,
            deadline=deadline,
            retry_ambiguous=retry_ambiguous,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            dangerously_allow_plain_http=dangerously_allow_plain_http,
            task_timeout=task_timeout,
            polling=polling,
            trust_env=trust_env,
            clock=clock,
            sleep=sleep,
            random=random,
            on_event=on_event,
            telemetry=telemetry,
        )
        del api_key  # held by the async client only (see its constructor)
        self._loop = LoopThread(self._client.aclose)
        # Forgotten, not closed: warn like an unclosed file, and stop the thread anyway.
        self._finalizer = weakref.finalize(self, _close_forgotten, self._loop)
        self._finalizer.atexit = False  # at exit, _portal closes it without a warning

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> AILabClient:
        if self.closed:
            raise ClientClosedError("this AILabClient is closed; create a new one")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the async client, stop the event loop and join its thread. Safe to call
        twice, and from any thread (except from inside the client's own loop).

        Calls still in progress in other threads raise
        :class:`~ailab_async.ClientClosedError` (``ambiguous`` when a billed request may
        have been processed); waiters of smart-beauty tasks too, and the remote tasks go
        on: track them again by ``task_id`` with a new client.
        """
        self._loop.close()
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        return self._loop.stopped

    def __repr__(self) -> str:
        return "ailab_async.sync." + repr(self._client)

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def key_fingerprint(self) -> str:
        """A fingerprint of the API key (an HMAC, never the key): tells two keys apart."""
        return self._client.key_fingerprint

    @property
    def max_concurrency(self) -> int:
        return self._client.max_concurrency

    @property
    def stats(self) -> ClientStats:
        """What the dispatcher has done so far: attempts, retries, ambiguous retries, ..."""
        return self._loop.peek(lambda: self._client.stats)

    @property
    def tracker(self) -> TrackerStats:
        """A snapshot of the task tracker: pending tasks, polls sent, the learned poll plan."""
        return self._loop.peek(lambda: self._client.tracker)

    # -- API calls -----------------------------------------------------------------------
    # Their signatures repeat the async client's on purpose (test_sync checks they match);
    # what each argument means is documented there, once.

    def smart_skin(
        self,
        image: ImageInput,
        retouch_degree: float | None = None,
        whitening_degree: float | None = None,
        *,
        deadline: float | None = None,
    ) -> ImageResult:
        """AI Skin Beauty, blocking: see :meth:`ailab_async.AILabClient.smart_skin`.

        >>> result = client.smart_skin("face.jpg", retouch_degree=0.6)  # doctest: +SKIP
        """
        return self._loop.run(
            functools.partial(
                self._client.smart_skin,
                image,
                retouch_degree,
                whitening_degree,
                deadline=deadline,
            )
        )

    def submit_smart_beauty(
        self,
        image: ImageInput,
        beauty_level: float | None = None,
        multi_face: bool = False,
        *,
        deadline: float | None = None,
    ) -> TaskHandle:
        """Smart Beauty: submit the task and return its handle at once; see
        :meth:`ailab_async.AILabClient.submit_smart_beauty`. Persist ``task.task_id``.

        >>> task = client.submit_smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
        >>> result = task.result(timeout=120)  # doctest: +SKIP
        """
        handle = self._loop.run(
            functools.partial(
                self._client.submit_smart_beauty,
                image,
                beauty_level,
                multi_face,
                deadline=deadline,
            )
        )
        return TaskHandle(handle, self._loop)

    def smart_beauty(
        self,
        image: ImageInput,
        beauty_level: float | None = None,
        multi_face: bool = False,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> ImageResult:
        """Smart Beauty, submitted and waited for; see
        :meth:`ailab_async.AILabClient.smart_beauty`.

        >>> result = client.smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
        """
        return self._loop.run(
            functools.partial(
                self._client.smart_beauty,
                image,
                beauty_level,
                multi_face,
                timeout=timeout,
                deadline=deadline,
            )
        )

    def track(self, task_id: str, *, submitted_at: dt.datetime | None = None) -> TaskHandle:
        """Pick up a smart-beauty task submitted earlier; see
        :meth:`ailab_async.AILabClient.track`.

        >>> result = client.track(saved_task_id).result()  # doctest: +SKIP
        """
        handle = self._loop.call(
            functools.partial(self._client.track, task_id, submitted_at=submitted_at)
        )
        return TaskHandle(handle, self._loop)

    def call(
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
        """Call any endpoint of the API, blocking; see :meth:`ailab_async.AILabClient.call`.

        >>> client.call("GET", "/api/common/query-credits", billed=False).data  # doctest: +SKIP
        """
        return self._loop.run(
            functools.partial(
                self._client.call,
                method,
                path,
                files=files,
                fields=fields,
                params=params,
                billed=billed,
                deadline=deadline,
            )
        )

    # Like call() above, by design: each blocking method mirrors its async twin's signature.
    def submit_task(
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
        """Submit a task to any endpoint; its handle at once. See
        :meth:`ailab_async.AILabClient.submit_task`. Persist ``task.task_id``."""
        handle = self._loop.run(
            functools.partial(
                self._client.submit_task,
                method,
                path,
                files=files,
                fields=fields,
                params=params,
                billed=billed,
                deadline=deadline,
            )
        )
        return TaskHandle(handle, self._loop)

    def track_task(
        self,
        task_id: str,
        *,
        submitted_at: dt.datetime | None = None,
        path: str | None = None,
    ) -> TaskHandle[RawResult]:
        """Pick up a task of :meth:`submit_task` submitted earlier; see
        :meth:`ailab_async.AILabClient.track_task`."""
        handle = self._loop.call(
            functools.partial(
                self._client.track_task, task_id, submitted_at=submitted_at, path=path
            )
        )
        return TaskHandle(handle, self._loop)

    def credits(self, *, deadline: float | None = None) -> Credits:
        """The account's credit balances (free); see :meth:`ailab_async.AILabClient.credits`.

        >>> client.credits().balance  # doctest: +SKIP
        1200.0
        """
        return self._loop.run(functools.partial(self._client.credits, deadline=deadline))

    @overload
    def download(
        self,
        result: ImageResult | str,
        dest: None = None,
        *,
        max_bytes: int = ...,
        deadline: float | None = ...,
    ) -> bytes: ...

    @overload
    def download(
        self,
        result: ImageResult | str,
        dest: str | os.PathLike[str],
        *,
        max_bytes: int = ...,
        deadline: float | None = ...,
    ) -> Path: ...

    def download(
        self,
        result: ImageResult | str,
        dest: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        deadline: float | None = None,
    ) -> bytes | Path:
        """Fetch a result image: its bytes, or, given ``dest``, write it there atomically;
        see :meth:`ailab_async.AILabClient.download`.

        >>> path = client.download(result, "out/face.png")  # doctest: +SKIP
        """
        fetch: Callable[[], Awaitable[bytes | Path]] = functools.partial(
            self._client.download, result, dest, max_bytes=max_bytes, deadline=deadline
        )
        return self._loop.run(fetch)

    @overload
    def map(
        self,
        fn: Callable[..., Awaitable[_ResultT]],
        items: Iterable[_ItemT],
        *,
        concurrency: int | None = ...,
        ordered: bool = ...,
        **kwargs: Any,
    ) -> Generator[Outcome[_ItemT, _ResultT], None, None]: ...

    @overload
    def map(
        self,
        fn: Callable[..., _ResultT],
        items: Iterable[_ItemT],
        *,
        concurrency: int | None = ...,
        ordered: bool = ...,
        **kwargs: Any,
    ) -> Generator[Outcome[_ItemT, _ResultT], None, None]: ...

    def map(
        self,
        fn: Callable[..., _ResultT] | Callable[..., Awaitable[_ResultT]],
        items: Iterable[_ItemT],
        *,
        concurrency: int | None = None,
        ordered: bool = False,
        **kwargs: Any,
    ) -> Generator[Outcome[_ItemT, _ResultT], None, None]:
        """Run ``fn(item, **kwargs)`` over ``items``; yield an ``Outcome`` per item.

        As :meth:`ailab_async.AILabClient.map` (the same bounded concurrency, ``ordered``
        and failures as outcomes), as a plain iterator. ``items`` is consumed lazily; an
        iterable that is not a collection (a generator, say) is read in a worker thread, so
        it may block. ``fn`` is this client's ``smart_skin`` or ``smart_beauty`` (run in the
        loop), a coroutine function (run in the loop: it must not call this client's
        blocking methods), or any other function taking an item first: it runs in a worker
        thread, one per item in progress, and may call this client's methods::

            def retouch(path):
                result = client.smart_skin(path, retouch_degree=0.6)
                return client.download(result, out_dir / path.name)

            for outcome in client.map(retouch, paths, concurrency=16):
                print(outcome.item, outcome.result or outcome.error)

        Leaving the loop early cancels the work in progress once the iterator is closed:
        at once in CPython when nothing else refers to it; call its ``close()`` (or wrap it
        in ``contextlib.closing``) to be sure. A function running in a worker thread cannot be
        interrupted: closing waits for the items it is working on.
        """
        if self.closed:
            raise ClientClosedError("this AILabClient is closed; create a new one")
        source: Iterable[_ItemT] | AsyncIterator[_ItemT] = (
            items if isinstance(items, Collection) else _read_in_thread(items)
        )
        outcomes = self._client.map(
            self._as_coroutine_function(fn),
            source,
            concurrency=concurrency,
            ordered=ordered,
            **kwargs,
        )
        return self._iterate(outcomes)

    # -- internals -----------------------------------------------------------------------

    def _as_coroutine_function(
        self, fn: Callable[..., _ResultT] | Callable[..., Awaitable[_ResultT]]
    ) -> Callable[..., Awaitable[_ResultT]]:
        """What the async ``map`` runs for ``fn``: its async twin, itself, or a thread."""
        name = getattr(fn, "__name__", "")
        if getattr(fn, "__self__", None) is self and name in _MAPPED_AS_ASYNC:
            twin: Callable[..., Awaitable[_ResultT]] = getattr(self._client, name)
            return twin
        if inspect.iscoroutinefunction(fn):
            return fn
        if not callable(fn):
            raise ValidationError(
                f"map needs a function, got {type(fn).__name__}", input="fn", rule="type"
            )
        plain: Callable[..., _ResultT] = fn  # type: ignore[assignment]
        # Their own thread limit, without bound (map's concurrency is the bound): the
        # shared one would deadlock once every token is held by a function waiting for
        # this client, whose image checks need a token too. So anyio directly, not
        # _threads.to_thread, which always uses the shared one.
        limiter: anyio.CapacityLimiter | None = None

        async def in_thread(item: object, **kwargs: Any) -> _ResultT:
            nonlocal limiter
            if limiter is None:
                limiter = anyio.CapacityLimiter(math.inf)
            call = functools.partial(plain, item, **kwargs)
            return await anyio.to_thread.run_sync(call, limiter=limiter)

        return in_thread

    def _iterate(
        self, outcomes: AsyncGenerator[Outcome[_ItemT, _ResultT], None]
    ) -> Generator[Outcome[_ItemT, _ResultT], None, None]:
        try:
            while True:
                more, outcome = self._loop.run(_next_or_end, outcomes)
                if not more:
                    return
                assert outcome is not None
                yield outcome
        finally:
            # Left early: cancel the work in flight. Nothing to do once the loop has
            # stopped (it finalised the generator), from the loop's own thread (garbage
            # collected there: asyncio finalises it), or while an interrupted step is
            # still winding it down ("already running").
            with contextlib.suppress(ClientClosedError, ConfigurationError, RuntimeError):
                self._loop.run(outcomes.aclose)


class TaskHandle(Generic[ResultT]):
    """A task: :meth:`result` blocks until its result is there (a smart-beauty task's
    :class:`~ailab_async.ImageResult`; a :class:`~ailab_async.RawResult` for one of
    :meth:`AILabClient.submit_task`).

    The blocking view of :class:`ailab_async.TaskHandle`. ``task_id`` is what you paid for:
    persist it, and pick the task up later with ``client.track(task_id)``.

    >>> task = client.submit_smart_beauty("face.jpg", beauty_level=0.7)  # doctest: +SKIP
    >>> result = task.result()  # doctest: +SKIP
    """

    __slots__ = ("_handle", "_loop", "task_id")

    def __init__(self, handle: _AsyncTaskHandle[ResultT], loop: LoopThread) -> None:
        self.task_id = handle.task_id
        self._handle = handle
        self._loop = loop

    @property
    def status(self) -> TaskStatus:
        """``QUEUED``/``PROCESSING`` as last polled, ``SUCCEEDED``, or ``FAILED`` once it
        ended without a result (:meth:`result` raises the reason)."""
        return self._loop.peek(lambda: self._handle.status)

    def done(self) -> bool:
        """Whether the task has a result or has failed."""
        return self._loop.peek(self._handle.done)

    def result(self, timeout: float | None = None) -> ResultT:
        """Wait for the result, at most ``timeout`` seconds (default: the client's
        ``task_timeout``); see :meth:`ailab_async.TaskHandle.result`.

        On :class:`~ailab_async.TaskTimeoutError` (or an interruption of the waiting
        thread) only the wait ends: the task goes on, and ``result()`` can be called again.
        """
        return self._loop.run(self._handle.result, timeout)

    def __repr__(self) -> str:
        return f"TaskHandle(task_id={self.task_id!r}, status={self.status.name.lower()})"


async def _next_or_end(
    outcomes: AsyncGenerator[Outcome[_ItemT, _ResultT], None],
) -> tuple[bool, Outcome[_ItemT, _ResultT] | None]:
    """The next outcome, without letting ``StopAsyncIteration`` cross the thread."""
    try:
        return True, await outcomes.__anext__()
    except StopAsyncIteration:
        return False, None


async def _read_in_thread(items: Iterable[_ItemT]) -> AsyncGenerator[_ItemT, None]:
    """``items`` read in a worker thread, one item at a time: a generator may block."""
    iterator = await to_thread(iter, items)
    end = object()
    while True:
        # Abandoned on cancel: a source blocked for good (a queue nobody fills) must not
        # keep the map from closing.
        item = await to_thread(next, iterator, end, abandon_on_cancel=True)
        if item is end:
            return
        yield item  # type: ignore[misc]


def _close_forgotten(loop: LoopThread) -> None:
    """The finaliser of a client collected without being closed."""
    warnings.warn(
        "an ailab_async.sync.AILabClient was never closed; use `with` or call close()",
        ResourceWarning,
        stacklevel=1,
    )
    if loop.in_own_thread():  # collected in its own loop: close from elsewhere
        threading.Thread(target=loop.close, name="ailab-close").start()
    else:
        loop.close()
