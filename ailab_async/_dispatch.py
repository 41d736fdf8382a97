"""The one road every HTTP request takes: bounded, rate-limited, retried, deadlined.

``Dispatcher.call`` sends an API call and returns its success envelope or raises a typed
error. Order of gates for each attempt: the concurrency semaphore (so at most
``max_concurrency`` requests are in flight), then the adaptive rate limiter, then the wire.
The slot is held only while an attempt runs, never during backoff, and is released at once
when the caller is cancelled (the attempt runs in the caller's own task: nothing is left
behind).

Retry decisions are pure (:class:`RetryPolicy`); the loop here only applies them.

Against servers we did not write, the promise is: every call ends in a result or a typed
:class:`~ailab_async.errors.AILabError` within its deadline, and the key never leaks.
Hence, on the request path:

* API answers are read in chunks up to :data:`~ailab_async._protocol.MAX_RESPONSE_BYTES`
  (decompressed), never with an unbounded ``read()``;
* redirects of API calls are never followed (the key would go with them);
* ``raise_for_status`` is off per request, whatever the session's default;
* every failure aiohttp or asyncio may raise is mapped to our errors in one place
  (:func:`_wire_error`), and our error is raised *outside* the ``except`` block, so no
  aiohttp frame (whose locals hold the request headers) is reachable from it through
  ``__context__``; no local variable of ours holds the key either (the headers are built
  once, kept on the dispatcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp
import anyio
import attrs

from . import errors
from ._images import PreparedImage
from ._protocol import (
    API_KEY_HEADER,
    MAX_RESPONSE_BYTES,
    MAX_RETRY_AFTER,
    RESPONSE_TOO_LARGE,
    Endpoint,
    Envelope,
    classify_response,
)
from ._ratelimit import Clock, RateLimiter, Sleeper
from ._session import SessionManager
from .models import ClientStats, redact_url

logger = logging.getLogger("ailab_async")

T = TypeVar("T")

_USER_AGENT = "ailab-async"
_READ_CHUNK = 64 * 1024
#: Redirects a result download may follow (result hosts may send us to a CDN; the key is
#: never on a download, so following is safe).
_MAX_DOWNLOAD_REDIRECTS = 5

#: Everything the request path may raise that is not ours. aiohttp's parser errors
#: (``LineTooLong``, ``BadStatusLine``, ...) arrive as ``ClientResponseError`` or as
#: ``HttpProcessingError``; decoding a body may raise ``zlib.error``/``UnicodeError``; a
#: closed session ``RuntimeError``; a header value ``ValueError``.
_WIRE_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    aiohttp.http_exceptions.HttpProcessingError,
    asyncio.TimeoutError,
    OSError,
    ValueError,
    RuntimeError,
    EOFError,
    zlib.error,
)


class ClosedMidRequestError(errors.ConnectionFailedError, errors.ClientClosedError):
    """The client (or its session) was closed while this request was in flight.

    ``ambiguous`` says whether a billed request may already have been processed (and
    billed) by the API. Not retryable: the client is gone.
    """

    retryable = False


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
        self._sessions = sessions
        self._base_url = base_url.rstrip("/")
        if not api_key.isascii() or not api_key.isprintable():
            # aiohttp would refuse it on every request (or worse, split the header).
            raise errors.ConfigurationError(
                "the API key contains characters not allowed in an HTTP header "
                "(only printable ASCII is)"
            )
        # Built once and passed as is: no frame on the request path has the key in a local.
        self._api_headers: dict[str, str] = {
            API_KEY_HEADER: api_key,
            "User-Agent": _USER_AGENT,
        }
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
        endpoint = _DOWNLOAD

        async def attempt(attempt_timeout: float) -> T | errors.APIError:
            session = await self._sessions.get()
            try:
                async with session.get(
                    url,
                    timeout=aiohttp.ClientTimeout(total=attempt_timeout),
                    headers=_DOWNLOAD_HEADERS,
                    raise_for_status=False,
                    max_redirects=_MAX_DOWNLOAD_REDIRECTS,
                ) as response:
                    return await consume(response)
            except errors.AILabError:
                raise
            except _WIRE_ERRORS as exc:
                error = self._wire_error(exc, endpoint, session, billed=False)
            raise error  # outside the except block: no aiohttp frame in __context__

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

    async def _api_attempt(self, call: Call, attempt_timeout: float) -> Envelope | errors.APIError:
        endpoint = call.endpoint
        session = await self._sessions.get()
        url = self._base_url + endpoint.path
        with contextlib.ExitStack() as stack:
            form = None if call.image is None else _form(call, call.image, stack)
            try:
                return await self._exchange(
                    session,
                    endpoint,
                    url,
                    attempt_timeout,
                    form,
                    params=list(call.fields) if form is None else None,
                )
            except errors.AILabError:
                raise
            except _WIRE_ERRORS as exc:
                error = self._wire_error(exc, endpoint, session, billed=endpoint.billed)
        raise error  # outside the except block: no aiohttp frame in __context__

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        url: str,
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
            headers=self._api_headers,
            timeout=aiohttp.ClientTimeout(total=attempt_timeout),
            # Never follow: the key would be re-sent to wherever Location points (another
            # host, or plain http). A 3xx is classified as an error instead.
            allow_redirects=False,
            # The session may be the user's, created with raise_for_status=True: a 422
            # must stay a typed ImageRejectedError, not an aiohttp exception.
            raise_for_status=False,
        ) as response:
            body = await _read_capped(response, endpoint)
            if isinstance(body, errors.APIError):
                return body
            return classify_response(
                response.status, body, retry_after=response.headers.get("Retry-After")
            )

    def _wire_error(
        self,
        exc: BaseException,
        endpoint: Endpoint,
        session: aiohttp.ClientSession,
        *,
        billed: bool,
    ) -> errors.AILabError:
        """The one place a non-SDK exception of the request path becomes ours."""
        name = endpoint.name
        if self._sessions.closed or session.closed:
            # Closed under our feet (aclose() while this call was in flight), or an
            # injected session closed by its owner. aiohttp says "Session is closed"
            # (RuntimeError) when the request never started.
            started = not (isinstance(exc, RuntimeError) and "closed" in str(exc))
            ambiguous = billed and started
            return ClosedMidRequestError(
                f"{name}: the client was closed while the request was in flight"
                + ("; it may have been processed and billed" if ambiguous else ""),
                endpoint=name,
                ambiguous=ambiguous,
            )
        if isinstance(exc, aiohttp.InvalidURL):
            if endpoint.name == _DOWNLOAD.name:
                return errors.DownloadError(f"{name}: the URL is not valid", retryable=False)
            return errors.ConfigurationError(f"{name}: the request URL is not valid")
        return _transport_error(exc, endpoint, billed=billed)

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


def _form(call: Call, image: PreparedImage, stack: contextlib.ExitStack) -> aiohttp.FormData:
    """The multipart body of one attempt, its image opened afresh (closed by ``stack``)."""
    assert call.endpoint.image_field is not None
    try:
        body = stack.enter_context(image.open())
    except errors.ValidationError:
        raise  # the image's own check (replaced by a FIFO, changed size): keep its rule
    except (OSError, ValueError) as exc:
        # Deleted, moved or closed since it was checked: nothing was sent.
        raise errors.ValidationError(
            f"{call.endpoint.name}: the image {image.label} can no longer be read "
            f"({type(exc).__name__})",
            input=image.label,
            rule="readable",
        ) from None
    form = aiohttp.FormData(list(call.fields))
    form.add_field(
        call.endpoint.image_field, body, filename=image.filename, content_type=image.content_type
    )
    return form


_DOWNLOAD = Endpoint("download", "GET", "", billed=False)
_DOWNLOAD_HEADERS = {"User-Agent": _USER_AGENT}  # never the key: result hosts are not ours


async def _read_capped(
    response: aiohttp.ClientResponse, endpoint: Endpoint
) -> bytes | errors.APIError:
    """The (decompressed) body, or a typed error once it passes ``MAX_RESPONSE_BYTES``.

    Reading stops at the cap and the connection is dropped, so a gzip bomb or an endless
    body costs at most the cap (plus aiohttp's bounded read buffer) in memory. The error is
    not retryable: a server that answers this way will do it again. On a billed endpoint
    the request may have been processed (and billed): the answer could not be read.
    """
    limit = MAX_RESPONSE_BYTES
    declared = response.content_length
    body = bytearray()
    if declared is None or declared <= limit:
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > limit:
                break
        else:
            return bytes(body)
    response.close()
    return errors.MalformedResponseError(
        f"{endpoint.name}: the answer is larger than {limit} bytes; reading stopped"
        + (" (the request may have been processed and billed)" if endpoint.billed else ""),
        status=response.status,
        code=RESPONSE_TOO_LARGE,
        retryable=False,
    )


def _transport_error(
    exc: BaseException, endpoint: Endpoint, *, billed: bool
) -> errors.TransportError:
    """Map aiohttp/asyncio failures to our transport errors (and decide ambiguity).

    Messages name the failure's type only: aiohttp's own texts may quote URLs or headers.
    """
    name = endpoint.name
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return errors.RequestTimeoutError(
            f"{name}: could not connect within the per-attempt timeout",
            endpoint=name,
            ambiguous=False,
        )
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
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return errors.ConnectionFailedError(
            f"{name}: cannot connect ({reason})", endpoint=name, ambiguous=False
        )
    if isinstance(
        exc,
        (
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
            aiohttp.http_exceptions.HttpProcessingError,
            zlib.error,
            UnicodeError,
        ),
    ):
        return errors.ConnectionFailedError(
            f"{name}: the server's answer could not be read ({type(exc).__name__})",
            endpoint=name,
            ambiguous=billed,
        )
    return errors.ConnectionFailedError(
        f"{name}: connection failed mid-request ({type(exc).__name__})",
        endpoint=name,
        ambiguous=billed,
    )
