"""The policy every request follows: bounded, rate-limited, retried, deadlined.

``Dispatcher.call`` sends an API call and returns its success envelope or raises a typed
error. Order of gates for each attempt: the concurrency semaphore (so at most
``max_concurrency`` requests are in flight), then the adaptive rate limiter, then the
transport. The slot is held only while an attempt runs, never during backoff, and is
released at once when the caller is cancelled (the attempt runs in the caller's own task:
nothing is left behind).

This module decides; it moves no bytes. Each attempt goes to
:class:`~ailab_async._transport.Transport` (the only code that touches aiohttp, and the
keeper of the security rules of the wire); its answer is classified by
:func:`~ailab_async._protocol.classify_response`; retry decisions are pure
(:class:`RetryPolicy`). The loop here only applies them, and keeps the stats and the log.

Against servers we did not write, the promise is: every call ends in a result or a typed
:class:`~ailab_async.errors.AILabError` within its deadline, and the key never leaks (no
frame here holds it: the transport keeps it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import attrs

from . import errors, events
from ._aio import Slots
from ._endpoints import Endpoint
from ._hooks import Hooks, rate_moved
from ._images import PreparedImage
from ._protocol import MAX_RETRY_AFTER, Envelope, classify_response
from ._ratelimit import Clock, RateLimiter, Sleeper, limiter_reports
from ._session import SessionManager
from ._transport import (
    DOWNLOAD,
    Request,
    StreamedResponse,
    Transport,
    Upload,
    raise_without_context,
)
from .models import ClientStats, redact_url

logger = logging.getLogger("ailab_async")

T = TypeVar("T")
A = TypeVar("A")


# The hard bound on a call's waits. On Python 3.11+ it is ``asyncio.timeout``: about 5 us
# to enter and leave, where anyio's cancel scope costs 15-39 us. An API call does not pay it
# on its common path: it is entered only around a wait that may be long (a slot or the rate
# limiter, when either is busy), and each attempt is bounded by the timeout aiohttp is
# given, never past the deadline; a download (whose reader may wait on other things) runs
# whole inside one. Its cancellation is edge-triggered, and aiohttp's per-attempt timer
# cancels the same task; when both fire at once aiohttp counts with ``Task.uncancel`` and
# lets ours through, and the loop also stops at the next attempt boundary once the scope has
# expired (``tests/test_wire.py`` races the two). Python 3.10 has no ``uncancel``: there,
# anyio's level-triggered scope (re-delivered until it exits), whose cancellation cannot be
# lost.
if sys.version_info >= (3, 11):
    _deadline_scope = asyncio.timeout
else:

    class _deadline_scope:
        """anyio's ``fail_after`` behind ``asyncio.timeout``'s face."""

        def __init__(self, budget: float) -> None:
            self._scope = anyio.fail_after(budget)

        async def __aenter__(self) -> _deadline_scope:
            self._scope.__enter__()
            return self

        async def __aexit__(self, *exc_info: Any) -> bool | None:
            return self._scope.__exit__(*exc_info)

        @staticmethod
        def expired() -> bool:
            return False  # anyio re-delivers its cancellation: nothing to look at


class _Unscoped:
    """In place of a deadline scope around a call whose attempts bound themselves."""

    async def __aenter__(self) -> _Unscoped:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @staticmethod
    def expired() -> bool:
        return False


_UNSCOPED = _Unscoped()


@attrs.frozen
class RetryPolicy:
    """When to retry and how long to wait: exponential backoff with full jitter.

    ``max_retries`` bounds retries after failures the server may have seen (5xx, transport
    errors). ``429 EXCEEDING_LIMITS`` answers are safe to repeat (the API refused the request
    unprocessed), so they are bounded by the call's deadline instead: a burst far above the
    account's limit completes rather than failing.
    """

    max_retries: int = 4
    base_delay: float = 1.0
    max_delay: float = 30.0
    #: Retry after failures where the server may already have processed (billed) the call.
    retry_ambiguous: bool = True
    #: The longest ``Retry-After`` honoured, in seconds. A server asking for more (a
    #: misconfigured gateway sending ``Retry-After: 1000000000``) gets this; it is also what
    #: the rate limiter is told, so one bad header cannot stall every process for years.
    #: A wait that would pass the call's deadline ends the call at once instead.
    max_retry_after: float = MAX_RETRY_AFTER

    def delay(self, retry_number: int, retry_after: float | None, rand: float) -> float:
        """Seconds before retry number ``retry_number`` (1-based); ``rand`` in [0, 1).

        Full jitter (uniform in [0, cap]) spreads synchronised clients apart; a server's
        ``Retry-After`` is a floor, never shortened.
        """
        cap = min(self.max_delay, self.base_delay * 2 ** min(retry_number - 1, 64))
        wait: float = rand * cap
        if retry_after is not None:
            wait = max(wait, self.capped_retry_after(retry_after))
        return wait

    def capped_retry_after(self, retry_after: float) -> float:
        """``retry_after`` bounded to ``[0, max_retry_after]``."""
        return min(max(0.0, retry_after), self.max_retry_after)

    def is_ambiguous(self, endpoint: Endpoint, error: errors.AILabError) -> bool:
        """Whether a failed attempt of ``endpoint`` may have been processed and billed."""
        if not endpoint.billed:
            return False
        if isinstance(error, errors.TransportError):
            return error.ambiguous
        # A cut-off body or a gateway's page: the API may have done the work behind it.
        return isinstance(error, errors.MalformedResponseError)

    def should_retry(
        self, endpoint: Endpoint, error: errors.AILabError, retries_so_far: int
    ) -> bool:
        if not error.retryable:
            return False
        if self.is_ambiguous(endpoint, error) and not self.retry_ambiguous:
            return False
        if isinstance(error, errors.RateLimitedError):
            return True
        return retries_so_far < self.max_retries


@attrs.define  # made for every call: slotted, never changed once made (not frozen: cheaper)
class Call:
    """One API call: the endpoint, its query (GET) or form (POST) fields, its image if any,
    and, for a POST, the query string (``AILabClient.call``'s ``params``)."""

    endpoint: Endpoint
    fields: Sequence[tuple[str, str]] = ()
    image: PreparedImage | None = None
    query: Sequence[tuple[str, str]] = ()


class Dispatcher:
    """Sends every request of one client through one semaphore, one limiter, one policy."""

    def __init__(
        self,
        sessions: SessionManager,
        *,
        base_url: str,
        api_key: str,
        max_concurrency: int,
        limiter: RateLimiter,
        timeout: float,
        deadline: float,
        policy: RetryPolicy,
        clock: Clock | None = None,
        sleep: Sleeper | None = None,
        rand: Callable[[], float] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self._transport = Transport(sessions, api_key=api_key)
        self._base_url = base_url.rstrip("/")
        self._slots = Slots(max_concurrency)
        self._limiter = limiter
        # Success and release reports with the send time (adapting older custom limiters).
        self._limiter_success, self._limiter_release = limiter_reports(limiter)
        # A limiter that can grant a free slot without awaiting (the in-process one) does,
        # and an API call then needs no deadline scope for it.
        try_acquire = getattr(limiter, "try_acquire", None)
        self._try_acquire: Callable[[], float | None] | None = (
            try_acquire if callable(try_acquire) else None
        )
        self._timeout = timeout
        self._deadline = deadline
        self._policy = policy
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._rand = rand or random.random
        self._in_flight = 0
        self._max_in_flight = 0
        self._requests = 0
        self._attempts = 0
        self._retries = 0
        self._ambiguous_retries = 0
        # Events: None when no hook is installed (each report point tests only that).
        self._hooks = hooks
        self._call_ids = itertools.count(1)
        self._reported_rate = limiter.current_rate()
        self._server = _host_and_port(self._base_url)

    # -- public --------------------------------------------------------------------------

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @property
    def hooks(self) -> Hooks | None:
        """The client's event hooks (``None``: none installed)."""
        return self._hooks

    def stats(self) -> ClientStats:
        return ClientStats(
            requests=self._requests,
            attempts=self._attempts,
            retries=self._retries,
            ambiguous_retries=self._ambiguous_retries,
            rate_limited=self._limiter.rate_limited_count,
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            current_rate=self._limiter.current_rate(),
        )

    def call(
        self, call: Call, *, deadline: float | None = None, task_id: str | None = None
    ) -> Coroutine[Any, Any, Envelope]:
        """Send ``call`` with retries (await it): its success envelope, or a typed error.

        ``task_id`` names the task a poll is about (for events only). Not a coroutine
        function itself: awaiting it runs :meth:`_run` directly, one frame fewer on every
        request's way in and out."""
        # aiohttp times each attempt (never past the deadline): no scope is needed around
        # the call, unless the session's request method is not aiohttp's own.
        bounded = self._transport.times_requests
        if self._hooks is not None:
            return self._observed(
                call.endpoint, self._attempt_call, call, deadline, True, None, task_id, bounded
            )
        return self._run(
            call.endpoint, self._attempt_call, call, deadline, rate_limited=True, bounded=bounded
        )

    async def fetch(
        self,
        url: str,
        consume: Callable[[StreamedResponse], Awaitable[T]],
        *,
        deadline: float | None = None,
    ) -> T:
        """GET a result URL (no API key, no rate budget) and hand the answer to ``consume``.

        ``consume`` may raise :class:`~ailab_async.errors.DownloadError`; transient ones
        (``retryable=True``) are retried like any other failure.
        """

        async def attempt(_: None, attempt_timeout: float) -> T:
            return await self._transport.fetch(url, consume, timeout=attempt_timeout)

        if self._hooks is not None:
            return await self._observed(_DOWNLOAD, attempt, None, deadline, False, url, None)
        return await self._run(_DOWNLOAD, attempt, None, deadline, rate_limited=False, url=url)

    async def _attempt_call(self, call: Call, attempt_timeout: float) -> Envelope | errors.APIError:
        """One attempt of an API call, built here, inside the slot: calls still queued for
        one hold nothing but their arguments."""
        endpoint = call.endpoint
        upload = None
        if call.image is not None:
            assert endpoint.image_field is not None
            upload = Upload(endpoint.image_field, call.image)
        request = Request(
            name=endpoint.name,
            method=endpoint.method,
            url=self._base_url + endpoint.path,
            billed=endpoint.billed,
            timeout=attempt_timeout,
            fields=call.fields,
            upload=upload,
            query=call.query,
        )
        response = await self._transport.send(request)
        return classify_response(
            response.status, response.body, retry_after=response.headers.get("Retry-After")
        )

    # -- the loop ------------------------------------------------------------------------

    async def _run(  # noqa: RET503, PLR0915 - ends in raise_without_context; the hot path, inlined
        self,
        endpoint: Endpoint,
        attempt: Callable[[A, float], Awaitable[T | errors.APIError]],
        argument: A,
        deadline: float | None,
        *,
        rate_limited: bool,
        url: str | None = None,
        call_id: int = 0,
        bounded: bool = False,
    ) -> T:
        """``attempt(argument, timeout)`` until it succeeds, fails for good, or time is up.

        The call's state is a few locals of this frame: thousands of calls may wait here
        for a slot at once, and each object they hold would be garbage to collect.
        ``call_id`` is nonzero when hooks are installed (:meth:`_observed` passes it): the
        attempts then report events. ``bounded``: ``attempt`` ends within the timeout it is
        given (aiohttp's own timer), so no scope wraps the whole call: only a wait for a
        busy slot or limiter is bounded by the deadline on its own.
        """
        self._requests += 1
        budget = self._deadline if deadline is None else deadline
        started = self._clock()
        deadline_at = started + budget
        attempts = retries = 0
        last_error: errors.AILabError | None = None
        try:
            # The loop checks the deadline against our clock before every wait and attempt;
            # a scope is the hard real-time bound on top (a stalled server, a long queue).
            async with _UNSCOPED if bounded else _deadline_scope(budget) as scope:
                while True:
                    attempt_started = self._clock() if attempts else started
                    remaining = deadline_at - attempt_started
                    if remaining <= 0 or (attempts and scope.expired()):
                        raise_without_context(
                            errors.DeadlineExceededError(
                                f"{endpoint.name}: deadline passed after {attempts} attempt(s)",
                                endpoint=endpoint.name,
                                attempts=attempts,
                            ),
                            last_error,
                        )
                    attempts += 1
                    sent_at, acquired, wire_started = attempt_started, False, attempt_started
                    # The slot is held for this attempt only (not during backoff), and
                    # released on any exit, cancellation included. Inlined: this is the
                    # per-request hot path.
                    waited = not self._slots.try_take()
                    if waited:
                        if bounded:
                            async with _deadline_scope(remaining):
                                await self._slots.take()
                        else:
                            await self._slots.take()
                    self._in_flight += 1
                    self._max_in_flight = max(self._max_in_flight, self._in_flight)
                    try:
                        if rate_limited:
                            free = self._try_acquire() if self._try_acquire else None
                            if free is not None:
                                sent_at = free
                            else:
                                waited = True
                                if bounded:
                                    async with _deadline_scope(deadline_at - self._clock()):
                                        sent_at = await self._limiter.acquire()
                                else:
                                    sent_at = await self._limiter.acquire()
                            acquired = True
                        if bounded and waited:
                            # What the waits for a slot and the limiter left of the deadline.
                            remaining = deadline_at - self._clock()
                            if remaining <= 0:
                                raise TimeoutError  # nothing sent: the deadline error below
                        self._attempts += 1
                        if call_id:
                            wire_started = self._sent(call_id, endpoint, attempts)
                        outcome = await attempt(argument, min(self._timeout, remaining))
                    except errors.AILabError as exc:
                        error: errors.AILabError = exc
                    else:
                        if not isinstance(outcome, errors.APIError):
                            if rate_limited:
                                self._limiter_success(sent_at)
                            if call_id:
                                self._answered(call_id, endpoint, attempts, wire_started, outcome)
                            if logger.isEnabledFor(logging.DEBUG):
                                self._log(endpoint, attempts, attempt_started, outcome, url)
                            return outcome
                        error = outcome
                    finally:
                        if acquired:
                            self._limiter_release(sent_at)  # over, whatever the outcome
                        self._in_flight -= 1
                        self._slots.give()
                    last_error = error
                    if call_id:
                        self._answered(call_id, endpoint, attempts, wire_started, error)
                    if logger.isEnabledFor(logging.DEBUG):
                        self._log(endpoint, attempts, attempt_started, error, url)
                    if (
                        bounded
                        and remaining < self._timeout
                        and isinstance(error, errors.RequestTimeoutError)
                    ):
                        # Its timeout was what the deadline left: the deadline cut it.
                        raise TimeoutError
                    delay = self._next_delay(
                        endpoint,
                        error,
                        retries,
                        attempts,
                        deadline_at,
                        sent_at,
                        rate_limited,
                        call_id,
                    )
                    # A 429 is not a failure the server may have seen: no retry counted.
                    retries += not isinstance(error, errors.RateLimitedError)
                    await self._sleep(delay)
        except TimeoutError as exc:
            if isinstance(exc, errors.AILabError):
                raise
        # Raised outside the except block: the cancellation's context runs through aiohttp
        # frames (whose locals hold the request headers) and must not hang off our error.
        raise_without_context(
            errors.DeadlineExceededError(
                f"{endpoint.name}: deadline of {budget:g}s passed after {attempts} attempt(s)",
                endpoint=endpoint.name,
                attempts=attempts,
            ),
            last_error,
        )

    def _next_delay(
        self,
        endpoint: Endpoint,
        error: errors.AILabError,
        retries: int,
        attempts: int,
        deadline_at: float,
        sent_at: float,
        rate_limited: bool,
        call_id: int = 0,
    ) -> float:
        """After a failed attempt: tell the limiter of a 429, then give the wait before the
        next attempt, or raise ``error`` (final) or a deadline error (no time for another)."""
        retry_after = error.retry_after if isinstance(error, errors.APIError) else None
        if retry_after is not None:
            # Bounded by policy and by what is left of the deadline: the limiter (maybe
            # shared by many processes) must never be told to stall for years.
            retry_after = min(
                self._policy.capped_retry_after(retry_after),
                max(0.0, deadline_at - self._clock()),
            )
        if isinstance(error, errors.RateLimitedError) and rate_limited:
            self._limiter.on_rate_limited(sent_at, retry_after)
            if call_id and self._hooks is not None:
                self._hooks.emit(events.RateLimited(call_id, endpoint.name, attempts, retry_after))
                self._rate_report()
        if not self._policy.should_retry(endpoint, error, retries):
            raise_without_context(error)
        ambiguous = self._policy.is_ambiguous(endpoint, error)
        retry_number = 1 if isinstance(error, errors.RateLimitedError) else retries + 1
        delay = self._policy.delay(retry_number, retry_after, self._rand())
        if self._clock() + delay >= deadline_at:
            raise_without_context(
                errors.DeadlineExceededError(
                    f"{endpoint.name}: deadline would pass before the next retry "
                    f"(after {attempts} attempt(s); last error: {error})",
                    endpoint=endpoint.name,
                    attempts=attempts,
                ),
                error,
            )
        self._retries += 1
        if ambiguous:
            self._ambiguous_retries += 1
        if call_id and self._hooks is not None:
            self._hooks.emit(
                events.RetryScheduled(
                    call_id, endpoint.name, attempts, _reason(error), delay, ambiguous
                )
            )
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "retrying %s in %.2fs (attempt %d failed: %s%s)",
                endpoint.name,
                delay,
                attempts,
                type(error).__name__,
                ", may have been billed" if ambiguous else "",
            )
        return delay

    # -- events (only when hooks are installed) ---------------------------------------------

    async def _observed(
        self,
        endpoint: Endpoint,
        attempt: Callable[[A, float], Awaitable[T | errors.APIError]],
        argument: A,
        deadline: float | None,
        rate_limited: bool,
        url: str | None,
        task_id: str | None,
        bounded: bool = False,
    ) -> T:
        """:meth:`_run` between a ``CallStarted`` and a ``CallEnded`` event, whatever the
        outcome (cancellation included). It takes :meth:`_run`'s arguments (it wraps it),
        positionally: a separate method keeps the path without hooks free of all this."""
        assert self._hooks is not None
        call_id = next(self._call_ids)
        # For a download: its host, never its URL (which grants access).
        address, port = self._server if url is None else _host_and_port(url)
        self._hooks.emit(
            events.CallStarted(
                call_id, endpoint.name, endpoint.method, address, port, task_id=task_id
            )
        )
        started = self._clock()
        try:
            outcome = await self._run(
                endpoint,
                attempt,
                argument,
                deadline,
                rate_limited=rate_limited,
                url=url,
                call_id=call_id,
                bounded=bounded,
            )
        except BaseException as exc:
            self._hooks.emit(
                events.CallEnded(
                    call_id,
                    endpoint.name,
                    self._clock() - started,
                    type(exc).__name__,
                    *_answer_of(exc),
                )
            )
            raise
        self._hooks.emit(
            events.CallEnded(
                call_id, endpoint.name, self._clock() - started, None, *_answer_of(outcome)
            )
        )
        return outcome

    def _sent(self, call_id: int, endpoint: Endpoint, attempt: int) -> float:
        """Report an attempt going out; return when it went (the clock)."""
        assert self._hooks is not None
        self._hooks.emit(events.RequestSent(call_id, endpoint.name, attempt))
        return self._clock()

    def _answered(
        self, call_id: int, endpoint: Endpoint, attempt: int, sent: float, outcome: object
    ) -> None:
        """Report an attempt's answer (or failure), and the limiter's rate if it moved."""
        assert self._hooks is not None
        status, code, request_id, log_id = _answer_of(outcome)
        error_type = None
        ambiguous = False
        if isinstance(outcome, errors.AILabError):
            error_type = type(outcome).__name__
            ambiguous = self._policy.is_ambiguous(endpoint, outcome)
        self._hooks.emit(
            events.ResponseReceived(
                call_id,
                endpoint.name,
                attempt,
                status,
                code,
                self._clock() - sent,
                error_type,
                ambiguous,
                request_id,
                log_id,
            )
        )
        if error_type is None and endpoint is not _DOWNLOAD:
            self._rate_report()

    def _rate_report(self) -> None:
        """A ``RateChanged`` event if the limiter's rate moved enough since the last one."""
        assert self._hooks is not None
        rate = self._limiter.current_rate()
        if rate_moved(self._reported_rate, rate):
            old, self._reported_rate = self._reported_rate, rate
            self._hooks.emit(events.RateChanged(old, rate))

    def _log(
        self,
        endpoint: Endpoint,
        attempt: int,
        started: float,
        outcome: object,
        url: str | None,
    ) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return
        duration = self._clock() - started
        if isinstance(outcome, Envelope):
            status, request_id, log_id, what = (
                outcome.status,
                outcome.request_id,
                outcome.log_id,
                "ok",
            )
        elif isinstance(outcome, errors.APIError):
            status, request_id, log_id, what = (
                outcome.status,
                outcome.request_id,
                outcome.log_id,
                outcome.code or type(outcome).__name__,
            )
        elif isinstance(outcome, errors.AILabError):
            status, request_id, log_id, what = None, None, None, type(outcome).__name__
        else:
            status, request_id, log_id, what = 200, None, None, "ok"
        logger.debug(
            "%s%s attempt=%d duration=%.3fs status=%s outcome=%s request_id=%s log_id=%s",
            endpoint.name,
            f" {redact_url(url)}" if url else "",
            attempt,
            duration,
            status,
            what,
            request_id,
            log_id,
        )


_DOWNLOAD = Endpoint(DOWNLOAD, "GET", "", billed=False)


def _answer_of(outcome: object) -> tuple[int | None, str, str | None, str | None]:
    """The status, API code, request id and log id an outcome carries (for events)."""
    if isinstance(outcome, Envelope):
        return outcome.status, "", outcome.request_id, outcome.log_id
    if isinstance(outcome, errors.APIError):
        return outcome.status, outcome.code or "", outcome.request_id, outcome.log_id
    if isinstance(outcome, errors.DownloadError):
        return outcome.status, outcome.code or "", None, None
    if isinstance(outcome, BaseException):
        return None, "", None, None
    return 200, "", None, None  # a download's bytes or file


def _host_and_port(url: str) -> tuple[str, int | None]:
    """The host and port ``url`` goes to (the scheme's port if none is written).

    >>> _host_and_port("https://www.ailabapi.com/api"), _host_and_port("http://[::1]:81/")
    (('www.ailabapi.com', 443), ('::1', 81))
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "", None
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.hostname or "", port


def _reason(error: errors.AILabError) -> str:
    """Why an attempt failed, for events: the type and code, never the message.

    >>> _reason(errors.ServerError("boom", status=503, code="UNAVAILABLE"))
    'ServerError 503 UNAVAILABLE'
    """
    parts = [type(error).__name__]
    if isinstance(error, (errors.APIError, errors.DownloadError)) and error.status is not None:
        parts.append(str(error.status))
    code = getattr(error, "code", None)
    if code:
        parts.append(str(code))
    return " ".join(parts)
