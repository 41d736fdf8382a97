"""The transport: bytes in, bytes out, every failure of the wire typed in one place.

The mapping of aiohttp/asyncio/OS failures is a pure function (a table here); the rest runs
against real aiohttp servers on 127.0.0.1. End-to-end properties through the client (the
key unreachable from errors, redirects, caps through retries) are in tests/test_wire.py.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ailab_async import errors
from ailab_async._images import PreparedImage
from ailab_async._session import SessionManager
from ailab_async._transport import (
    ClosedMidRequestError,
    MultipartBody,
    Request,
    StreamedResponse,
    Transport,
    Upload,
    _transport_error,
)

from ._hostile import WebHandler, gzip_bomb, hang_after_upload, raw_reply, redirect_to, servers
from .conftest import TEST_KEY, png_bytes

_KEY = aiohttp.client_reqrep.ConnectionKey("h", 443, True, True, None, None, None, None)


# -- the mapping of failures: pure ----------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected", "ambiguous_if_billed", "retryable"),
    [
        (aiohttp.ConnectionTimeoutError(), errors.RequestTimeoutError, False, True),
        (aiohttp.SocketTimeoutError(), errors.RequestTimeoutError, True, True),
        (asyncio.TimeoutError(), errors.RequestTimeoutError, True, True),
        (
            aiohttp.ClientConnectorCertificateError(_KEY, ssl.SSLCertVerificationError()),
            errors.ConnectionFailedError,
            False,
            False,
        ),
        (
            aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(111, "refused")),
            errors.ConnectionFailedError,
            False,
            True,
        ),
        (aiohttp.ClientPayloadError("cut"), errors.ConnectionFailedError, True, True),
        (zlib.error("bad"), errors.ConnectionFailedError, True, True),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"), errors.ConnectionFailedError, True, True),
        (aiohttp.ServerDisconnectedError(), errors.ConnectionFailedError, True, True),
        (ConnectionResetError(104, "reset"), errors.ConnectionFailedError, True, True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_wire_failures_map_to_typed_errors_and_ambiguity(
    exc: BaseException,
    expected: type[errors.TransportError],
    ambiguous_if_billed: bool,
    retryable: bool,
) -> None:
    billed = _transport_error(exc, "smart-skin", billed=True)
    free = _transport_error(exc, "query-credits", billed=False)
    assert type(billed) is expected
    assert billed.ambiguous is ambiguous_if_billed
    assert free.ambiguous is False  # an unbilled call cannot have been billed
    assert billed.retryable is retryable
    assert billed.endpoint == "smart-skin"


def test_messages_name_the_failure_type_not_aiohttps_text() -> None:
    exc = aiohttp.ClientPayloadError("http://user:secret@example.com/?sig=s3cret")
    error = _transport_error(exc, "download", billed=False)
    assert "secret" not in str(error)
    assert "ClientPayloadError" in str(error)


@pytest.mark.parametrize("key", ["abc\r\nX-Evil: 1", "abc\x00", "ключ-0123456789"])
def test_key_that_cannot_be_a_header_is_refused_without_quoting_it(key: str) -> None:
    with pytest.raises(errors.ConfigurationError) as info:
        Transport(SessionManager(None, pool_size=1), api_key=key)
    assert key.strip() not in str(info.value)


# -- against a real server ------------------------------------------------------------------


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    sessions = SessionManager(None, pool_size=4)
    yield Transport(sessions, api_key=TEST_KEY)
    await sessions.aclose()


def _request(url: str, **kwargs: object) -> Request:
    settings: dict[str, object] = {
        "name": "smart-skin",
        "method": "POST",
        "url": url,
        "billed": True,
        "timeout": 5.0,
    }
    settings.update(kwargs)
    return Request(**settings)  # type: ignore[arg-type]


def _static(body: bytes, content_type: str) -> WebHandler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    return handler


async def test_send_returns_status_headers_body_and_carries_the_key(
    serve: Callable[[WebHandler], Awaitable[str]], transport: Transport
) -> None:
    seen: list[tuple[str, str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            (
                request.headers["ailabapi-api-key"],
                request.query["task_id"],
                request.headers["User-Agent"],
            )
        )
        return web.Response(status=422, body=b'{"x": 1}', headers={"Retry-After": "3"})

    url = await serve(handler)
    response = await transport.send(
        _request(url + "/q", method="GET", fields=[("task_id", "t 1")], billed=False)
    )
    assert (response.status, response.body) == (422, b'{"x": 1}')
    assert response.headers["retry-after"] == "3"  # case-insensitive, as HTTP says
    assert seen == [(TEST_KEY, "t 1", "ailab-async")]


async def test_send_uploads_fields_and_the_image_as_multipart(
    serve: Callable[[WebHandler], Awaitable[str]], transport: Transport
) -> None:
    image = png_bytes(300, 300)
    received: dict[str, object] = {}

    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["image_target"]
        assert isinstance(upload, web.FileField)
        received.update(
            query=request.query_string,
            level=form["beauty_level"],
            image=upload.file.read(),
            type=upload.content_type,
        )
        return web.json_response({})

    url = await serve(handler)
    prepared = PreparedImage(
        label="face", format="png", size=len(image), width=300, height=300, data=image
    )
    upload = Upload("image_target", prepared)
    await transport.send(_request(url, fields=[("beauty_level", "0.5")], upload=upload))
    assert received == {"query": "", "level": "0.5", "image": image, "type": "image/png"}


async def test_send_never_follows_a_redirect(transport: Transport) -> None:
    async with servers() as running:
        other = await running.web("elsewhere", _static(b"{}", "application/json"))
        url = await running.web("api", redirect_to(other + "/x"))
        response = await transport.send(_request(url, method="GET"))
        assert response.status == 302
        assert running.requests("elsewhere") == 0


@pytest.mark.parametrize("how", ["bomb", "declared"])
async def test_an_answer_over_the_cap_is_typed_and_not_retryable(
    transport: Transport, how: str
) -> None:
    async with servers() as running:
        if how == "bomb":

            async def api(request: web.Request) -> web.Response:
                return web.Response(
                    body=gzip_bomb(1024 * 1024), headers={"Content-Encoding": "gzip"}
                )

            url = await running.web("api", api)
        else:
            url = await running.raw(
                "api", raw_reply(b"HTTP/1.1 200 OK", b"{}", content_length=10**9, close=False)
            )
        with pytest.raises(errors.MalformedResponseError) as info:
            await transport.send(_request(url, max_body=64 * 1024))
    assert info.value.code == "RESPONSE_TOO_LARGE"
    assert info.value.retryable is False
    assert "billed" in str(info.value)
    assert info.value.__context__ is None


async def test_fetch_follows_redirects_without_the_key(transport: Transport) -> None:
    async with servers() as running:
        cdn_url = await running.web("cdn", _static(b"\x89PNG...", "image/png"))
        url = await running.web("results", redirect_to(cdn_url + "/final.png"))

        async def consume(response: StreamedResponse) -> tuple[int, str, bytes | None]:
            return response.status, response.content_type, await response.read(1024)

        assert await transport.fetch(url + "/r.png", consume, timeout=5.0) == (
            200,
            "image/png",
            b"\x89PNG...",
        )
        assert not running.saw_key("results")
        assert not running.saw_key("cdn")


async def test_a_body_cut_off_while_consumed_is_a_typed_unambiguous_error(
    transport: Transport,
) -> None:
    async with servers() as running:
        url = await running.raw(
            "results", raw_reply(b"HTTP/1.1 200 OK", b"short", content_length=1000, close=True)
        )

        async def consume(response: StreamedResponse) -> bytes | None:
            return await response.read(10_000)

        with pytest.raises(errors.ConnectionFailedError) as info:
            await transport.fetch(url, consume, timeout=5.0)
    assert info.value.ambiguous is False  # a download is never billed
    assert info.value.retryable is True
    assert info.value.__context__ is None


async def test_errors_of_the_consumer_pass_through(transport: Transport) -> None:
    async with servers() as running:
        url = await running.web("results", _static(b"x", "text/plain"))

        async def consume(response: StreamedResponse) -> None:
            raise errors.DownloadError("not an image")

        with pytest.raises(errors.DownloadError, match="not an image"):
            await transport.fetch(url, consume, timeout=5.0)


async def test_an_invalid_download_url_is_a_final_download_error(transport: Transport) -> None:
    async def consume(response: StreamedResponse) -> None:
        raise AssertionError("never reached")

    with pytest.raises(errors.DownloadError) as info:
        await transport.fetch("http://[::1/x.png", consume, timeout=5.0)
    assert info.value.retryable is False


async def test_a_session_closed_under_a_request_is_client_closed() -> None:
    arrived = asyncio.Event()
    sessions = SessionManager(None, pool_size=1)
    transport = Transport(sessions, api_key=TEST_KEY)
    async with servers() as running:
        url = await running.web("api", hang_after_upload(arrived))
        sending = asyncio.ensure_future(transport.send(_request(url)))
        await asyncio.wait_for(arrived.wait(), 10)
        await sessions.aclose()
        with pytest.raises(ClosedMidRequestError) as info:
            await asyncio.wait_for(sending, 10)
    assert info.value.ambiguous is True  # billed, and the upload had arrived
    assert info.value.retryable is False
    assert isinstance(info.value, errors.ClientClosedError)


# -- the multipart body: as few writes as possible, the image never copied into a buffer ------


class _Writes:
    """Stands in for aiohttp's stream writer: records each buffer written."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.buffers.append(bytes(chunk))


async def test_a_small_image_goes_out_in_one_write_with_its_framing() -> None:
    image = png_bytes(300, 300)
    body = MultipartBody(b"<head>", image, len(image), b"<tail>", "multipart/form-data")
    writes = _Writes()
    await body.write(writes)  # type: ignore[arg-type]
    assert writes.buffers == [b"<head>" + image + b"<tail>"]
    assert body.size == len(writes.buffers[0])


async def test_a_large_image_is_written_between_the_framing_not_joined() -> None:
    image = bytes(3 * 1024 * 1024)
    body = MultipartBody(b"<head>", image, len(image), b"<tail>", "multipart/form-data")
    writes = _Writes()
    await body.write(writes)  # type: ignore[arg-type]
    assert writes.buffers == [b"<head>", image, b"<tail>"]


async def test_a_large_image_file_is_read_in_chunks_of_half_a_mebibyte(tmp_path: Path) -> None:
    # Each chunk is one hop to a worker thread: half as many as aiohttp's 256 KiB would take.
    image = png_bytes(300, 300) + bytes(2 * 512 * 1024)
    path = tmp_path / "face.png"
    path.write_bytes(image)
    writes = _Writes()
    with path.open("rb") as handle:
        body = MultipartBody(b"<head>", handle, len(image), b"<tail>", "multipart/form-data")
        await body.write(writes)  # type: ignore[arg-type]
    assert [len(buffer) for buffer in writes.buffers] == [
        len(b"<head>"),
        512 * 1024,
        512 * 1024,
        len(image) - 2 * 512 * 1024,
        len(b"<tail>"),
    ]
    assert b"".join(writes.buffers) == b"<head>" + image + b"<tail>"


async def test_an_image_file_that_shrank_while_sent_fails_the_attempt(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(300, 300))
    declared = path.stat().st_size + 10  # what it was when checked
    writes = _Writes()
    with path.open("rb") as handle:
        body = MultipartBody(b"<head>", handle, declared, b"<tail>", "multipart/form-data")
        with pytest.raises(OSError, match="shorter"):
            await body.write(writes)  # type: ignore[arg-type]
    assert writes.buffers == [b"<head>" + png_bytes(300, 300)]  # the tail never follows
