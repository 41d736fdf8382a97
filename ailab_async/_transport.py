"""The only module where the SDK's HTTP traffic touches aiohttp: bytes in, bytes out.

:meth:`Transport.send` takes one attempt of an API call (:class:`Request`: method, URL,
query or form fields, the image, the per-attempt timeout, the body cap) and gives back
:class:`Response` (status, headers, body) or raises a typed
:class:`~ailab_async.errors.AILabError`. :meth:`Transport.fetch` does the same for a
result download, handing the streamed answer (:class:`StreamedResponse`) to the caller.
Nothing here decides what an answer means, whether to retry, or how long a whole call may
take: :mod:`._protocol` classifies, :mod:`._dispatch` applies the policy. This module only
moves bytes, and turns every way moving them can fail into our errors.

The security properties live here, because this is where they could be broken:

* the API key is sent to the API host only: the authenticated headers are built once, in
  :class:`Transport`, so no request value, and no frame local of ours, holds the key;
  downloads never carry it (result hosts are not ours);
* redirects of API calls are never followed (the key would go with them; the 3xx is
  classified as an error instead); downloads follow a few (result hosts may send us to a
  CDN);
* ``raise_for_status`` is off per request, whatever the session's default (the session
  may be the user's), so a 422 stays a typed error rather than an aiohttp exception;
* API answers are read in chunks up to a cap (decompressed), never with an unbounded
  ``read()``; past the cap the connection is dropped;
* every failure aiohttp, asyncio or the OS may raise is mapped to our errors in one place
  (:func:`_wire_error`), and our error is raised *outside* the ``except`` block, with its
  context cleared (:func:`raise_without_context`), so no aiohttp frame (whose locals hold
  the request headers) is reachable from it through ``__context__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import IO, NoReturn, TypeVar

import aiohttp
import aiohttp.abc
import aiohttp.payload
import attrs

from . import errors
from ._images import PreparedImage
from ._protocol import (
    API_KEY_HEADER,
    MAX_RESPONSE_BYTES,
    RESPONSE_TOO_LARGE,
    multipart_content_type,
    multipart_form,
    multipart_frame,
)
from ._session import SessionManager

T = TypeVar("T")

_USER_AGENT = "ailab-async"
_READ_CHUNK = 64 * 1024
#: Redirects a result download may follow (result hosts may send us to a CDN; the key is
#: never on a download, so following is safe).
_MAX_DOWNLOAD_REDIRECTS = 5
#: An image up to this size goes out in one buffer with the multipart framing around it (one
#: ``send()``; copying it costs less than two more writes); a larger one is written in place,
#: between the framing's two buffers, never copied. Not larger: aiohttp joins the request's
#: headers with the first body write (on Python before 3.12), a second copy of the buffer,
#: and copies of a few hundred KiB cost more than the writes they save (fresh pages).
_JOIN_LIMIT = 64 * 1024
#: How much of an image file one read in a worker thread brings in: twice aiohttp's own
#: chunk, so a large file goes out in half the thread hops aiohttp's payload takes (each hop
#: hands the chunk between threads; 2-5 MB files at 64-256 uploads at once cost 5-9 % less CPU
#: than in 256 KiB chunks), for one 512 KiB buffer per upload in flight.
_FILE_CHUNK = 512 * 1024
#: What a download says about itself: never the key.
_DOWNLOAD_HEADERS = {"User-Agent": _USER_AGENT}
#: The name downloads go by in messages and logs.
DOWNLOAD = "download"

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
class Upload:
    """The image of a multipart request, and the form field that carries it."""

    field: str
    image: PreparedImage


# Request and Response are made for every attempt: plain slotted classes, never changed
# once made (a frozen attrs class costs three times as much to build, one setattr call a
# field).
@attrs.define(kw_only=True)
class Request:
    """One attempt of an API call, as the wire sees it. It never holds the key."""

    #: The endpoint's name, for messages.
    name: str
    method: str
    url: str
    #: Whether the call costs credits: a failure after sending may then have been billed.
    billed: bool
    #: Seconds this attempt may take, connecting and reading included.
    timeout: float
    #: The query string of a GET; the form fields of a POST.
    fields: Sequence[tuple[str, str]] = ()
    upload: Upload | None = None
    #: A POST's query string.
    query: Sequence[tuple[str, str]] = ()
    #: The most bytes (decompressed) read from the answer.
    max_body: int = MAX_RESPONSE_BYTES


@attrs.define
class Response:
    """What the server answered to an API call: status, headers, the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class StreamedResponse:
    """A download's answer while it streams: status and headers, then the body in chunks."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def content_type(self) -> str:
        """The media type (``image/png``), without parameters; ``application/octet-stream``
        when the server named none."""
        return self._response.content_type

    @property
    def content_length(self) -> int | None:
        """The length the server declared, if it did."""
        return self._response.content_length

    def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body, ``size`` bytes at a time (decompressed)."""
        return self._response.content.iter_chunked(size)

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or ``None`` once it passes ``limit`` (see :func:`_read_at_most`)."""
        return await _read_at_most(self._response, limit)


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or ``None`` once it passes ``limit`` bytes (reading stops there).

    A declared length over the limit is refused unread. Past the limit the connection is
    dropped, so a gzip bomb or an endless body costs at most the limit (plus aiohttp's
    bounded read buffer) in memory.
    """
    declared = response.content_length
    if declared is not None and declared <= limit and "Content-Encoding" not in response.headers:
        # The common answer: a declared length within the cap, nothing to decompress.
        # aiohttp reads exactly that many bytes (the parser stops there), in one await.
        return await response.read()
    body = bytearray()
    if declared is None or declared <= limit:
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > limit:
                break
        else:
            return bytes(body)
    response.close()
    return None


_NO_CLEANUP: contextlib.nullcontext[None] = contextlib.nullcontext()


class Transport:
    """Sends requests over one client's aiohttp session; the only holder of the API key."""

    def __init__(self, sessions: SessionManager, *, api_key: str) -> None:
        if not api_key.isascii() or not api_key.isprintable():
            # aiohttp would refuse it on every request (or worse, split the header).
            raise errors.ConfigurationError(
                "the API key contains characters not allowed in an HTTP header "
                "(only printable ASCII is)"
            )
        self._sessions = sessions
        # Built once and passed as is: no frame on the request path has the key in a local.
        self._api_headers: dict[str, str] = {API_KEY_HEADER: api_key, "User-Agent": _USER_AGENT}
        # The last attempt's timeout (immutable): most attempts have the same one.
        self._timeout = aiohttp.ClientTimeout()

    @property
    def times_requests(self) -> bool:
        """Whether :meth:`send` ends within ``request.timeout`` on its own (aiohttp times it)."""
        return self._sessions.times_requests

    async def send(self, request: Request) -> Response:  # noqa: RET503 - raise_without_context
        """One API request: its status, headers and body, or a typed error.

        The answer over ``request.max_body`` bytes is a non-retryable
        :class:`~ailab_async.errors.MalformedResponseError` (``RESPONSE_TOO_LARGE``): a
        server that answers this way will do it again.
        """
        session = self._sessions.current or await self._sessions.get()
        timeout = self._timeout
        if timeout.total != request.timeout:
            timeout = self._timeout = aiohttp.ClientTimeout(total=request.timeout)
        # Only an upload may open a file to close after it (a poll has nothing to clean up).
        with contextlib.ExitStack() if request.upload is not None else _NO_CLEANUP as stack:
            body: aiohttp.payload.Payload | None = None
            query = request.query
            if request.upload is not None:
                assert stack is not None
                body = _body(request, request.upload, stack)
            elif request.method == "GET":
                query = [*query, *request.fields]
            elif request.fields:  # a POST without a file: its fields as a multipart form
                boundary = _boundary()
                body = aiohttp.payload.BytesPayload(
                    multipart_form(request.fields, boundary),
                    content_type=multipart_content_type(boundary),
                )
            try:
                async with session.request(
                    request.method,
                    request.url,
                    data=body,
                    params=query or None,
                    headers=self._api_headers,
                    timeout=timeout,
                    # Never follow: the key would be re-sent to wherever Location points
                    # (another host, or plain http). A 3xx is classified as an error.
                    allow_redirects=False,
                    # The session may be the user's, created with raise_for_status=True.
                    raise_for_status=False,
                ) as response:
                    answer = await _read_at_most(response, request.max_body)
                    status, headers = response.status, response.headers
            except errors.AILabError:
                raise
            except _WIRE_ERRORS as exc:
                error = self._wire_error(exc, request.name, session, billed=request.billed)
            else:
                if answer is not None:
                    return Response(status, headers, answer)
                error = _too_large(request, status)
        raise_without_context(error)  # no aiohttp frame in __context__

    async def fetch(  # noqa: RET503 - it ends in raise_without_context, which never returns
        self,
        url: str,
        consume: Callable[[StreamedResponse], Awaitable[T]],
        *,
        timeout: float,
    ) -> T:
        """GET a result URL (never with the key) and hand the streamed answer to ``consume``.

        ``consume`` runs while the connection is open; what it raises of ours passes
        through, and a failure of the wire while it reads becomes ours like any other.
        """
        session = await self._sessions.get()
        try:
            async with session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=timeout),
                headers=_DOWNLOAD_HEADERS,
                raise_for_status=False,
                max_redirects=_MAX_DOWNLOAD_REDIRECTS,
            ) as response:
                return await consume(StreamedResponse(response))
        except errors.AILabError:
            raise
        except _WIRE_ERRORS as exc:
            error = self._wire_error(exc, DOWNLOAD, session, billed=False, download=True)
        raise_without_context(error)  # no aiohttp frame in __context__

    def _wire_error(
        self,
        exc: BaseException,
        name: str,
        session: aiohttp.ClientSession,
        *,
        billed: bool,
        download: bool = False,
    ) -> errors.AILabError:
        """The one place a non-SDK exception of the request path becomes ours."""
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
            if download:
                return errors.DownloadError(f"{name}: the URL is not valid", retryable=False)
            return errors.ConfigurationError(f"{name}: the request URL is not valid")
        return _transport_error(exc, name, billed=billed)


def _boundary() -> str:
    """A fresh random multipart boundary for each attempt, as aiohttp draws one: no image or
    value can be made to contain it."""
    return os.urandom(16).hex()


def _body(request: Request, upload: Upload, stack: contextlib.ExitStack) -> MultipartBody:
    """The multipart body of one attempt: the image's bytes as they are (a small file's
    checked bytes on its first attempt), or its file opened afresh (closed by ``stack``)."""
    image = upload.image
    source: bytes | IO[bytes] | None = image.data or image.take_first_attempt()
    if source is None:
        try:
            source = stack.enter_context(image.open())
        except errors.ValidationError:
            raise  # the image's own check (replaced by a FIFO, changed size): keep its rule
        except (OSError, ValueError) as exc:
            # Deleted, moved or closed since it was checked: nothing was sent.
            raise errors.ValidationError(
                f"{request.name}: the image {image.label} can no longer be read "
                f"({type(exc).__name__})",
                input=image.label,
                rule="readable",
            ) from None
    boundary = _boundary()
    head, tail = multipart_frame(
        request.fields, upload.field, image.filename, image.content_type, boundary
    )
    return MultipartBody(head, source, image.size, tail, multipart_content_type(boundary))


class MultipartBody(aiohttp.payload.Payload):
    """One attempt's ``multipart/form-data`` body: framing, the image, framing.

    The image goes to the connection as it is (the caller's bytes, never a ``BytesIO`` copy
    read back in chunks), joined with the framing into one buffer when it is small; a file
    is read in a worker thread, :data:`_FILE_CHUNK` bytes at a time. aiohttp's own payloads
    cannot do this for us: a large ``bytes`` body warns, a ``BytesIO`` is copied chunk by
    chunk with an event-loop turn each, and ``FormData`` writes every part apart.
    """

    def __init__(
        self, head: bytes, image: bytes | IO[bytes], image_size: int, tail: bytes, content_type: str
    ) -> None:
        super().__init__(image, content_type=content_type)
        self.head = head
        self.image = image
        self.image_size = image_size
        self.tail = tail
        self._size = len(head) + image_size + len(tail)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        if not isinstance(self.image, bytes):
            raise TypeError("the body streams an image file; it has no text form")
        return (self.head + self.image + self.tail).decode(encoding, errors)

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        image = self.image
        if isinstance(image, bytes):
            await _write_framed(writer, self.head, image, self.tail)
            return
        loop = asyncio.get_running_loop()
        remaining = self.image_size
        head: bytes | None = self.head
        while remaining > 0:
            chunk = await loop.run_in_executor(None, image.read, min(remaining, _FILE_CHUNK))
            if not chunk:
                # Shorter than when it was checked: the declared length cannot be met.
                raise OSError("the image file got shorter while it was being sent")
            remaining -= len(chunk)  # read() gave at most what was asked for
            if head is not None:
                await _write_framed(writer, head, chunk, self.tail if not remaining else b"")
                head = None
            else:
                await writer.write(chunk)
                if not remaining:
                    await writer.write(self.tail)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        # aiohttp passes the Content-Length it took from ``size``: the whole body.
        await self.write(writer)


async def _write_framed(
    writer: aiohttp.abc.AbstractStreamWriter, head: bytes, data: bytes, tail: bytes
) -> None:
    """``head + data + tail``: one buffer when ``data`` is small, else three writes."""
    if len(data) <= _JOIN_LIMIT:
        await writer.write(b"".join((head, data, tail)))
        return
    await writer.write(head)
    await writer.write(data)
    if tail:
        await writer.write(tail)


def raise_without_context(error: BaseException, cause: BaseException | None = None) -> NoReturn:
    """Raise ``error`` (from ``cause``) with no ``__context__``, whatever was being handled.

    Our errors are raised outside ``except`` blocks so that no aiohttp exception (whose
    frames hold the request headers, the key among them) hangs off them. Python 3.10 still
    counts an exception thrown into a coroutine as handled after its ``except`` block has
    ended, and would chain it anyway: the context is cleared by hand.
    """
    try:
        if cause is None:
            raise error  # keeps the cause it has
        raise error from cause
    finally:
        error.__context__ = None


def _too_large(request: Request, status: int) -> errors.MalformedResponseError:
    """The answer passed the cap. On a billed endpoint the request may have been processed
    (and billed): the answer could not be read."""
    return errors.MalformedResponseError(
        f"{request.name}: the answer is larger than {request.max_body} bytes; reading stopped"
        + (" (the request may have been processed and billed)" if request.billed else ""),
        status=status,
        code=RESPONSE_TOO_LARGE,
        retryable=False,
    )


def _transport_error(exc: BaseException, name: str, *, billed: bool) -> errors.TransportError:
    """Map aiohttp/asyncio failures to our transport errors (and decide ambiguity).

    Messages name the failure's type only: aiohttp's own texts may quote URLs or headers.
    """
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
