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
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
import attrs

from . import errors
from ._endpoints import Endpoint
from ._images import PreparedImage
from ._protocol import MAX_RETRY_AFTER, Envelope, classify_response
from ._ratelimit import Clock, RateLimiter, Sleeper
from ._session import SessionManager
from ._transport import DOWNLOAD, Request, StreamedResponse, Transport, Upload
from .models import ClientStats, redact_url

logger = logging.getLogger("ailab_async")

T = TypeVar("T")


# The hard bound on a whole call: anyio's cancel scope. Its cancellation is level-triggered
# (re-delivered until the scope exits), so a cancellation consumed inside -- aiohttp's
# per-attempt timer cancels the same task and turns a CancelledError into its own
# TimeoutError -- cannot be lost. ``asyncio.timeout`` (edge-triggered) costs ~5 us less per
# call (3.3 vs 8.5 us to enter and leave, Python 3.11, anyio 4.16); take it only with a test
# that races it against aiohttp's timer.
_deadline_scope = anyio.fail_after


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


@attrs.frozen
class Call:
    """One API call: the endpoint, its query or form fields, and its image if any."""

    endpoint: Endpoint
    fields: Sequence[tuple[str, str]] = ()
    image: PreparedImage | None = None


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
    ) -> None:
        self._transport = Transport(sessions, api_key=api_key)
        self._base_url = base_url.rstrip("/")
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._limiter = limiter
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

    # -- public --------------------------------------------------------------------------

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

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

    async def call(self, call: Call, *, deadline: float | None = None) -> Envelope:
        """Send ``call`` with retries; its success envelope, or a typed error."""
        endpoint = call.endpoint
        url = self._base_url + endpoint.path
        upload = None
        if call.image is not None:
            assert endpoint.image_field is not None
            upload = Upload(endpoint.image_field, call.image)

        async def attempt(attempt_timeout: float) -> Envelope | errors.APIError:
            request = Request(
                name=endpoint.name,
                method=endpoint.method,
                url=url,
                billed=endpoint.billed,
                timeout=attempt_timeout,
                fields=call.fields,
                upload=upload,
            )
            response = await self._transport.send(request)
            return classify_response(
                response.status, response.body, retry_after=response.headers.get("Retry-After")
            )

        return await self._run(endpoint, attempt, deadline, rate_limited=True)

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

        async def attempt(attempt_timeout: float) -> T:
            return await self._transport.fetch(url, consume, timeout=attempt_timeout)

        return await self._run(_DOWNLOAD, attempt, deadline, rate_limited=False, url=url)

    # -- the loop ------------------------------------------------------------------------

    async def _run(
        self,
        endpoint: Endpoint,
        attempt: Callable[[float], Awaitable[T | errors.APIError]],
        deadline: float | None,
        *,
        rate_limited: bool,
        url: str | None = None,
    ) -> T:
        self._requests += 1
        budget = self._deadline if deadline is None else deadline
        state = _CallState(deadline_at=self._clock() + budget)
        try:
            # The loop checks the deadline against our clock before every wait; this scope
            # is the hard real-time bound on top (a stalled server, a long queue).
            with _deadline_scope(budget):
                return await self._attempts_until_done(
                    endpoint, attempt, state, rate_limited=rate_limited, url=url
                )
        except TimeoutError as exc:
            if isinstance(exc, errors.AILabError):
                raise
        # Raised outside the except block: the cancellation's context runs through aiohttp
        # frames (whose locals hold the request headers) and must not hang off our error.
        raise errors.DeadlineExceededError(
            f"{endpoint.name}: deadline of {budget:g}s passed after {state.attempts} attempt(s)",
            endpoint=endpoint.name,
            attempts=state.attempts,
        ) from state.last_error

    async def _attempts_until_done(
        self,
        endpoint: Endpoint,
        attempt: Callable[[float], Awaitable[T | errors.APIError]],
        state: _CallState,
        *,
        rate_limited: bool,
        url: str | None,
    ) -> T:
        retries = 0
        while True:
            remaining = state.deadline_at - self._clock()
            if remaining <= 0:
                raise errors.DeadlineExceededError(
                    f"{endpoint.name}: deadline passed after {state.attempts} attempt(s)",
                    endpoint=endpoint.name,
                    attempts=state.attempts,
                ) from state.last_error
            state.attempts += 1
            attempt_started = self._clock()
            error: errors.AILabError
            sent_at = attempt_started
            # The slot is held for this attempt only (not during backoff), and released on
            # any exit, cancellation included. Inlined: this is the per-request hot path.
            await self._semaphore.acquire()
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            try:
                if rate_limited:
                    sent_at = await self._limiter.acquire()
                self._attempts += 1
                outcome = await attempt(min(self._timeout, remaining))
            except errors.AILabError as exc:
                error = exc
            else:
                if not isinstance(outcome, errors.APIError):
                    if rate_limited:
                        self._limiter.on_success()
                    self._log(endpoint, state.attempts, attempt_started, outcome, url)
                    return outcome
                error = outcome
            finally:
                self._in_flight -= 1
                self._semaphore.release()
            state.last_error = error
            self._log(endpoint, state.attempts, attempt_started, error, url)

            retry_after = error.retry_after if isinstance(error, errors.APIError) else None
            if retry_after is not None:
                # Bounded by policy and by what is left of the deadline: the limiter (maybe
                # shared by many processes) must never be told to stall for years.
                retry_after = min(
                    self._policy.capped_retry_after(retry_after),
                    max(0.0, state.deadline_at - self._clock()),
                )
            if isinstance(error, errors.RateLimitedError) and rate_limited:
                self._limiter.on_rate_limited(sent_at, retry_after)
            if not self._policy.should_retry(endpoint, error, retries):
                raise error
            ambiguous = self._policy.is_ambiguous(endpoint, error)
            retry_number = 1 if isinstance(error, errors.RateLimitedError) else retries + 1
            delay = self._policy.delay(retry_number, retry_after, self._rand())
            if self._clock() + delay >= state.deadline_at:
                raise errors.DeadlineExceededError(
                    f"{endpoint.name}: deadline would pass before the next retry "
                    f"(after {state.attempts} attempt(s); last error: {error})",
                    endpoint=endpoint.name,
                    attempts=state.attempts,
                ) from error
            if not isinstance(error, errors.RateLimitedError):
                retries += 1
            self._retries += 1
            if ambiguous:
                self._ambiguous_retries += 1
            logger.info(
                "retrying %s in %.2fs (attempt %d failed: %s%s)",
                endpoint.name,
                delay,
                state.attempts,
                type(error).__name__,
                ", may have been billed" if ambiguous else "",
            )
            await self._sleep(delay)

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


@attrs.define
class _CallState:
    deadline_at: float
    attempts: int = 0
    last_error: errors.AILabError | None = None


_DOWNLOAD = Endpoint(DOWNLOAD, "GET", "", billed=False)
