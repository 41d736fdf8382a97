"""The one road every HTTP request takes: bounded, rate-limited, retried, deadlined.

``Dispatcher.call`` sends an API call and returns its success envelope or raises a typed
error. Order of gates for each attempt: the concurrency semaphore (so at most
``max_concurrency`` requests are in flight), then the adaptive rate limiter, then the wire.
The slot is held only while an attempt runs, never during backoff, and is released at once
when the caller is cancelled (the attempt runs in the caller's own task: nothing is left
behind).

Retry decisions are pure (:class:`RetryPolicy`); the loop here only applies them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp
import anyio
import attrs

from . import errors
from ._protocol import API_KEY_HEADER, Endpoint, Envelope, classify_response
from ._ratelimit import Clock, RateLimiter, Sleeper
from ._session import SessionManager
from .images import PreparedImage
from .models import ClientStats, redact_url

logger = logging.getLogger("ailab_async")

T = TypeVar("T")

_USER_AGENT = "ailab-async"


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

    def delay(self, retry_number: int, retry_after: float | None, rand: float) -> float:
        """Seconds before retry number ``retry_number`` (1-based); ``rand`` in [0, 1).

        Full jitter (uniform in [0, cap]) spreads synchronised clients apart; a server's
        ``Retry-After`` is a floor, never shortened.
        """
        cap = min(self.max_delay, self.base_delay * 2 ** (retry_number - 1))
        wait: float = rand * cap
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait

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
        self._sessions = sessions
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
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

        async def attempt(attempt_timeout: float) -> Envelope | errors.APIError:
            return await self._api_attempt(call, attempt_timeout)

        return await self._run(endpoint, attempt, deadline, rate_limited=True)

    async def fetch(
        self,
        url: str,
        consume: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        deadline: float | None = None,
    ) -> T:
        """GET a result URL (no API key, no rate budget) and hand the response to ``consume``.

        ``consume`` may raise :class:`~ailab_async.errors.DownloadError`; transient ones
        (``retryable=True``) are retried like any other failure.
        """
        endpoint = Endpoint("download", "GET", "", billed=False)

        async def attempt(attempt_timeout: float) -> T | errors.APIError:
            session = await self._sessions.get()
            try:
                async with session.get(
                    url,
                    timeout=aiohttp.ClientTimeout(total=attempt_timeout),
                    headers={"User-Agent": _USER_AGENT},
                ) as response:
                    return await consume(response)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise _transport_error(exc, endpoint, billed=False) from None

        return await self._run(endpoint, attempt, deadline, rate_limited=False, url=url)

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
            with anyio.fail_after(budget):
                return await self._attempts_until_done(
                    endpoint, attempt, state, rate_limited=rate_limited, url=url
                )
        except TimeoutError as exc:
            if isinstance(exc, errors.AILabError):
                raise
            raise errors.DeadlineExceededError(
                f"{endpoint.name}: deadline of {budget:g}s passed "
                f"after {state.attempts} attempt(s)",
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

    async def _api_attempt(self, call: Call, attempt_timeout: float) -> Envelope | errors.APIError:
        endpoint = call.endpoint
        session = await self._sessions.get()
        url = self._base_url + endpoint.path
        headers = {API_KEY_HEADER: self._api_key, "User-Agent": _USER_AGENT}
        try:
            if call.image is not None:
                assert endpoint.image_field is not None
                with call.image.open() as body:
                    form = aiohttp.FormData(list(call.fields))
                    form.add_field(
                        endpoint.image_field,
                        body,
                        filename=call.image.filename,
                        content_type=call.image.content_type,
                    )
                    return await self._exchange(
                        session, endpoint, url, headers, attempt_timeout, form
                    )
            return await self._exchange(
                session, endpoint, url, headers, attempt_timeout, None, params=list(call.fields)
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _transport_error(exc, endpoint, billed=endpoint.billed) from None

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        url: str,
        headers: dict[str, str],
        attempt_timeout: float,
        form: aiohttp.FormData | None,
        *,
        params: list[tuple[str, str]] | None = None,
    ) -> Envelope | errors.APIError:
        async with session.request(
            endpoint.method,
            url,
            data=form,
            params=params or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=attempt_timeout),
        ) as response:
            body = await response.read()
            return classify_response(
                response.status, body, retry_after=response.headers.get("Retry-After")
            )

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


def _transport_error(
    exc: BaseException, endpoint: Endpoint, *, billed: bool
) -> errors.TransportError:
    """Map aiohttp/asyncio failures to our transport errors (and decide ambiguity)."""
    name = endpoint.name
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return errors.RequestTimeoutError(
            f"{name}: no response within the per-attempt timeout", endpoint=name, ambiguous=billed
        )
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        error = errors.ConnectionFailedError(
            f"{name}: TLS verification failed ({type(exc).__name__})",
            endpoint=name,
            ambiguous=False,
        )
        error.retryable = False
        return error
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Never connected: the request cannot have been processed.
        return errors.ConnectionFailedError(
            f"{name}: cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})",
            endpoint=name,
            ambiguous=False,
        )
    return errors.ConnectionFailedError(
        f"{name}: connection failed mid-request ({type(exc).__name__})",
        endpoint=name,
        ambiguous=billed,
    )
